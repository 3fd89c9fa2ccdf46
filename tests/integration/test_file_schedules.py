"""A daemon with only a schedules_file: no mysql_* key, no MariaDB, real Redis and rq workers.

Each test runs its own redis-server (shared databases are all taken) and a
``BtuService`` in the trial reactor.  The jobs are proven by a real rq
worker running them, and the reloads by what the daemon plans in Redis.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.cli.daemon import request
from btu_twisted.sources.schedules_file import ScheduleFileError
from btu_twisted.store.keys import MEMBER_INDEX
from tests.integration.daemon import make_service, run_worker, wait_for
from tests.integration.redis_servers import server_directory, start_server
from tests.integration.support import config_values
from tests.jobfuncs import read_redis_records


def schedule(name: str, cron: str, **extra: Any) -> str:
    lines = [f'name = "{name}"', f'cron = "{cron}"', 'function = "tests.jobfuncs.record"']
    lines += [f"{key} = {toml_value(value)}" for key, value in extra.items()]
    return "[[schedule]]\n" + "\n".join(lines) + "\n\n"


def toml_value(value: Any) -> str:
    """JSON is TOML for strings, numbers, booleans and arrays; tables are spelled out."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class FileDaemonCase(unittest.TestCase):
    """A private redis-server, a schedules file path and the daemons a test starts."""

    timeout = 60

    async def setUp(self) -> None:
        self.dir = server_directory(self)
        self.server = await start_server(self, self.dir, "file-only")
        self.url = f"redis://127.0.0.1:{self.server.port}/0"
        self.redis = self.server.client()
        self.addCleanup(self.redis.close)
        self.path = self.dir / "schedules.toml"
        self.services: list[Any] = []

    async def tearDown(self) -> None:
        for service in self.services:
            if service.running:
                await service.stopService()

    def values(self, **extra: Any) -> dict[str, Any]:
        """A config with no mysql_* key at all, and the default job_builder ('frappe')."""
        values = config_values("unused", rq_port=self.server.port, rq_database=0,
                               socket_path=str(self.dir / "d.sock"),
                               schedules_file=str(self.path), **extra)
        return {key: value for key, value in values.items()
                if not key.startswith("mysql_") and key != "job_builder"}

    async def start(self, **extra: Any) -> Any:
        service, fatal = make_service(self.values(**extra))
        self.services.append(service)
        await service.startService()
        self.assertEqual(fatal, [])
        return service

    def members(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(MEMBER_INDEX).items()}


class FileOnlyDaemonTests(FileDaemonCase):

    async def test_per_second_schedule_runs_in_a_real_worker(self) -> None:
        """A 7-field cron from the file is enqueued and a real rq worker runs it with its
        args, kwargs, queue, timeout and description; nothing touches MariaDB."""
        self.path.write_text(schedule(
            "every-second", "* * * * * * *", args=["pos", 2], queue="files", timeout=42,
            description="a file job",
            kwargs={"record_redis": self.url, "greeting": "hello"},
        ))
        service = await self.start()
        self.assertIsNone(service.db)
        self.assertNotIn("mariadb", service.status()["services"])
        await wait_for(lambda: self.redis.llen("rq:queue:files") >= 2, timeout=10)
        result = await run_worker(0, ["files"], url=self.url)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        records = read_redis_records(self.url)
        self.assertGreaterEqual(len(records), 2)
        first = records[0]
        self.assertEqual(first["args"], ["pos", 2])
        self.assertEqual(first["kwargs"], {"greeting": "hello"})
        self.assertEqual(first["job"]["origin"], "files")
        self.assertEqual(first["job"]["timeout"], 42)
        self.assertEqual(first["job"]["description"],
                         "tests.jobfuncs.record for schedule every-second: a file job")
        self.assertEqual(first["job"]["meta"]["task_schedule"], "every-second")
        whens = [r["job"]["meta"]["scheduled_time"] for r in records]
        self.assertEqual(len(whens), len(set(whens)))

    async def test_reload_adds_and_removes_and_a_broken_file_keeps_the_old(self) -> None:
        """A reload over the socket plans a new schedule and drops a removed one within
        5 s; a file with errors is refused, one line per problem, and the last good
        schedules stay planned."""
        self.path.write_text(schedule("old", "0 0 1 1 *"))
        service = await self.start()
        await wait_for(lambda: "old" in self.members(), timeout=5)
        self.path.write_text(schedule("new", "0 0 1 1 *") + schedule("off", "* * * * *",
                                                                      enabled=False))
        socket_path = service.config.socket_path
        reply = await deferToThread(request, socket_path, "reload", None)
        self.assertEqual(reply, "Schedules file reloaded: 2 added, 0 changed, 1 removed.")
        reloaded = time.monotonic()
        await wait_for(lambda: set(self.members()) == {"new"}, timeout=5)
        self.assertLess(time.monotonic() - reloaded, 5)

        self.path.write_text(schedule("new", "0 0 1 1 *") + schedule("broken", "0 25 * * *")
                             + schedule("new", "* * * * *"))
        reply = await deferToThread(request, socket_path, "reload", None)
        self.assertTrue(reply.startswith("Error: schedules file not reloaded (2 problem(s)"),
                        reply)
        self.assertIn(":8: schedule 'broken': cron:", reply)
        self.assertIn(":12: schedule 'new': name: duplicate", reply)
        self.assertEqual(sorted(service.sources.file.rows), ["new", "off"])
        with self.assertRaises(ScheduleFileError):
            await service.reload()
        shown = service.status()["schedules_file"]
        self.assertEqual((shown["schedules"], shown["enabled"]), (2, 1))
        self.assertIn("schedule 'broken': cron:", shown["last_reload_error"])
        self.assertIsNotNone(shown["last_reload_at"])
        self.assertEqual(set(self.members()), {"new"})

    async def test_reload_of_one_schedule_must_name_one_in_the_file(self) -> None:
        """``reload`` with a name (``btu reload NAME``): a name of the file is planned;
        another is an error line, and nothing is queued for it."""
        self.path.write_text(schedule("old", "0 0 1 1 *"))
        service = await self.start()
        await wait_for(lambda: "old" in self.members(), timeout=5)
        socket_path = service.config.socket_path
        reply = await deferToThread(request, socket_path, "reload", "old")
        self.assertEqual(reply, "BTU Scheduler now re-processing Task Schedule old in Python RQ.")
        reply = await deferToThread(request, socket_path, "reload", "nosuch")
        self.assertEqual(reply, "Error: no Task Schedule 'nosuch' in the schedules file; "
                                "nothing to re-plan.")
        self.assertNotIn("nosuch", service.fifo)

    async def test_broken_file_at_start_is_one_fatal_line(self) -> None:
        """A schedules file with errors stops the start with one line naming them."""
        self.path.write_text(schedule("x", "not a cron"))
        service, fatal = make_service(self.values())
        self.services.append(service)
        try:
            await service.startService()
        except Exception:
            pass
        self.assertEqual(len(fatal), 1)
        self.assertIn("schedules_file has 1 problem(s)", fatal[0])
        self.assertIn(":3: schedule 'x': cron:", fatal[0])
        self.assertNotIn("\n", fatal[0])
        self.assertFalse(Path(service.config.socket_path).exists())

    async def test_sighup_rereads_the_file_under_twistd(self) -> None:
        """``twistd -n btu`` with only a schedules_file: SIGHUP re-reads the file, the
        change is planned within 5 s, and the daemon keeps running."""
        from tests.integration.test_exactly_once import Daemon, killed_at_cleanup, wait_answering

        self.path.write_text(schedule("before", "0 0 1 1 *"))
        daemon = killed_at_cleanup(self, Daemon(self.dir, 0, self.values()))
        daemon.start()
        await wait_answering([daemon], timeout=30)
        await wait_for(lambda: "before" in self.members(), timeout=10)
        self.path.write_text(schedule("after", "0 0 1 1 *"))
        daemon.kill(signal.SIGHUP)
        await wait_for(lambda: set(self.members()) == {"after"}, timeout=5)
        self.assertTrue(daemon.answers())
        daemon.kill(signal.SIGTERM)
        await deferToThread(daemon.proc.wait, 30)
        output = daemon.output()
        self.assertIn("schedules file reloaded: 1 added, 0 changed, 1 removed", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("MariaDB", output)
