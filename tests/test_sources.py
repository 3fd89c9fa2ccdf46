"""Schedule sources: file rows from memory, the rest from MariaDB, through the same calls."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from btu_twisted.planning import refresh as refresh_module
from btu_twisted.sources import combined as sources_module
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.sources.schedules_file import ScheduleFileError, SchedulesDiff
from btu_twisted.planning.planner import Planner
from btu_twisted.planning.refresh import FullRefresh
from btu_twisted.sources.combined import FileSchedules, NameConflict, NoChangeFeed, ScheduleSources
from tests.fakes import EPOCH, FakeDatabase, FakeStore, make_row, run_until


def schedule(name: str, cron: str = "* * * * *", **extra: object) -> str:
    lines = [f'name = "{name}"', f'cron = "{cron}"', 'function = "tests.jobfuncs.record"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "[[schedule]]\n" + "\n".join(lines) + "\n\n"


class SourcesCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.path = Path(self.mktemp())
        self.path.write_text(schedule("F-1") + schedule("F-2") + schedule("F-3", enabled=False))
        self.file = FileSchedules(str(self.path))

    def make(self, db: FakeDatabase | None) -> ScheduleSources:
        sources = ScheduleSources(self.clock, db, self.file)  # type: ignore[arg-type]
        sources.load_file()
        return sources

    def result(self, coroutine: object) -> object:
        return self.successResultOf(ensureDeferred(coroutine))  # type: ignore[arg-type]


class ReadTests(SourcesCase):
    def test_file_names_from_memory_rest_from_mariadb(self) -> None:
        """File names never reach MariaDB; the others are read there."""
        db = FakeDatabase(self.clock, [make_row("TS-1")])
        sources = self.make(db)
        rows = self.result(sources.read_schedules(["F-1", "TS-1", "nope"]))
        self.assertEqual(sorted(rows), ["F-1", "TS-1"])  # type: ignore[call-overload]
        self.assertEqual(rows["F-1"].source, "file")  # type: ignore[index]
        self.assertEqual([c.detail for c in db.calls_of("read_schedules")], [["TS-1", "nope"]])

    def test_file_only_needs_no_database(self) -> None:
        """Without MariaDB: rows, states, job ids and the change feed need nothing else."""
        sources = self.make(None)
        self.assertEqual(sorted(self.result(sources.read_schedules(["F-1", "x"]))), ["F-1"])
        states = self.result(sources.schedule_states("", 2))
        self.assertEqual([s[0] for s in states], ["F-1", "F-2"])  # type: ignore[attr-defined]
        self.assertEqual(self.result(sources.schedule_states("F-2", 2)), [("F-3", False, states[0][2])])  # type: ignore[index]
        self.assertEqual(self.result(sources.schedule_states("F-3", 2)), [])
        self.assertFalse(sources.keeps_job_ids("F-1"))
        self.result(sources.write_job_ids({"F-1": "job"}))
        self.assertTrue(sources.health.up)
        self.assertEqual(sources.dependencies, ())
        feed = sources.change_feed(self.clock, ScheduleFifo(), lambda: None)
        self.assertIsInstance(feed, NoChangeFeed)

    def test_states_page_through_file_then_mariadb(self) -> None:
        """Chunks of 2: the file's names, then MariaDB's, each name once."""
        db = FakeDatabase(self.clock, [make_row(f"TS-{i}") for i in range(5)])
        sources = self.make(db)
        seen: list[str] = []
        after = ""
        while True:
            chunk = self.result(sources.schedule_states(after, 2))
            seen += [s[0] for s in chunk]  # type: ignore[attr-defined]
            if len(chunk) < 2:  # type: ignore[arg-type]
                break
            after = chunk[-1][0]  # type: ignore[index]
        self.assertEqual(seen, ["F-1", "F-2", "F-3", "TS-0", "TS-1", "TS-2", "TS-3", "TS-4"])

    def test_full_refresh_queues_file_and_mariadb_schedules(self) -> None:
        """The refresh's chunked read covers both sources; disabled file rows are not queued."""
        self.patch(sources_module, "STATES_CHUNK", 2)
        self.patch(refresh_module, "STATES_CHUNK", 2)
        db = FakeDatabase(self.clock, [make_row("TS-A"), make_row("TS-B"), make_row("TS-C")])
        fifo = ScheduleFifo()
        refresh = FullRefresh(self.clock, 3600, fifo, self.make(db),
                              FakeStore(self.clock))  # type: ignore[arg-type]
        self.result(refresh.refresh())
        self.assertEqual(sorted(fifo.take(100)), ["F-1", "F-2", "TS-A", "TS-B", "TS-C"])
        # Chunks of 2: F-1 F-2 | F-3 TS-A | TS-B TS-C | (none): MariaDB read in three pages.
        self.assertEqual([c.detail for c in db.calls_of("schedule_states")], ["", "TS-A", "TS-C"])

    def test_job_ids_go_to_mariadb_rows_only(self) -> None:
        """redis_job_id is a MariaDB column: file schedules' ids are not written."""
        db = FakeDatabase(self.clock, [make_row("TS-1")])
        sources = self.make(db)
        self.result(sources.write_job_ids({"F-1": "a", "TS-1": "b"}))
        self.assertEqual([c.detail for c in db.calls_of("write_job_ids")], [{"TS-1": "b"}])


class ReloadTests(SourcesCase):
    def test_reload_reports_added_changed_removed(self) -> None:
        """A new file replaces the schedules; the diff names each change."""
        sources = self.make(None)
        self.path.write_text(schedule("F-1", "*/5 * * * *") + schedule("F-2") + schedule("F-4"))
        diff = self.result(sources.reload())
        self.assertEqual(diff, SchedulesDiff(added=("F-4",), changed=("F-1",), removed=("F-3",)))
        self.assertEqual(sorted(self.file.rows), ["F-1", "F-2", "F-4"])

    def test_broken_file_keeps_the_last_good_schedules(self) -> None:
        """A reload of a file with an error changes nothing and reports every problem."""
        sources = self.make(None)
        before = dict(self.file.rows)
        self.path.write_text(schedule("F-1", "99 * * * *") + schedule("F-9", timeout=-1))
        failure = self.failureResultOf(ensureDeferred(sources.reload()), ScheduleFileError)
        self.assertEqual(len(failure.value.problems), 2)
        self.assertIn(":3: schedule 'F-1': cron:", failure.value.problems[0])
        self.assertIn(":10: schedule 'F-9': timeout:", failure.value.problems[1])
        self.assertEqual(self.file.rows, before)

    def test_name_in_both_sources_is_refused(self) -> None:
        """A reload that would give a MariaDB schedule's name to a file one is refused."""
        db = FakeDatabase(self.clock, [make_row("TS-1")])
        sources = self.make(db)
        self.result(sources.check_names())
        before = dict(self.file.rows)
        self.path.write_text(schedule("F-1") + schedule("TS-1"))
        failure = self.failureResultOf(ensureDeferred(sources.reload()), NameConflict)
        self.assertIn("TS-1", str(failure.value))
        self.assertEqual(self.file.rows, before)
        self.path.write_text(schedule("TS-1"))
        self.file.replace(self.file.read())
        self.failureResultOf(ensureDeferred(sources.check_names()), NameConflict)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


class DstTests(TestCase):
    """A file schedule's own zone decides its UTC second, DST rules included."""

    def plan(self, text: str, now: str, names: list[str]) -> dict[str, int]:
        clock = Clock()
        clock.advance(utc(now))
        path = Path(self.mktemp())
        path.write_text(textwrap.dedent(text))
        sources = ScheduleSources(clock, None, FileSchedules(str(path)))
        sources.load_file()
        planner = Planner(clock, ScheduleFifo(), sources, FakeStore(clock),  # type: ignore[arg-type]
                          default_zone="UTC")
        d: Deferred[dict[str, int]] = ensureDeferred(planner.plan(names))
        run_until(clock, clock.seconds())
        return self.successResultOf(d)

    def test_spring_forward_gap_fires_after_the_gap(self) -> None:
        """02:30 does not exist in Berlin on 2027-03-28: the run is at 03:00 CEST
        (01:00 UTC); the same cron with no zone runs at 02:30 UTC (time_zone_string)."""
        planned = self.plan(
            schedule("berlin", "30 2 * * *", timezone="Europe/Berlin") + schedule("utc", "30 2 * * *"),
            "2027-03-27T12:00:00", ["berlin", "utc"],
        )
        self.assertEqual(planned, {"berlin": utc("2027-03-28T01:00:00"),
                                   "utc": utc("2027-03-28T02:30:00")})

    def test_fall_back_and_seconds(self) -> None:
        """New York 09:00:15 is 13:00:15 UTC before 2027-11-07 and 14:00:15 UTC after."""
        text = schedule("ny", "15 0 9 * * * *", timezone="America/New_York")
        self.assertEqual(self.plan(text, "2027-11-05T14:00:00", ["ny"]),
                         {"ny": utc("2027-11-06T13:00:15")})
        self.assertEqual(self.plan(text, "2027-11-06T14:00:00", ["ny"]),
                         {"ny": utc("2027-11-07T14:00:15")})


class ShadowTests(SourcesCase):
    def test_name_saved_in_mariadb_later_runs_from_the_file(self) -> None:
        """A MariaDB schedule given a file schedule's name after start-up: the paging
        still ends, the file's state stands for it, and one warning names it."""
        from twisted.logger import capturedLogs

        db = FakeDatabase(self.clock, [make_row("F-2", enabled=False), make_row("TS-1")])
        sources = self.make(db)
        seen: list[tuple[str, bool, int]] = []
        after = ""
        with capturedLogs() as events:
            for _ in range(10):
                chunk = self.result(sources.schedule_states(after, 1))
                seen += chunk  # type: ignore[arg-type]
                if len(chunk) < 1:  # type: ignore[arg-type]
                    break
                after = chunk[-1][0]  # type: ignore[index]
        self.assertEqual([s[0] for s in seen], ["F-1", "F-2", "F-3", "F-2", "TS-1"])
        self.assertEqual(seen[1], seen[3])
        self.assertTrue(seen[3][1])  # the file's F-2 is enabled; MariaDB's is not
        warnings = [e for e in events if "schedules file" in e.get("log_format", "")]
        self.assertEqual([e["schedule"] for e in warnings], ["F-2"])
