"""The schedules file: [[schedule]] tables become ScheduleRows, or every problem with its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from btu_twisted.jobs.builders import FunctionBuilder, make_builders
from btu_twisted.sources.schedules_file import (
    ScheduleFileError,
    SchedulesDiff,
    diff_schedules,
    parse_schedules,
    read_schedules_file,
)
from tests.test_builders import as_stored

GOOD = textwrap.dedent(
    """\
    # Two schedules.
    [[schedule]]
    name = "every-5s"
    cron = "*/5 * * * * * *"
    function = "tests.jobfuncs.record"
    args = ["a", 2]
    kwargs = { greeting = "hi", n = 1 }
    queue = "short"
    timezone = "Europe/Berlin"
    timeout = 30
    overlap = "skip"
    description = "fast one"

    [[schedule]]
    name = "nightly"
    cron = "0 3 * * *"
    function = "app.jobs.backup"
    enabled = false
    [schedule.kwargs]
    target = "s3"
    """
)


def problems_of(text: str) -> list[str]:
    try:
        parse_schedules(textwrap.dedent(text), "s.toml")
    except ScheduleFileError as error:
        return error.problems
    raise AssertionError("the file was accepted")


class ParseTests(SynchronousTestCase):
    def test_rows(self) -> None:
        """Every key lands in the ScheduleRow the planner and the builders read."""
        rows = parse_schedules(GOOD, "s.toml")
        self.assertEqual(list(rows), ["every-5s", "nightly"])
        fast = rows["every-5s"]
        self.assertEqual(fast.source, "file")
        self.assertEqual(fast.cron_string, "*/5 * * * * * *")
        self.assertEqual(fast.function_string, "tests.jobfuncs.record")
        self.assertEqual(fast.args, ("a", 2))
        self.assertEqual(json.loads(fast.task_arguments or ""), {"greeting": "hi", "n": 1})
        self.assertEqual(fast.queue_name, "short")
        self.assertEqual(fast.cron_time_zone, "Europe/Berlin")
        self.assertEqual(fast.max_task_duration, 30)
        self.assertEqual(fast.overlap, "skip")
        self.assertTrue(fast.enabled)
        self.assertIsNone(fast.inactive_reason())
        nightly = rows["nightly"]
        self.assertFalse(nightly.enabled)
        self.assertEqual(nightly.overlap, "allow")
        self.assertEqual(nightly.args, ())
        self.assertEqual(json.loads(nightly.task_arguments or ""), {"target": "s3"})
        self.assertIsNone(nightly.cron_time_zone)  # time_zone_string applies

    def test_rows_share_equal_texts(self) -> None:
        """The rows stay in memory: schedules with the same function, cron,
        queue or arguments hold one copy of each text, not one each."""
        text = "".join(
            f'[[schedule]]\nname = "s{i}"\ncron = "0 3 * * *"\nfunction = "app.jobs.f"\n'
            f'queue = "long"\nkwargs = {{ a = 1 }}\n' for i in range(3))
        first, *others = parse_schedules(text, "s.toml").values()
        for row in others:
            self.assertIs(row.function_string, first.function_string)
            self.assertIs(row.cron_string, first.cron_string)
            self.assertIs(row.queue_name, first.queue_name)
            self.assertIs(row.task_arguments, first.task_arguments)
        self.assertEqual([row.name for row in others], ["s1", "s2"])

    def test_empty_file_has_no_schedules(self) -> None:
        """An empty file is valid: no schedules (every planned one is removed on reload)."""
        self.assertEqual(parse_schedules("", "s.toml"), {})

    def test_every_problem_with_line_and_key(self) -> None:
        """One line per problem, each naming the line, the schedule and the key."""
        problems = problems_of(
            """\
            [[schedule]]
            name = "ok"
            cron = "* * * * *"
            function = "m.f"

            [[schedule]]
            name = "bad"
            cron = "61 * * * *"
            function = "nodot"
            timeout = 0
            timezone = "Mars/Olympus"
            enabled = "yes"
            overlap = "queue"
            colour = "red"
            args = "x"
            """
        )
        self.assertEqual(
            [p.split(": ")[0] for p in problems],
            ["s.toml:8", "s.toml:9", "s.toml:10", "s.toml:11", "s.toml:12", "s.toml:13",
             "s.toml:14", "s.toml:15"],
        )
        self.assertTrue(all(": schedule 'bad': " in p for p in problems), problems)
        keys = [p.split(": ")[2] for p in problems]
        self.assertEqual(keys, ["cron", "function", "timeout", "timezone", "enabled", "overlap",
                                "colour", "args"])
        self.assertIn("out of range", problems[0])
        self.assertIn("Mars/Olympus", problems[3])

    def test_a_cron_that_will_never_fire_again_is_refused(self) -> None:
        """Only past matches (a year gone by) is refused like no match at all."""
        for cron in ("* * * * * * 1999", "0 0 29 2 * 2027"):
            problems = problems_of(f"""
                [[schedule]]
                name = "x"
                cron = "{cron}"
                function = "app.jobs.backup"
                """)
            self.assertEqual(len(problems), 1, problems)
            self.assertIn("schedule 'x': cron:", problems[0])
            self.assertIn("never matches", problems[0])

    def test_missing_keys_point_at_the_table(self) -> None:
        """A missing required key is reported at its table's header line."""
        problems = problems_of(
            """\
            # first line

            [[schedule]]
            name = "x"
            """
        )
        self.assertEqual(problems, [
            "s.toml:3: schedule 'x': cron: required key is missing",
            "s.toml:3: schedule 'x': function: required key is missing",
        ])

    def test_duplicate_names(self) -> None:
        """A name used twice is refused at its second table, naming the first."""
        problems = problems_of(
            """\
            [[schedule]]
            name = "same"
            cron = "* * * * *"
            function = "m.f"

            [[schedule]]
            name = "same"
            cron = "* * * * *"
            function = "m.g"
            """
        )
        self.assertEqual(problems, [
            "s.toml:7: schedule 'same': name: duplicate schedule name 'same' (first at line 1)"
        ])

    def test_sub_table_and_unnamed_schedule(self) -> None:
        """Keys of a [schedule.kwargs] sub-table point at it; a table without a name
        is called by its number."""
        problems = problems_of(
            """\
            [[schedule]]
            cron = "* * * * *"
            function = "m.f"
            [schedule.kwargs]
            when = 1979-05-27
            """
        )
        self.assertEqual(problems, [
            "s.toml:1: schedule #1: name: required key is missing",
            "s.toml:4: schedule #1: kwargs: the table holds a TOML date or time; "
            "pass it as a string",
        ])

    def test_unknown_top_level_key_and_bad_names(self) -> None:
        """Top-level keys other than [[schedule]] and names that would break a member."""
        problems = problems_of(
            """\
            schedules = 1
            [[schedule]]
            name = "a|b"
            cron = "* * * * *"
            function = "m.f"
            """
        )
        self.assertEqual(problems[0],
                         "s.toml:1: schedules: unknown key (did you mean 'schedule'?) "
                         "(write [[schedule]] tables)")
        self.assertIn("s.toml:3: schedule 'a|b': name: must not contain '|'", problems[1])

    def test_a_very_long_name_is_not_repeated_whole(self) -> None:
        """A 20,000-character name is refused, and the problem (a log line, the
        reply to ``btu reload``) repeats only its first 80 characters."""
        problems = problems_of(
            f"""\
            [[schedule]]
            name = "{'n' * 20000}"
            cron = "* * * * *"
            function = "m.f"
            """
        )
        self.assertEqual(problems, [
            f"s.toml:2: schedule '{'n' * 80}'...[19920 more characters]: name: longer than "
            "140 characters"
        ])

    def test_syntax_error(self) -> None:
        """A TOML syntax error is one problem, with tomllib's line and column."""
        problems = problems_of('[[schedule]]\nname = "x\n')
        self.assertEqual(len(problems), 1)
        self.assertIn("s.toml: TOML syntax error", problems[0])
        self.assertIn("line 2", problems[0])

    def test_unreadable_file(self) -> None:
        """A file that cannot be read is one problem naming it."""
        error = self.assertRaises(ScheduleFileError, read_schedules_file, "/nonexistent/s.toml")
        self.assertEqual(len(error.problems), 1)
        self.assertIn("/nonexistent/s.toml: cannot read", error.problems[0])


class DiffTests(SynchronousTestCase):
    def test_added_changed_removed(self) -> None:
        """The diff names what a reload must (re)plan, removed names included."""
        old = parse_schedules(GOOD, "s.toml")
        new_text = GOOD.replace('cron = "0 3 * * *"', 'cron = "0 4 * * *"').replace(
            'name = "every-5s"', 'name = "every-10s"')
        new = parse_schedules(new_text, "s.toml")
        diff = diff_schedules(old, new)
        self.assertEqual(diff, SchedulesDiff(added=("every-10s",), changed=("nightly",),
                                             removed=("every-5s",)))
        self.assertEqual(diff.names(), ["every-10s", "nightly", "every-5s"])
        self.assertEqual(diff.summary(), "1 added, 1 changed, 1 removed")
        self.assertEqual(diff_schedules(new, new), SchedulesDiff())


class BuildTests(SynchronousTestCase):
    def test_function_job_with_args_kwargs_timeout_queue(self) -> None:
        """A file row becomes an rq job calling the function with its args and kwargs."""
        row = parse_schedules(GOOD, "s.toml")["every-5s"]
        job = self.successResultOf(FunctionBuilder("bench:").build(row, 1_800_000_000))
        self.assertEqual(job.origin, "bench:short")
        self.assertEqual(job.fields["timeout"], 30)
        self.assertEqual(job.fields["description"],
                         "tests.jobfuncs.record for schedule every-5s: fast one")
        rebuilt = restored(job.fields)
        self.assertEqual(rebuilt.func_name, "tests.jobfuncs.record")
        self.assertEqual(rebuilt.args, ("a", 2))
        self.assertEqual(rebuilt.kwargs, {"greeting": "hi", "n": 1})

    def test_default_queue_and_timeout(self) -> None:
        """No queue: "default" (with the prefix); no timeout: the builders' default."""
        row = parse_schedules(GOOD, "s.toml")["nightly"]
        job = self.successResultOf(FunctionBuilder("").build(row, 1_800_000_000))
        self.assertEqual(job.origin, "default")
        self.assertEqual(job.fields["timeout"], 600)

    def test_file_rows_use_function_builder_whatever_job_builder_says(self) -> None:
        """With job_builder 'frappe_site', file rows still get a plain function job;
        MariaDB rows get Frappe's execute_job."""
        from dataclasses import replace
        from types import SimpleNamespace

        from btu_twisted.jobs.builders import FRAPPE_EXECUTE_JOB

        config = SimpleNamespace(
            schedules_file="s.toml", uses_mariadb=True, job_builder="frappe_site",
            rq_queue_prefix="", frappe_site_name="site.example", frappe_user=None,
            frappe_job_id_style="v15", result_ttl=None, failure_ttl=None,
        )
        builder = make_builders(config, None)
        row = parse_schedules(GOOD, "s.toml")["nightly"]
        for source, expected in (("file", "app.jobs.backup"), ("mariadb", FRAPPE_EXECUTE_JOB)):
            job = self.successResultOf(builder.build(replace(row, source=source), 1_800_000_000))
            self.assertEqual(restored(job.fields).func_name, expected)


def restored(fields: dict[str, object]) -> Any:
    """The rq Job a worker would read from these hash fields."""
    from rq.job import Job

    from btu_twisted.jobs.builders import NO_REDIS

    job = Job(id="x", connection=NO_REDIS)
    job.restore(as_stored(fields))
    return job


class ExampleTests(SynchronousTestCase):
    def test_shipped_example_loads(self) -> None:
        """etc/schedules.toml, the documented example, is a valid schedules file."""
        example = Path(__file__).resolve().parent.parent / "etc" / "schedules.toml"
        rows = read_schedules_file(str(example))
        self.assertEqual(sorted(rows), ["refresh-cache", "send-daily-report", "yearly-archive"])
        self.assertEqual(rows["refresh-cache"].args, ("products", 500))
        self.assertEqual(rows["send-daily-report"].overlap, "skip")
