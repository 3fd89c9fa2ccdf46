"""Tests for the ``btu`` command, run in-process against the real MariaDB and Redis.

``main(argv, stdout, stderr)`` returns the exit code, so each test reads the
code and both streams directly.  Commands that wait on something the test
serves from the reactor (a stand-in daemon socket, a stand-in Frappe site) run
in a thread so the reactor stays free to answer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from btu_twisted import cli
from btu_twisted.cli import daemon as cli_daemon
from btu_twisted.cli import main
from btu_twisted.cli.pickles import read_job_call
from btu_twisted.daemon.protocol import ControlFactory
from btu_twisted.store.keys import Keys
from btu_twisted.store.schedule_store import LAST_ENQUEUED, SCHEDULE_SET
from tests.integration.support import (
    REDIS_HOST,
    REDIS_PORT,
    TestDatabase,
    config_values,
    open_redis_db_lock,
    sync_redis,
    toml_text,
    try_lock,
)
from tests.jobfuncs import read_redis_records, worker_argv
from tests.test_builders import TLSFiles

REDIS_DB = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "token key123:secret456"
SECRET_PARTS = ("secret456", "hunter2")
PICKLE = pickle.dumps(("btu.btu_api.execute_job", None, (), {"site": "site1.local"}), protocol=5)


def _pickled_text(value: str) -> bytes:
    """A BINUNICODE pickle opcode, for pickles written by hand."""
    raw = value.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


# What BTU's get_pickled_task returns, as the Rust daemon stored it (raw, not compressed):
# ("btu.btu_api.execute_job", None, (), {"method": TaskRunner(), "job_name": "Ping Now"}),
# naming a class that only a Frappe bench can import.
BTU_PICKLE = (b"\x80\x04(" + _pickled_text("btu.btu_api.execute_job") + b"N)"
              + b"}(" + _pickled_text("method")
              + b"cbtu.btu_core.task_runner\nTaskRunner\n)R"
              + _pickled_text("job_name") + _pickled_text("Ping Now") + b"u"
              + b"t.")


class _Base(TestCase):
    """A private temp directory, a Redis database flushed around each test, and a config writer."""

    def setUp(self) -> None:
        # Other runs on this machine use Redis database 5 too: take turns (released last).
        lock = open_redis_db_lock(REDIS_DB)
        self.addCleanup(lock.close)
        deadline = time.monotonic() + 120
        while not try_lock(lock):
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis db {REDIS_DB} stayed locked by another test run")
            time.sleep(0.1)
        self.tmp = tempfile.mkdtemp(dir="/tmp", prefix="btucli")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.redis = sync_redis(REDIS_DB)
        self.redis.flushdb()
        self.addCleanup(self.redis.close)
        self.addCleanup(self.redis.flushdb)
        self.database = "btu_cli_no_database"

    def write_config(self, **overrides: Any) -> str:
        """A 0600 TOML file for the test database and Redis database 5."""
        values = config_values(self.database, redis_db=REDIS_DB,
                               socket_path=os.path.join(self.tmp, "d.sock"),
                               mysql_password="", webserver_token=TOKEN)
        values.update(overrides)
        path = os.path.join(self.tmp, f"btu-{len(os.listdir(self.tmp))}.toml")
        with open(path, "w") as stream:
            stream.write(toml_text(values))
        os.chmod(path, 0o600)
        return path

    def btu(self, *argv: str, config: str | None = None) -> tuple[int, str, str]:
        """Run ``btu`` with the test config (written on first use); returns code, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        if config is None:
            config = getattr(self, "config", None) or self.write_config()
            self.config = config
        code = main(["--config", config, *argv], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def assertOneErrorLine(self, err: str, *fragments: str) -> None:
        """stderr is exactly one 'btu: ' line, holds each fragment, no traceback, no secret."""
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("btu: "), err)
        self.assertNotIn("Traceback", err)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        for secret in SECRET_PARTS:
            self.assertNotIn(secret, err)


class _WithDatabase(_Base):
    """Adds a fresh Frappe database with the sample rows."""

    def setUp(self) -> None:
        super().setUp()
        self.db = TestDatabase()
        self.addCleanup(self.db.drop)
        self.database = self.db.name


async def _drain(wrapper: WrappingFactory, port: IListeningPort) -> None:
    """Stop listening, then wait (up to 5 s) until the server side of every connection closed."""
    await port.stopListening()
    for _ in range(100):
        if not wrapper.protocols:
            return
        await deferLater(reactor, 0.05, lambda: None)
    for protocol in list(wrapper.protocols):
        protocol.transport.abortConnection()


class UsageTests(_Base):
    """Command-line handling and config problems: no service is needed."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(cli, "DEFAULT_CONFIG_PATH", os.path.join(self.tmp, "missing.toml"))

    def run_plain(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()

    def test_no_command_is_a_usage_error(self) -> None:
        """Without a subcommand btu exits 2 with one line naming what is missing."""
        code, out, err = self.run_plain()
        self.assertEqual((code, out), (2, ""))
        self.assertOneErrorLine(err, "COMMAND")

    def test_unknown_command_is_a_usage_error(self) -> None:
        """An unknown subcommand exits 2."""
        code, _, err = self.run_plain("frobnicate")
        self.assertEqual(code, 2)
        self.assertOneErrorLine(err, "invalid choice", "frobnicate")

    def test_a_very_long_argument_is_not_repeated_whole(self) -> None:
        """Whatever quotes what was typed (argparse, the cron parser, the zone and
        --site checks) repeats its first 80 characters and says how many were cut."""
        long = "N" * 20000
        for argv in ([long], ["next-runs", long], ["next-runs", "* * * * *", "--tz", long],
                     ["next-runs", "* * * * *", "-n", long],
                     ["next-runs", "* * * * *", "--after", long],
                     ["--config", self.write_config(), "--site", long, "status"]):
            code, out, err = self.run_plain(*argv)
            self.assertIn(code, (1, 2), argv[:3])
            self.assertEqual(out, "")
            self.assertOneErrorLine(err, "N" * 80 + "'...[19920 more characters]")
            self.assertLess(len(err), 500, argv[:3])

    def test_long_quoted_texts_only_are_shortened(self) -> None:
        """Only a quoted text over 80 characters is cut: the text between two short
        quoted names (a long URL) is not taken for one."""
        from btu_twisted.cli.common import one_error_line

        url = "https://127.0.0.1:8000/api/method/btu.btu_api.endpoints.get_pickled_task"
        line = f"task 'BTU-00001' at {url}: TLS certificate is not valid for 'other.local'."
        self.assertEqual(one_error_line(line), line)
        self.assertEqual(one_error_line(f'zone "{"Z" * 81}".'),
                         f"zone '{'Z' * 80}'...[1 more characters].")

    def test_missing_argument_names_the_subcommand(self) -> None:
        """show-job without an id exits 2 and says which subcommand wanted what."""
        code, _, err = self.run_plain("show-job")
        self.assertEqual(code, 2)
        self.assertOneErrorLine(err, "show-job", "JOB_ID")

    def test_version_and_help_go_to_stdout(self) -> None:
        """--version and --help print on stdout and exit 0."""
        code, out, err = self.run_plain("--version")
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"^btu \d+\.\d+")
        code, out, err = self.run_plain("--help")
        self.assertEqual((code, err), (0, ""))
        for command in ("list-jobs", "queue-task-now", "next-runs", "status"):
            self.assertIn(command, out)

    def test_help_lists_the_frappe_commands_apart(self) -> None:
        """--help lists the commands every user has, then the Frappe-only ones under
        their own title; no command is listed twice, none is left out."""
        code, out, _ = self.run_plain("--help")
        self.assertEqual(code, 0)
        every = out.index("commands for every user")
        frappe = out.index("Frappe-only commands")
        self.assertLess(every, frappe)
        listed = re.findall(r"^  ([a-z][a-z-]+)  ", out, re.MULTILINE)
        parser = cli.build_parser(io.StringIO(), io.StringIO())
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        self.assertEqual(sorted(listed), sorted(commands.choices))
        for name in ("list-tasks", "queue-task-now", "test-ping", "test-pickler"):
            self.assertGreater(out.index(f"\n  {name} "), frappe, name)
        for name in ("ping", "status", "history", "next-runs", "show-job"):
            self.assertLess(every, out.index(f"\n  {name} "), name)
            self.assertLess(out.index(f"\n  {name} "), frappe, name)
        self.assertNotIn("positional arguments", out)

    def test_missing_default_config(self) -> None:
        """A command that needs the config exits 2 when the default file is missing."""
        code, out, err = self.run_plain("list-jobs")
        self.assertEqual((code, out), (2, ""))
        self.assertOneErrorLine(err, "missing.toml", "cannot read")

    def test_invalid_config_lists_every_problem_without_secrets(self) -> None:
        """Each config problem is its own 'btu: ' line; secret values are never echoed."""
        path = self.write_config(rq_port="six", mysql_password=12345,
                                 time_zone_string="Nowhere/Land")
        code, out, err = self.btu("print-config", config=path)
        self.assertEqual((code, out), (2, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 3, err)
        self.assertTrue(all(line.startswith("btu: ") for line in lines))
        self.assertIn("rq_port", err)
        self.assertIn("Nowhere/Land", err)
        self.assertNotIn("12345", err)

    def test_next_runs_table_without_any_config(self) -> None:
        """next-runs works with no config file at all, in UTC by default."""
        code, out, err = self.run_plain("next-runs", "0 13 * * *",
                                        "--after", "2025-01-01T00:00:00Z", "-n", "2")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("RUN (UTC)"), 1, out)  # one column: the zone is UTC
        self.assertEqual(out.count("2025-01-01 13:00:00 UTC"), 1, out)
        self.assertIn("2025-01-02 13:00:00 UTC", out)

    def test_next_runs_json_across_spring_forward(self) -> None:
        """--json gives ISO 8601 strings with offsets; a skipped 02:00 fires at 03:00 once."""
        code, out, err = self.run_plain("--json", "next-runs", "0 2 * * *", "--tz", "Europe/Berlin",
                                        "--after", "2025-03-29T12:00", "-n", "3")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out), [
            "2025-03-30T03:00:00+02:00",
            "2025-03-31T02:00:00+02:00",
            "2025-04-01T02:00:00+02:00",
        ])

    def test_next_runs_uses_the_config_zone(self) -> None:
        """Without --tz the zone is the config's time_zone_string; --json may follow the command."""
        path = self.write_config(time_zone_string="Asia/Tokyo")
        code, out, _ = self.btu("next-runs", "0 8 * * *", "--after", "2025-06-01T00:00:00+00:00",
                                "-n", "1", "--json", config=path)
        self.assertEqual(code, 0)
        runs = json.loads(out)
        self.assertEqual(runs, ["2025-06-02T08:00:00+09:00"])
        self.assertEqual(datetime.fromisoformat(runs[0]).utcoffset().total_seconds(), 9 * 3600)

    def test_next_runs_with_explicit_missing_config_fails(self) -> None:
        """An explicit --config must be readable, even for next-runs."""
        missing = os.path.join(self.tmp, "nope.toml")
        code, _, err = self.btu("next-runs", "* * * * *", config=missing)
        self.assertEqual(code, 2)
        self.assertOneErrorLine(err, "nope.toml")

    def test_next_runs_bad_cron_and_zone(self) -> None:
        """A bad cron string or zone exits 1 with the cron module's reason."""
        code, out, err = self.run_plain("next-runs", "0 25 * * *")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "hour")
        code, _, err = self.run_plain("next-runs", "* * * * *", "--tz", "Mars/Olympus")
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "Mars/Olympus")

    def test_next_runs_bad_options_are_usage_errors(self) -> None:
        """-n out of range and an unparsable --after exit 2."""
        for argv in (("-n", "0"), ("-n", "x"), ("--after", "yesterday")):
            code, _, err = self.run_plain("next-runs", "* * * * *", *argv)
            self.assertEqual(code, 2, argv)
            self.assertOneErrorLine(err, "next-runs")

    def test_global_options_before_or_after_every_subcommand(self) -> None:
        """--config and --json parse the same before and after each subcommand (issue 12.2)."""
        parser = cli.build_parser(io.StringIO(), io.StringIO())
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        self.assertGreater(len(commands.choices), 10)
        for name, sub in commands.choices.items():
            positional = ["* * * * *" if name == "next-runs" else "X1"
                          for action in sub._actions
                          if not action.option_strings and action.nargs is None]
            options = ["--config", "/c.toml", "--json"]
            for argv in ([*options, name, *positional], [name, *positional, *options],
                         ["--json", name, *positional, "--config", "/c.toml"],
                         ["--config", "/c.toml", name, "--json", *positional]):
                args = parser.parse_args(argv)
                self.assertEqual((args.command, args.config, args.json),
                                 (name, "/c.toml", True), argv)
            args = parser.parse_args([name, *positional])
            self.assertEqual((args.config, args.json), (None, False), name)

    def test_print_config_with_options_after_the_command(self) -> None:
        """'btu print-config --config FILE --json' runs (it exited 2 before)."""
        path = self.write_config(name="after-the-command")
        code, out, err = self.run_plain("print-config", "--config", path, "--json")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["name"], "after-the-command")
        code, out, err = self.run_plain("print-config", "--config", path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"# {path}", out)

    def test_read_job_call_never_imports(self) -> None:
        """A pickle naming unknown or dangerous code is described, never imported or run."""
        marker = os.path.join(self.tmp, "ran")
        text = _pickled_text
        # rq's data tuple: ("f", None, (not_a_module_x.run(),), {"cmd": os.system("touch MARKER")})
        data = (b"\x80\x02(" + text("f") + b"N"
                + b"cnot_a_module_x\nrun\n)R\x85"
                + b"}" + text("cmd") + b"cos\nsystem\n" + text(f"touch {marker}") + b"\x85R" + b"s"
                + b"t.")
        call = read_job_call(data)
        self.assertNotIn("data_error", call)
        self.assertEqual(call["func_name"], "f")
        self.assertEqual(call["args"], ["<not_a_module_x.run()>"])
        self.assertEqual(call["kwargs"], {"cmd": f"<os.system('touch {marker}')>"})
        self.assertFalse(os.path.exists(marker))
        self.assertIsNone(read_job_call(b"not a pickle")["func_name"])


class ConfigAndTaskTests(_WithDatabase):
    """print-config, list-tasks, queue-task-now and show-scheduled against MariaDB and Redis."""

    def test_print_config_table_masks_secrets(self) -> None:
        """The table shows settings but never the token or the database password."""
        path = self.write_config(mysql_password="hunter2")
        code, out, err = self.btu("print-config", config=path)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(self.db.name, out)
        self.assertIn("********", out)
        for secret in SECRET_PARTS:
            self.assertNotIn(secret, out)

    def test_print_config_json(self) -> None:
        """--json is one JSON object with secrets masked and unset secrets null."""
        code, out, _ = self.btu("--json", "print-config")
        self.assertEqual(code, 0)
        settings = json.loads(out)
        self.assertEqual(settings["webserver_token"], "********")
        self.assertIsNone(settings["rq_password"])
        self.assertEqual(settings["rq_database"], REDIS_DB)
        self.assertEqual(settings["socket_mode"], "0660")

    def test_list_tasks_table_and_json(self) -> None:
        """Only submitted, non-transient tasks are listed (the draft BTU-00003 is not)."""
        code, out, _ = self.btu("list-tasks")
        self.assertEqual(code, 0)
        self.assertIn("BTU-00001  Ping Now", out)
        self.assertNotIn("BTU-00003", out)
        code, out, _ = self.btu("--json", "list-tasks")
        self.assertEqual(json.loads(out), [
            {"name": "BTU-00001", "desc_short": "Ping Now"},
            {"name": "BTU-00002", "desc_short": "Ping With Wait"},
        ])

    def test_list_tasks_empty(self) -> None:
        """With no task, people get a sentence and scripts an empty array."""
        self.db.execute("DELETE FROM `tabBTU Task`")
        self.assertEqual(self.btu("list-tasks")[:2], (0, "No submitted BTU Tasks.\n"))
        self.assertEqual(json.loads(self.btu("--json", "list-tasks")[1]), [])

    def test_list_tasks_without_mariadb(self) -> None:
        """An unreachable MariaDB exits 3 and names it."""
        path = self.write_config(mysql_port=1)
        code, out, err = self.btu("list-tasks", config=path)
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "MariaDB at 127.0.0.1:1")

    def test_queue_task_now_function_builder(self) -> None:
        """The job lands on the task's queue with the task's function and merged kwargs."""
        code, out, err = self.btu("queue-task-now", "BTU-00001")
        self.assertEqual((code, err), (0, ""))
        ids = [i.decode() for i in self.redis.lrange("rq:queue:default", 0, -1)]
        self.assertEqual(len(ids), 1)
        self.assertIn(ids[0], out)
        self.assertIn(b"rq:queue:default", self.redis.smembers("rq:queues"))
        job = Job.fetch(ids[0], connection=self.redis)
        self.assertEqual(job.func_name, "btu.manual_tests.ping_now")
        self.assertEqual(job.get_status(), JobStatus.QUEUED)
        self.assertEqual(job.origin, "default")
        self.assertEqual(job.timeout, 600)
        self.assertIsNotNone(job.enqueued_at)
        self.assertEqual(job.meta["task"], "BTU-00001")

    def test_queue_task_now_json_and_task_queue(self) -> None:
        """--json reports the job; BTU-00002 goes to its own queue 'long' with its arguments."""
        code, out, _ = self.btu("--json", "queue-task-now", "BTU-00002")
        self.assertEqual(code, 0)
        report = json.loads(out)
        self.assertEqual((report["task"], report["queue"], report["job_builder"]),
                         ("BTU-00002", "long", "function"))
        job = Job.fetch(report["job_id"], connection=self.redis)
        self.assertEqual(job.kwargs, {"seconds_to_wait": 5})
        self.assertEqual(self.redis.lrange("rq:queue:long", 0, -1), [report["job_id"].encode()])

    def test_queue_task_now_frappe_site_builder(self) -> None:
        """With job_builder frappe_site the job calls Frappe's execute_job for the site."""
        path = self.write_config(job_builder="frappe_site", frappe_site_name="site1.local",
                                 rq_queue_prefix="bench-1:")
        code, out, _ = self.btu("--json", "queue-task-now", "BTU-00001", config=path)
        self.assertEqual(code, 0)
        report = json.loads(out)
        self.assertEqual(report["queue"], "bench-1:default")
        # Frappe v15's id, site::uuid4, which this rq's Job.fetch refuses: read the hash.
        self.assertRegex(report["job_id"], r"\Asite1\.local::[0-9a-f-]{36}\Z")
        job = Job(connection=self.redis)
        job.restore(self.redis.hgetall(f"rq:job:{report['job_id']}"))
        self.assertEqual(job.func_name, "frappe.utils.background_jobs.execute_job")
        self.assertEqual(job.kwargs["site"], "site1.local")
        self.assertEqual(job.kwargs["method"], "btu.manual_tests.ping_now")

    def test_queue_task_now_unknown_task(self) -> None:
        """An unknown task exits 1 and queues nothing; names match exactly, not by collation."""
        for name in ("BTU-99999", "btu-00001"):
            code, out, err = self.btu("queue-task-now", name)
            self.assertEqual((code, out), (1, ""))
            self.assertOneErrorLine(err, name)
        self.assertEqual(self.redis.keys("rq:*"), [])

    def test_queue_task_now_bad_arguments(self) -> None:
        """A task whose arguments are not a dict literal exits 1 with the builder's reason."""
        self.db.execute("UPDATE `tabBTU Task` SET arguments = '[1, 2' WHERE name = 'BTU-00001'")
        code, _, err = self.btu("queue-task-now", "BTU-00001")
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "BTU-00001", "arguments")

    def test_queue_task_now_frappe_builder_site_down(self) -> None:
        """The frappe builder with an unreachable site exits 3 and queues nothing."""
        path = self.write_config(job_builder="frappe", webserver_ip="127.0.0.1", webserver_port=1)
        code, _, err = self.btu("queue-task-now", "BTU-00001", config=path)
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "BTU-00001")
        self.assertEqual(self.redis.keys("rq:*"), [])

    def test_queue_task_now_without_redis(self) -> None:
        """Redis down: exit 3 naming Redis."""
        path = self.write_config(rq_port=1)
        code, _, err = self.btu("queue-task-now", "BTU-00001", config=path)
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "Redis at 127.0.0.1:1")

    def test_show_scheduled_in_site_zone(self) -> None:
        """Members are listed by time in the site's cron_time_zone and in UTC."""
        self.redis.zadd(SCHEDULE_SET, {"TS-000002|1900000000": 1900000000,
                                       "TS-000001|1800000000": 1800000000})
        code, out, err = self.btu("show-scheduled")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertIn("America/Los_Angeles", lines[0])
        self.assertTrue(lines[1].startswith("TS-000001"))
        self.assertIn("2027-01-15 00:00:00 PST", lines[1])
        self.assertIn("2027-01-15 08:00:00 UTC", lines[1])
        self.assertTrue(lines[2].startswith("TS-000002"))

    def test_show_scheduled_in_utc_has_one_time_column(self) -> None:
        self.db.set_zone("UTC")
        self.redis.zadd(SCHEDULE_SET, {"TS-000001|1800000000": 1800000000})
        code, out, err = self.btu("show-scheduled")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines()[0].split(), ["SCHEDULE", "NEXT", "RUN", "(UTC)", "WHEN"])
        self.assertEqual(out.count("2027-01-15 08:00:00 UTC"), 1, out)

    def test_next_runs_in_the_site_zone(self) -> None:
        """Bench mode and plain MariaDB alike: next-runs reads cron strings in the
        site's cron_time_zone, as the daemon plans them, not in time_zone_string."""
        self.db.set_zone("Asia/Kolkata")
        code, out, err = self.btu("--json", "next-runs", "0 3 * * *",
                                  "--after", "2025-06-01T00:00:00+00:00", "-n", "1")
        self.assertEqual((code, err), (0, ""))
        # 00:00Z is 05:30 in Kolkata: the next 03:00 there is the next day (in the
        # config's UTC it would have been 03:00Z the same day).
        self.assertEqual(json.loads(out), ["2025-06-02T03:00:00+05:30"])

    def test_config_from_btu_config(self) -> None:
        """Without --config, $BTU_CONFIG names the file."""
        path = self.write_config(time_zone_string="Asia/Tokyo")
        out, err = io.StringIO(), io.StringIO()
        self.patch(os, "environ", {**os.environ, "BTU_CONFIG": path})
        code = main(["print-config"], stdout=out, stderr=err)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("Asia/Tokyo", out.getvalue())

    def test_show_scheduled_json(self) -> None:
        """--json gives the zone and each member with ISO times; unreadable members are kept."""
        self.db.set_zone("Asia/Kolkata")
        self.redis.zadd(SCHEDULE_SET, {"TS|1": 1, "a|b|1800000000": 1800000000, "junk": 5})
        code, out, _ = self.btu("--json", "show-scheduled")
        self.assertEqual(code, 0)
        shown = json.loads(out)
        self.assertEqual(shown["zone"], "Asia/Kolkata")
        self.assertEqual([p["schedule"] for p in shown["planned"]], ["TS", None, "a|b"])
        self.assertEqual(shown["planned"][2]["local"], "2027-01-15T13:30:00+05:30")
        self.assertEqual(shown["planned"][2]["utc"], "2027-01-15T08:00:00+00:00")

    def test_show_scheduled_lists_paused_schedules(self) -> None:
        """Paused schedules (no member) are listed after the runs, as paused, with since
        when; --json gives them under "paused"."""
        self.db.set_zone("UTC")
        self.redis.zadd(SCHEDULE_SET, {"TS-000001|1800000000": 1800000000})
        self.redis.hset(Keys().paused, mapping={"TS-000009": "1799996400"})
        code, out, err = self.btu("show-scheduled")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertTrue(lines[1].startswith("TS-000001"))
        self.assertEqual(lines[2].split()[:2], ["TS-000009", "paused"])
        self.assertIn("since 2027-01-15 07:00:00 UTC", lines[2])
        shown = json.loads(self.btu("--json", "show-scheduled")[1])
        self.assertEqual(shown["paused"],
                         [{"schedule": "TS-000009", "since": "2027-01-15T07:00:00+00:00"}])

    def test_history_shows_pause_and_resume(self) -> None:
        """A pause and a resume are history entries, newest first, with their time and
        no scheduled run."""
        from btu_twisted.store.history import PAUSED, RESUMED, encode_run

        key = Keys().history("TS-000001")
        self.redis.rpush(key, encode_run(1800000600, "2027-01-15T08:10:00.000000Z", None, RESUMED),
                         encode_run(1800000000, "2027-01-15T08:00:00.000000Z", None, PAUSED))
        code, out, err = self.btu("history", "TS-000001")
        self.assertEqual((code, err), (0, ""))
        rows = [line.split() for line in out.splitlines()[1:]]
        self.assertEqual([row[:3] for row in rows],
                         [["-", "resumed", "2027-01-15T08:10:00.000000Z"],
                          ["-", "paused", "2027-01-15T08:00:00.000000Z"]])
        shown = json.loads(self.btu("--json", "history", "TS-000001")[1])
        self.assertEqual([(r["outcome"], r["scheduled"], r["job_id"]) for r in shown],
                         [(RESUMED, 1800000600, None), (PAUSED, 1800000000, None)])

    def test_show_scheduled_empty(self) -> None:
        """An empty set reads as a sentence for people and an empty list for scripts."""
        self.assertEqual(self.btu("show-scheduled")[:2], (0, "No runs are planned.\n"))
        self.assertEqual(json.loads(self.btu("--json", "show-scheduled")[1])["planned"], [])

    def test_show_scheduled_without_mariadb_falls_back(self) -> None:
        """MariaDB down: a warning, then times in time_zone_string."""
        self.redis.zadd(SCHEDULE_SET, {"TS-000001|1800000000": 1800000000})
        path = self.write_config(mysql_port=1, time_zone_string="Europe/Paris")
        code, out, err = self.btu("--json", "show-scheduled", config=path)
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["zone"], "Europe/Paris")
        self.assertOneErrorLine(err, "warning", "Europe/Paris")

    def test_show_scheduled_without_redis(self) -> None:
        """Redis down: exit 3."""
        code, out, err = self.btu("show-scheduled", config=self.write_config(rq_port=1))
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "Redis")


class JobTests(_Base):
    """list-jobs, show-job and queue-job-now against Redis database 5 (no MariaDB needed)."""

    def enqueue(self, queue: str = "default", **kwargs: Any) -> Job:
        return Queue(queue, connection=self.redis).enqueue(
            "tests.jobfuncs.record", description=f"test job on {queue}", **kwargs)

    def test_list_jobs_table_and_json(self) -> None:
        """Every queued job is listed with its queue, status and description."""
        first, second = self.enqueue("default"), self.enqueue("long")
        code, out, _ = self.btu("list-jobs")
        self.assertEqual(code, 0)
        self.assertIn(first.id, out)
        self.assertIn("test job on long", out)
        code, out, _ = self.btu("--json", "list-jobs")
        listed = json.loads(out)
        self.assertEqual([(j["queue"], j["id"], j["status"]) for j in listed],
                         [("default", first.id, "queued"), ("long", second.id, "queued")])

    def test_list_jobs_tolerates_frappe_ids_and_lost_hashes(self) -> None:
        """A Frappe 'site::uuid' id (which rq 2 refuses) and an id without hash are still listed."""
        job = self.enqueue()
        self.redis.hset("rq:job:site1::abc", mapping=self.redis.hgetall(job.key))
        self.redis.rpush("rq:queue:default", "site1::abc", "gone-1")
        self.redis.sadd("rq:queues", "not-a-queue-key")
        code, out, _ = self.btu("--json", "list-jobs")
        self.assertEqual(code, 0)
        listed = {j["id"]: j["status"] for j in json.loads(out)}
        self.assertEqual(listed, {job.id: "queued", "site1::abc": "queued", "gone-1": "missing"})

    def test_list_jobs_empty(self) -> None:
        """No queue: a sentence, or an empty JSON array."""
        self.assertEqual(self.btu("list-jobs")[:2], (0, "No jobs are waiting in any rq queue.\n"))
        self.assertEqual(json.loads(self.btu("--json", "list-jobs")[1]), [])

    def test_list_jobs_without_redis(self) -> None:
        """Redis down (port 1): exit 3, one line, nothing on stdout."""
        code, out, err = self.btu("--json", "list-jobs", config=self.write_config(rq_port=1))
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "cannot reach Redis at 127.0.0.1:1")

    def test_show_job_table_and_json(self) -> None:
        """show-job shows rq's fields, the function and its arguments."""
        job = self.enqueue(kwargs={"answer": 42})
        code, out, _ = self.btu("show-job", job.id)
        self.assertEqual(code, 0)
        self.assertRegex(out, r"func_name\s+tests\.jobfuncs\.record")
        self.assertRegex(out, r"status\s+queued")
        code, out, _ = self.btu("--json", "show-job", job.id)
        shown = json.loads(out)
        self.assertEqual((shown["id"], shown["status"], shown["origin"]),
                         (job.id, "queued", "default"))
        self.assertEqual(shown["kwargs"], {"answer": 42})
        self.assertEqual(shown["position_in_queue"], 0)

    def test_show_job_frappe_style_id(self) -> None:
        """A 'site::uuid' id is looked up whole, not cut at the first colon as rq does."""
        job = self.enqueue()
        self.redis.hset("rq:job:site1::abc", mapping=self.redis.hgetall(job.key))
        code, out, _ = self.btu("--json", "show-job", "site1::abc")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads(out)["id"], "site1::abc")

    def test_rust_daemon_job(self) -> None:
        """A job hash written the Rust daemon's way (COMPAT.md 2) is shown and can be re-queued."""
        stamp = "2024-01-15T10:00:00.123Z"
        self.redis.hset("rq:job:rust-1", mapping={
            "status": "", "worker_name": "", "ended_at": "", "result_ttl": "", "enqueued_at": "",
            "started_at": "", "last_heartbeat": stamp, "created_at": stamp, "origin": "default",
            "description": "Ping Now", "timeout": "3600", "data": BTU_PICKLE,
        })
        code, out, _ = self.btu("--json", "show-job", "rust-1")
        self.assertEqual(code, 0)
        shown = json.loads(out)
        self.assertEqual(shown["func_name"], "btu.btu_api.execute_job")
        self.assertEqual(shown["kwargs"], {"method": "<btu.btu_core.task_runner.TaskRunner()>",
                                           "job_name": "Ping Now"})
        self.assertEqual((shown["status"], shown["timeout"]), ("created", 3600))
        code, out, _ = self.btu("--json", "queue-job-now", "rust-1")
        self.assertEqual((code, json.loads(out)["action"]), (0, "enqueued"))
        self.assertEqual(self.redis.lrange("rq:queue:default", 0, -1), [b"rust-1"])

    def test_show_job_unknown(self) -> None:
        """An unknown id exits 1."""
        code, out, err = self.btu("show-job", "no-such-job")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "no-such-job")

    def test_unknown_long_names_are_not_repeated_whole(self) -> None:
        """show-job, queue-job-now, history and clear-last-run of a 20,000-character
        name or id: exit 1, one short line."""
        long = "N" * 20000
        for command in ("show-job", "queue-job-now", "history", "clear-last-run"):
            code, out, err = self.btu(command, long)
            self.assertEqual((code, out), (1, ""), command)
            self.assertOneErrorLine(err, "N" * 80 + "'...[19920 more characters]")
            self.assertLess(len(err), 300, command)

    def test_show_job_without_redis(self) -> None:
        """Redis down: exit 3."""
        code, _, err = self.btu("show-job", "x", config=self.write_config(rq_port=1))
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "Redis")

    def test_queue_job_now_requeues_a_failed_job(self) -> None:
        """A failed job leaves the failed registry and waits on its queue again."""
        job = self.enqueue()
        queue = Queue("default", connection=self.redis)
        queue.remove(job)
        registry = FailedJobRegistry(queue=queue)
        with self.redis.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            registry.add(job, ttl=600, pipeline=pipe)
            pipe.execute()
        code, out, _ = self.btu("--json", "queue-job-now", job.id)
        self.assertEqual(code, 0)
        report = json.loads(out)
        self.assertEqual((report["action"], report["status"], report["position_in_queue"]),
                         ("requeued", "queued", 0))
        self.assertNotIn(job.id, registry.get_job_ids())
        self.assertEqual(queue.get_job_ids(), [job.id])

    def test_queue_job_now_finished_job(self) -> None:
        """A finished job is enqueued again, and the people's output says where."""
        job = self.enqueue()
        Queue("default", connection=self.redis).remove(job)
        job.set_status(JobStatus.FINISHED)
        code, out, _ = self.btu("queue-job-now", job.id)
        self.assertEqual(code, 0)
        self.assertIn("enqueued on queue default", out)
        self.assertEqual(Job.fetch(job.id, connection=self.redis).get_status(), JobStatus.QUEUED)

    def test_queue_job_now_already_queued_is_not_duplicated(self) -> None:
        """A job already waiting is left alone: its id is not pushed a second time."""
        job = self.enqueue()
        code, out, _ = self.btu("queue-job-now", job.id)
        self.assertEqual(code, 0)
        self.assertIn("already waiting", out)
        self.assertEqual(self.redis.lrange("rq:queue:default", 0, -1), [job.id.encode()])

    def test_queue_job_now_refuses_a_running_job(self) -> None:
        """A started job is not queued again (exit 1)."""
        job = self.enqueue()
        Queue("default", connection=self.redis).remove(job)
        job.set_status(JobStatus.STARTED)
        code, _, err = self.btu("queue-job-now", job.id)
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "running")

    def planted_job(self, marker: str) -> Job:
        """A queued rq job whose ``meta`` and ``data`` were replaced by pickles that run a shell."""
        job = self.enqueue()
        self.redis.hset(job.key, "description", "planted")
        shell = f"cos\nsystem\n({_pickled_text(f'touch {marker}').decode()}tR".encode()
        self.redis.hset(job.key, mapping={
            "meta": b"\x80\x02}" + _pickled_text("task_schedule") + shell + b"s.",
            "data": zlib.compress(b"\x80\x02(" + _pickled_text("tests.jobfuncs.record")
                                  + b"N)}" + _pickled_text("cmd") + shell + b"st."),
        })
        return job

    def test_show_job_never_runs_a_planted_pickle(self) -> None:
        """A job whose meta/data would run os.system is shown, summarized, and nothing runs."""
        marker = os.path.join(self.tmp, "pwned")
        job = self.planted_job(marker)
        code, out, err = self.btu("--json", "show-job", job.id)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual((code, err), (0, ""))
        shown = json.loads(out)
        self.assertEqual((shown["status"], shown["origin"], shown["description"]),
                         ("queued", "default", "planted"))
        self.assertEqual(shown["func_name"], "tests.jobfuncs.record")
        self.assertEqual(shown["meta"], {"task_schedule": f"<os.system('touch {marker}')>"})
        self.assertEqual(shown["kwargs"], {"cmd": f"<os.system('touch {marker}')>"})
        code, out, _ = self.btu("show-job", job.id)
        self.assertEqual(code, 0)
        self.assertIn("os.system", out)
        self.assertFalse(os.path.exists(marker))

    def test_queue_job_now_copies_a_planted_pickle_untouched(self) -> None:
        """queue-job-now re-queues a finished job without unpickling: data and meta stay bytes."""
        marker = os.path.join(self.tmp, "pwned")
        job = self.planted_job(marker)
        Queue("default", connection=self.redis).remove(job)
        self.redis.hset(job.key, "status", "finished")
        self.redis.expire(job.key, 500)  # what result_ttl leaves on a finished job
        before = self.redis.hmget(job.key, ["data", "meta"])
        code, out, err = self.btu("--json", "queue-job-now", job.id)
        self.assertFalse(os.path.exists(marker))
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["action"], "enqueued")
        self.assertEqual(self.redis.hmget(job.key, ["data", "meta"]), before)
        self.assertEqual(self.redis.hget(job.key, "status"), b"queued")
        self.assertEqual(self.redis.ttl(job.key), -1)  # waits on the queue without expiring
        self.assertEqual(self.redis.lrange("rq:queue:default", 0, -1), [job.id.encode()])

    def test_queue_job_now_a_real_worker_runs_it_again(self) -> None:
        """A finished job re-queued from its raw hash is run again by a real rq worker."""
        url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
        job = self.enqueue(kwargs={"record_redis": url, "run": "again"})
        argv = worker_argv(url, ["default"])
        first = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60, check=False)
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(self.redis.hget(job.key, "status"), b"finished")
        code, _, err = self.btu("queue-job-now", job.id)
        self.assertEqual((code, err), (0, ""))
        second = subprocess.run(argv, cwd=REPO, capture_output=True, timeout=60, check=False)
        self.assertEqual(second.returncode, 0, second.stderr)
        records = read_redis_records(url)
        self.assertEqual([r["kwargs"]["run"] for r in records], ["again", "again"])
        self.assertEqual(self.redis.hget(job.key, "status"), b"finished")

    def test_queue_job_now_unknown(self) -> None:
        """An unknown id exits 1 and creates nothing."""
        code, _, err = self.btu("queue-job-now", "no-such-job")
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "no-such-job")
        self.assertEqual(self.redis.keys("*"), [])


class _FakeDaemon(LineOnlyReceiver):
    """Answers the daemon's requests the way btu_twisted's protocol does, one line each."""

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        self.factory.requests.append(line)
        request = json.loads(line)
        kind, name = request["request_type"], request["request_content"]
        if kind == "ping":
            self.sendLine(b"pong")
        elif kind == "create_task_schedule" or (kind == "reload" and name is not None):
            reply = f"BTU Scheduler now re-processing Task Schedule {name} in Python RQ."
            self.sendLine(reply.encode())
        elif kind == "cancel_task_schedule" and name == "broken":
            self.sendLine(b"Error: could not cancel Task Schedule broken: Redis is down")
        elif kind == "cancel_task_schedule":
            self.sendLine(f"Successfully cancelled BTU Task Schedule {name} in Python RQ.".encode())
        elif kind == "status":
            status = {"version": "0.1.0", "fifo_length": 0,
                      "services": {"redis": {"up": True}, "mariadb": {"up": False}}}
            self.sendLine(json.dumps(status).encode())
        else:
            self.sendLine(b"Error: unhandled request_type")


class _RustLikeDaemon(LineOnlyReceiver):
    """Replies without a newline and closes, as the Rust daemon did; 'status' is unknown to it."""

    def dataReceived(self, data: bytes) -> None:
        kind = json.loads(data)["request_type"]
        unhandled = f"Client message has an unhandled 'request_type': {kind}"
        reply = "pong" if kind == "ping" else unhandled
        self.transport.write(reply.encode())
        self.transport.loseConnection()


class _Control:
    """The scheduler side of the real control protocol, recording what it was asked."""

    def __init__(self) -> None:
        self.planned: list[str] = []
        self.full = False

    def request_planning(self, name: str) -> bool:
        if self.full:
            return False
        self.planned.append(name)
        return True

    def cancel(self, name: str) -> Deferred[bool]:
        return succeed(False)

    def cancel_note(self, name: str) -> str | None:
        return "It is in the schedules file." if name == "file-one" else None

    def pause(self, name: str) -> Deferred[str]:
        from btu_twisted.seams import UnknownSchedule

        if name == "NOSUCH":
            return fail(UnknownSchedule(f"no Task Schedule named {name}"))
        return succeed(f"Paused Task Schedule {name}.")

    def resume(self, name: str) -> Deferred[str]:
        return succeed(f"Task Schedule {name} is not paused; nothing to resume.")

    def status(self) -> dict[str, object]:
        return {"fifo_length": len(self.planned)}

    def replan(self, name: str) -> Deferred[str]:
        from btu_twisted.daemon.framing import Declined, echo
        from btu_twisted.seams import UnknownSchedule

        if name.startswith("NOSUCH"):
            return fail(UnknownSchedule(f"no Task Schedule {echo(name)} in MariaDB"))
        if not self.request_planning(name):
            return fail(Declined(f"the planning queue is full; Task Schedule {name} "
                                 "was not queued"))
        return succeed(f"BTU Scheduler now re-processing Task Schedule {name} in Python RQ.")

    def reload(self) -> Deferred[str]:
        from btu_twisted.sources.schedules_file import ScheduleFileError

        self.reloads = getattr(self, "reloads", 0) + 1
        if self.full:
            return fail(ScheduleFileError(["s.toml:3: schedule 'x': cron: bad"]))
        return succeed("1 added, 0 changed, 2 removed")


class DaemonSocketTests(_Base):
    """ping, reload, cancel and status over a Unix socket served by a stand-in daemon."""

    def serve(self, protocol: type[LineOnlyReceiver]) -> list[bytes]:
        """Listen on the config's socket path; returns the list of raw requests received."""
        factory = Factory.forProtocol(protocol)
        factory.requests = []  # type: ignore[attr-defined]
        self.listen(factory)
        return factory.requests  # type: ignore[attr-defined,no-any-return]

    def listen(self, factory: Factory) -> None:
        """Serve ``factory`` on the config's socket path until the test ends."""
        wrapper = WrappingFactory(factory)
        path = os.path.join(self.tmp, "d.sock")
        listening: Deferred[IListeningPort] = UNIXServerEndpoint(reactor, path).listen(wrapper)
        port = self.successResultOf(listening)
        self.addCleanup(_drain, wrapper, port)

    async def btu_in_thread(self, *argv: str) -> tuple[int, str, str]:
        if getattr(self, "config", None) is None:
            self.config = self.write_config()
        result: tuple[int, str, str] = await deferToThread(self.btu, *argv)
        return result

    async def test_ping_sends_the_btu_request(self) -> None:
        """ping sends the BTU app's JSON object plus a newline and prints the reply."""
        requests = self.serve(_FakeDaemon)
        code, out, err = await self.btu_in_thread("ping")
        self.assertEqual((code, out, err), (0, "pong\n", ""))
        self.assertEqual([json.loads(r) for r in requests],
                         [{"request_type": "ping", "request_content": None}])

    async def test_ping_json(self) -> None:
        """--json wraps the reply in an object."""
        self.serve(_FakeDaemon)
        code, out, _ = await self.btu_in_thread("--json", "ping")
        self.assertEqual((code, json.loads(out)), (0, {"reply": "pong"}))

    async def test_reload_and_cancel(self) -> None:
        """reload sends the name with its own request (one that must exist), cancel
        with the BTU request type."""
        requests = self.serve(_FakeDaemon)
        code, out, _ = await self.btu_in_thread("reload", "TS-000001")
        self.assertEqual(code, 0)
        self.assertIn("re-processing Task Schedule TS-000001", out)
        code, out, _ = await self.btu_in_thread("--json", "cancel", "TS-000002")
        self.assertEqual(code, 0)
        self.assertIn("Successfully cancelled", json.loads(out)["reply"])
        self.assertEqual([json.loads(r) for r in requests], [
            {"request_type": "reload", "request_content": "TS-000001"},
            {"request_type": "cancel_task_schedule", "request_content": "TS-000002"},
        ])

    async def test_error_reply_exits_1(self) -> None:
        """A reply starting 'Error:' exits 1 and is passed on in one line."""
        self.serve(_FakeDaemon)
        code, out, err = await self.btu_in_thread("cancel", "broken")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "Error: could not cancel")

    async def test_status_table_and_json(self) -> None:
        """People get dotted keys; --json passes the daemon's JSON through."""
        self.serve(_FakeDaemon)
        code, out, _ = await self.btu_in_thread("status")
        self.assertEqual(code, 0)
        self.assertRegex(out, r"services\.redis\.up\s+yes")
        self.assertRegex(out, r"fifo_length\s+0")
        code, out, _ = await self.btu_in_thread("--json", "status")
        self.assertEqual(json.loads(out)["services"]["mariadb"], {"up": False})

    async def test_rust_daemon_replies(self) -> None:
        """A reply ended by closing the connection counts; a non-JSON status exits 1."""
        self.serve(_RustLikeDaemon)
        self.assertEqual(await self.btu_in_thread("ping"), (0, "pong\n", ""))
        code, _, err = await self.btu_in_thread("status")
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "not JSON")

    async def test_real_daemon_protocol(self) -> None:
        """The daemon's own ControlProtocol understands every request the CLI sends."""
        control = _Control()
        self.listen(ControlFactory(control, reactor))
        self.assertEqual(await self.btu_in_thread("ping"), (0, "pong\n", ""))
        code, out, _ = await self.btu_in_thread("reload", "TS-000001")
        self.assertEqual((code, control.planned), (0, ["TS-000001"]))
        code, out, _ = await self.btu_in_thread("cancel", "TS-000009")
        self.assertEqual(code, 0)
        self.assertIn("TS-000009 was not scheduled", out)
        code, out, _ = await self.btu_in_thread("--json", "status")
        self.assertEqual((code, json.loads(out)), (0, {"fifo_length": 1}))
        control.full = True
        code, out, err = await self.btu_in_thread("reload", "TS-000002")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "planning queue is full")

    async def test_reload_of_an_unknown_schedule_fails(self) -> None:
        """``btu reload NOSUCH``: the daemon's error line, exit 1, nothing planned; a
        20,000-character name is not echoed whole."""
        control = _Control()
        self.listen(ControlFactory(control, reactor))
        code, out, err = await self.btu_in_thread("reload", "NOSUCH")
        self.assertEqual((code, out, control.planned), (1, "", []))
        self.assertOneErrorLine(err, "no Task Schedule 'NOSUCH' in MariaDB")
        code, out, err = await self.btu_in_thread("reload", "NOSUCH" + "x" * 19994)
        self.assertEqual((code, out, control.planned), (1, "", []))
        self.assertOneErrorLine(err, "20000 characters")
        self.assertLess(len(err), 300)

    async def test_pause_and_resume(self) -> None:
        """``btu pause``/``resume`` send the new requests; an unknown name exits 1 with the
        daemon's line, a schedule not paused exits 0 saying so; a cancel of a file
        schedule says it comes back."""
        control = _Control()
        self.listen(ControlFactory(control, reactor))
        code, out, err = await self.btu_in_thread("pause", "TS-000001")
        self.assertEqual((code, out, err), (0, "Paused Task Schedule TS-000001.\n", ""))
        code, out, err = await self.btu_in_thread("pause", "NOSUCH")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "no Task Schedule named NOSUCH; nothing to pause")
        code, out, err = await self.btu_in_thread("--json", "resume", "TS-000001")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("is not paused", json.loads(out)["reply"])
        code, out, _ = await self.btu_in_thread("cancel", "file-one")
        self.assertEqual(code, 0)
        self.assertTrue(out.endswith("nothing to cancel. It is in the schedules file.\n"), out)

    async def test_reload_without_a_name_rereads_the_schedules_file(self) -> None:
        """``btu reload`` with no SCHEDULE sends the reload request; a broken file exits 1
        with the daemon's problems in one line."""
        control = _Control()
        self.listen(ControlFactory(control, reactor))
        code, out, _ = await self.btu_in_thread("reload")
        self.assertEqual((code, out), (0, "Schedules file reloaded: 1 added, 0 changed, "
                                          "2 removed.\n"))
        self.assertEqual((control.reloads, control.planned), (1, []))
        control.full = True
        code, out, err = await self.btu_in_thread("reload")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "s.toml:3: schedule 'x': cron: bad")

    async def test_commands_without_mariadb_keys(self) -> None:
        """A schedules_file-only config: print-config works, a MariaDB command says why not."""
        schedules = os.path.join(self.tmp, "schedules.toml")
        with open(schedules, "w") as stream:
            stream.write("")
        values = config_values(self.database, redis_db=REDIS_DB,
                               socket_path=os.path.join(self.tmp, "d.sock"),
                               job_builder="function", schedules_file=schedules)
        path = os.path.join(self.tmp, "file-only.toml")
        with open(path, "w") as stream:
            stream.write(toml_text({k: v for k, v in values.items()
                                    if not k.startswith(("mysql_", "webserver_"))}))
        os.chmod(path, 0o600)
        code, out, err = await deferToThread(self.btu, "--json", "print-config", config=path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["schedules_file"], schedules)
        self.assertIsNone(json.loads(out)["mysql_user"])
        code, out, err = await deferToThread(self.btu, "list-tasks", config=path)
        self.assertEqual(code, 2)
        self.assertOneErrorLine(err, "names none")

    def record_last_runs(self, **values: float) -> None:
        """Write ``btu_scheduler:last_enqueued`` fields as the daemon does (unix seconds)."""
        self.redis.hset(LAST_ENQUEUED, mapping={k.replace("_", "-"): str(int(v))
                                                for k, v in values.items()})

    async def test_clear_last_run_ahead_tells_the_daemon(self) -> None:
        """A last run years ahead is deleted, other schedules' are kept, the daemon re-plans."""
        requests = self.serve(_FakeDaemon)
        ahead = time.time() + 10 * 365 * 86400
        self.record_last_runs(TS_000001=ahead, TS_000002=time.time() - 60)
        code, out, err = await self.btu_in_thread("clear-last-run", "TS-000001")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Cleared the last run of TS-000001", out)
        self.assertIn("re-processing Task Schedule TS-000001", out)
        self.assertEqual(self.redis.hkeys(LAST_ENQUEUED), [b"TS-000002"])
        self.assertEqual([json.loads(r) for r in requests],
                         [{"request_type": "create_task_schedule", "request_content": "TS-000001"}])

    def test_clear_last_run_without_a_daemon(self) -> None:
        """With no daemon the field is still cleared, and the output says what happens next."""
        ahead = int(time.time()) + 3600
        self.record_last_runs(TS_000001=ahead)
        code, out, err = self.btu("--json", "clear-last-run", "TS-000001")
        self.assertEqual((code, err), (0, ""))
        report = json.loads(out)
        self.assertEqual((report["schedule"], report["cleared"], report["daemon_reply"]),
                         ("TS-000001", ahead, None))
        self.assertIn("cannot reach the btu daemon", report["daemon_error"])
        self.assertFalse(self.redis.hexists(LAST_ENQUEUED, "TS-000001"))
        self.record_last_runs(TS_000001=ahead)
        code, out, _ = self.btu("clear-last-run", "TS-000001")
        self.assertEqual(code, 0)
        self.assertIn("next full refresh", out)

    def test_clear_last_run_follows_the_key_prefix(self) -> None:
        """With redis_key_prefix set, the last run cleared is that prefix's, no other."""
        ahead = str(int(time.time()) + 3600)
        self.redis.hset("btu_scheduler:b.test:last_enqueued", "TS-000001", ahead)
        self.redis.hset(LAST_ENQUEUED, "TS-000001", ahead)  # another site's
        path = self.write_config(redis_key_prefix="btu_scheduler:b.test:")
        code, _, err = self.btu("clear-last-run", "TS-000001", config=path)
        self.assertEqual((code, err), (0, ""))
        self.assertFalse(self.redis.hexists("btu_scheduler:b.test:last_enqueued", "TS-000001"))
        self.assertTrue(self.redis.hexists(LAST_ENQUEUED, "TS-000001"))

    def test_clear_last_run_in_the_past_needs_force(self) -> None:
        """A last run not ahead of now is normal: kept (exit 1) unless --force is given."""
        self.record_last_runs(TS_000001=time.time() - 60)
        code, out, err = self.btu("clear-last-run", "TS-000001")
        self.assertEqual((code, out), (1, ""))
        self.assertOneErrorLine(err, "not ahead of now", "--force")
        self.assertTrue(self.redis.hexists(LAST_ENQUEUED, "TS-000001"))
        code, _, _ = self.btu("clear-last-run", "--force", "TS-000001")
        self.assertEqual(code, 0)
        self.assertFalse(self.redis.hexists(LAST_ENQUEUED, "TS-000001"))

    def test_clear_last_run_unknown_schedule(self) -> None:
        """Nothing recorded: exit 1 and nothing written."""
        code, _, err = self.btu("clear-last-run", "TS-404")
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "TS-404", "nothing to clear")
        self.assertEqual(self.redis.keys("*"), [])

    def test_no_socket_file(self) -> None:
        """No daemon (no socket file): exit 3 naming the path."""
        code, out, err = self.btu("ping")
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "cannot reach the btu daemon at", "d.sock")

    def test_stale_socket_file(self) -> None:
        """A socket file nobody listens on: connection refused, exit 3."""
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(os.path.join(self.tmp, "d.sock"))
        stale.close()
        code, _, err = self.btu("status")
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "refused")

    def test_silent_daemon_times_out(self) -> None:
        """A daemon that accepts but never answers: exit 3 after the timeout."""
        self.patch(cli_daemon, "REQUEST_TIMEOUT", 0.2)
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(silent.close)
        silent.bind(os.path.join(self.tmp, "d.sock"))
        silent.listen(1)
        code, _, err = self.btu("ping")
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "no reply within 0.2 s")


class _Method(Resource):
    """One Frappe whitelisted method: checks the daemon's headers, answers a fixed message."""

    isLeaf = True

    def __init__(self, message: Any, seen: list[dict[str, str]]) -> None:
        super().__init__()
        self.message = message
        self.seen = seen

    def render(self, request: Any) -> bytes:
        raw = request.requestHeaders.getAllRawHeaders()
        headers = {name.decode().lower(): values[0].decode() for name, values in raw}
        self.seen.append({"method": request.method.decode(), **headers})
        request.setHeader(b"content-type", b"application/json")
        if headers.get("authorization") != TOKEN:
            request.setResponseCode(403)
            return json.dumps({"exc_type": "PermissionError"}).encode()
        return json.dumps({"message": self.message}).encode()


class SiteTests(_WithDatabase):
    """test-ping, test-pickler and the frappe builder against a stand-in Frappe site."""

    def setUp(self) -> None:
        super().setUp()
        self.seen: list[dict[str, str]] = []
        methods = Resource()
        methods.putChild(b"btu.btu_api.endpoints.test_ping", _Method("pong", self.seen))
        methods.putChild(b"frappe.ping", _Method("pong", self.seen))
        methods.putChild(b"btu.btu_api.endpoints.get_pickled_task",
                         _Method(list(PICKLE), self.seen))
        api = Resource()
        api.putChild(b"method", methods)
        root = Resource()
        root.putChild(b"api", api)
        wrapper = WrappingFactory(Site(root))
        port = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
        self.addCleanup(_drain, wrapper, port)
        self.site_port = port.getHost().port

    def site_config(self, **overrides: Any) -> str:
        values = dict(webserver_ip="127.0.0.1", webserver_port=self.site_port,
                      webserver_host_header="site1.local", job_builder="frappe")
        values.update(overrides)
        return self.write_config(**values)

    async def btu_in_thread(self, *argv: str, config: str) -> tuple[int, str, str]:
        result: tuple[int, str, str] = await deferToThread(self.btu, *argv, config=config)
        return result

    async def test_ping_the_site(self) -> None:
        """test-ping GETs BTU's test_ping with the token and Host header, and prints the reply."""
        code, out, err = await self.btu_in_thread("test-ping", config=self.site_config())
        self.assertEqual((code, err), (0, ""))
        self.assertIn("btu.btu_api.endpoints.test_ping: pong", out)
        self.assertEqual(self.seen[0]["method"], "GET")
        self.assertEqual(self.seen[0]["host"], "site1.local")
        self.assertNotIn("secret456", out)

    async def test_ping_json_and_other_method(self) -> None:
        """--json reports url and message; --method picks another whitelisted method."""
        code, out, _ = await self.btu_in_thread("--json", "test-ping", "--method", "frappe.ping",
                                                config=self.site_config())
        self.assertEqual(code, 0)
        report = json.loads(out)
        self.assertEqual(report["message"], "pong")
        self.assertTrue(report["url"].endswith("/api/method/frappe.ping"))

    async def test_ping_wrong_token(self) -> None:
        """A refused token exits 1 with a hint and without the token."""
        path = self.site_config(webserver_token="token key123:hunter2")
        code, _, err = await self.btu_in_thread("test-ping", config=path)
        self.assertEqual(code, 1)
        self.assertOneErrorLine(err, "403", "webserver_token")

    def test_ping_site_unreachable(self) -> None:
        """Nothing listening: exit 3."""
        code, _, err = self.btu("test-ping", config=self.site_config(webserver_port=1))
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "cannot reach the site")

    def test_ping_without_webserver_settings(self) -> None:
        """A config without webserver_ip/port cannot ping: exit 2."""
        code, _, err = self.btu("test-ping", config=self.write_config())
        self.assertEqual(code, 2)
        self.assertOneErrorLine(err, "webserver_ip")

    async def test_pickler(self) -> None:
        """test-pickler reports the byte count and the function the pickle names."""
        path = self.site_config()
        code, out, _ = await self.btu_in_thread("test-pickler", "BTU-00001", config=path)
        self.assertEqual(code, 0)
        self.assertIn(f"{len(PICKLE)} bytes", out)
        self.assertIn("btu.btu_api.execute_job", out)
        code, out, _ = await self.btu_in_thread("--json", "test-pickler", "BTU-00001", config=path)
        report = json.loads(out)
        self.assertEqual((report["bytes"], report["task"]), (len(PICKLE), "BTU-00001"))
        self.assertEqual(self.seen[-1]["method"], "POST")

    def test_pickler_unreachable(self) -> None:
        """Nothing listening: exit 3."""
        path = self.site_config(webserver_port=1)
        code, _, err = self.btu("test-pickler", "BTU-00001", config=path)
        self.assertEqual(code, 3)
        self.assertOneErrorLine(err, "BTU-00001")

    async def test_queue_task_now_frappe_builder(self) -> None:
        """With the frappe builder the site's pickle becomes the queued job's data, untouched,
        in a job shaped as frappe.enqueue's (the site's id, Frappe's TTLs, the callback)."""
        code, out, _ = await self.btu_in_thread("--json", "queue-task-now", "BTU-00001",
                                                config=self.site_config())
        self.assertEqual(code, 0)
        job_id = json.loads(out)["job_id"]
        self.assertRegex(job_id, r"\Asite1\.local::[0-9a-f-]{36}\Z")
        job = Job(connection=self.redis)  # this rq refuses the id itself; the hash is its
        job.restore(self.redis.hgetall(f"rq:job:{job_id}"))
        self.assertEqual(job.data, PICKLE)
        self.assertEqual(job.func_name, "btu.btu_api.execute_job")
        self.assertEqual((job.result_ttl, job.failure_ttl), (600, 604800))
        self.assertEqual(job._failure_callback_name,
                         "frappe.utils.background_jobs.truncate_failed_registry")
        self.assertEqual(self.redis.lrange("rq:queue:default", 0, -1), [job_id.encode()])


class _RawSite:
    """A real TCP server on its own thread that keeps each request's bytes exactly as received.

    It runs outside Twisted on purpose: the ``btu`` command runs with no global
    reactor spinning, and the test must see what a real site would see then.
    A request whose announced body never arrives is recorded as it stands
    when the client gives up or ``wait`` seconds pass, and gets no answer.
    """

    def __init__(self, body: bytes, wait: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.body = body
        self.wait = wait
        self.tls = tls
        self.tls_errors: list[str] = []
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # so close() is seen promptly
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(self.wait + 5)
        self.listener.close()

    def received(self, count: int) -> list[bytes]:
        """The requests, once ``count`` are recorded (or the wait is over: the test then fails)."""
        deadline = time.monotonic() + self.wait + 2
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.requests)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            if self.tls is not None:
                try:
                    conn.settimeout(self.wait)
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as error:
                    self.tls_errors.append(str(error))
                    conn.close()
                    continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(self.wait)
        raw = b""
        try:
            while b"\r\n\r\n" not in raw:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                raw += chunk
            head, _, body = raw.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
                raw += chunk
        except OSError:
            pass
        self.requests.append(raw)
        if not raw or len(raw.partition(b"\r\n\r\n")[2]) < length:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(self.body)).encode() + b"\r\n"
                     b"Connection: close\r\n\r\n" + self.body)


def _parse_request(raw: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """Request line, headers (lower-case names, every value) and body of raw HTTP/1.1 bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], headers, body


class SiteBytesTests(_WithDatabase):
    """What a site receives from ``btu`` with the frappe builder, byte for byte.

    ``btu`` is called synchronously here, so Twisted's global reactor does not
    run meanwhile, exactly as in the ``btu`` process (issue 9 part 6: the
    headers went out announcing a body that never followed).
    """

    def setUp(self) -> None:
        super().setUp()
        self.site = _RawSite(json.dumps({"message": list(PICKLE)}).encode())
        self.addCleanup(self.site.close)

    def site_config(self) -> str:
        return self.write_config(webserver_ip="127.0.0.1", webserver_port=self.site.port,
                                 webserver_host_header="site1.local", job_builder="frappe",
                                 webserver_timeout_secs=4)

    def assertPickledTaskRequest(self, raw: bytes, task: str, schedule: str | None) -> None:
        """One complete POST to get_pickled_task with the daemon's headers and JSON body."""
        request_line, headers, body = _parse_request(raw)
        self.assertEqual(request_line,
                         "POST /api/method/btu.btu_api.endpoints.get_pickled_task HTTP/1.1")
        self.assertEqual(headers["host"], ["site1.local"])
        self.assertEqual(headers["authorization"], [TOKEN])
        self.assertEqual(headers["content-type"], ["application/json"])
        self.assertEqual(headers["content-length"], [str(len(body))])
        self.assertEqual(json.loads(body), {"task_id": task, "task_schedule_id": schedule})

    def test_pickler_sends_the_whole_body(self) -> None:
        """test-pickler's request carries its JSON body, and the site's pickle comes back."""
        code, out, err = self.btu("test-pickler", "BTU-00001", config=self.site_config())
        requests = self.site.received(1)
        self.assertEqual(len(requests), 1, requests)
        self.assertPickledTaskRequest(requests[0], "BTU-00001", None)
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"{len(PICKLE)} bytes", out)

    def test_queue_task_now_sends_the_whole_body(self) -> None:
        """queue-task-now (frappe builder) sends the full request and queues the site's pickle."""
        code, out, err = self.btu("--json", "queue-task-now", "BTU-00001",
                                  config=self.site_config())
        requests = self.site.received(1)
        self.assertEqual(len(requests), 1, requests)
        # No schedule: BTU's TaskRunner takes null (a name it cannot find is a 404).
        self.assertPickledTaskRequest(requests[0], "BTU-00001", None)
        self.assertEqual((code, err), (0, ""))
        job_id = json.loads(out)["job_id"]
        self.assertEqual(self.redis.hget(f"rq:job:{job_id}", "data"), zlib.compress(PICKLE))


class SiteBytesHTTPSTests(SiteBytesTests):
    """The same bytes over HTTPS, with the certificate checked against the configured CA."""

    def setUp(self) -> None:
        _WithDatabase.setUp(self)
        self.tls_files = TLSFiles.get(Path(tempfile.gettempdir()) / "btu_cli_tls")
        pem = os.path.join(self.tmp, "server.pem")
        with open(pem, "wb") as stream:
            stream.write(self.tls_files.server_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        self.site = _RawSite(json.dumps({"message": list(PICKLE)}).encode(), tls=context)
        self.addCleanup(self.site.close)

    def site_config(self, **overrides: Any) -> str:
        values = dict(webserver_ip="127.0.0.1", webserver_port=self.site.port,
                      webserver_host_header="site1.local", job_builder="frappe",
                      webserver_timeout_secs=4, webserver_scheme="https",
                      webserver_ca_file=str(self.tls_files.ca_file))
        values.update(overrides)
        return self.write_config(**values)

    def test_pickler_refuses_an_untrusted_certificate(self) -> None:
        """Without the CA file the site's certificate is not trusted: exit 3, nothing sent."""
        code, out, err = self.btu("test-pickler", "BTU-00001",
                                  config=self.site_config(webserver_ca_file=None))
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "BTU-00001", "TLS")
        self.assertEqual(self.site.requests, [])

    def test_pickler_refuses_a_certificate_for_another_name(self) -> None:
        """The certificate is checked against webserver_host_header, not the address: exit 3."""
        code, out, err = self.btu("test-pickler", "BTU-00001",
                                  config=self.site_config(webserver_host_header="other.local"))
        self.assertEqual((code, out), (3, ""))
        self.assertOneErrorLine(err, "TLS certificate is not valid for other.local")
        self.assertEqual(self.site.requests, [])


class SlowReplyTests(TestCase):
    """``btu reload`` waits for a reload that takes longer than a ping may (50,000
    schedules take about 5 s), while connecting still fails fast."""

    def serve_once(self, delay: float) -> str:
        import socket
        import threading

        path = os.path.join(tempfile.mkdtemp(dir="/tmp", prefix="btuslow"), "d.sock")
        self.addCleanup(shutil.rmtree, os.path.dirname(path), True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        self.addCleanup(server.close)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                time.sleep(delay)
                try:
                    conn.sendall(b"Schedules file reloaded: 0 added, 0 changed, 0 removed.\n")
                except BrokenPipeError:
                    pass  # the client gave up first, as the timeout test wants

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        return path

    def test_the_reply_may_take_longer_than_the_connection(self) -> None:
        from btu_twisted.cli.daemon import request

        path = self.serve_once(0.4)
        reply = request(path, "reload", None, timeout=0.1, reply_timeout=5)
        self.assertTrue(reply.startswith("Schedules file reloaded"), reply)

    def test_without_a_reply_timeout_the_request_timeout_holds(self) -> None:
        from btu_twisted.cli.common import CliError
        from btu_twisted.cli.daemon import request

        path = self.serve_once(0.4)
        error = self.assertRaises(CliError, request, path, "reload", None, timeout=0.1)
        self.assertIn("no reply within 0.1 s", str(error))
