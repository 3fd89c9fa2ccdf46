"""``btu pause``/``resume`` on real daemons, Redis, MariaDB and rq workers.

A pause must hold across a SIGHUP, a full refresh and a restart (it lives in
Redis, and plan.lua refuses to plan a paused schedule), a real worker must
get no job while it holds and jobs again after ``btu resume``, which plans
from now.  And a schedule deleted in MariaDB takes its run history with it,
so a new schedule under the same name starts empty.  Each test runs its own
redis-server.
"""

from __future__ import annotations

import io
import json
import signal
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.cli import main as btu
from btu_twisted.cli.daemon import request
from btu_twisted.config import load_config
from btu_twisted.daemon import control as control_module
from btu_twisted.daemon.sites import SitesService
from btu_twisted.store.history import ENQUEUED, PAUSED, RESUMED, encode_run, parse_run
from btu_twisted.store.keys import MEMBER_INDEX, Keys
from tests.integration import test_sites  # the module: trial would run an imported TestCase
from tests.integration.daemon import make_service, run_worker, wait_for
from tests.integration.redis_servers import server_directory, start_server
from tests.integration.support import TestDatabase, config_values
from tests.integration.test_file_schedules import FileDaemonCase, schedule
from tests.jobfuncs import read_redis_records

QUEUE = "rq:queue:ticks"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class PauseUnderTwistdTests(FileDaemonCase):
    """A ``twistd -n btu`` child with a per-second file schedule."""

    timeout = 180

    def outcomes(self, name: str) -> list[str]:
        runs = [parse_run(raw) for raw in self.redis.lrange(Keys().history(name), 0, -1)]
        return [run.outcome for run in runs if run is not None]

    async def btu(self, config: Any, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await deferToThread(btu, ["--config", str(config), *argv], out, err)
        return code, out.getvalue(), err.getvalue()

    async def assert_nothing_planned(self, daemon: Any, seconds: float = 3.0) -> None:
        """For ``seconds`` (three runs of a per-second schedule): no member, no job."""
        await sleep(seconds)
        self.assertNotIn("tick", self.members())
        self.assertEqual(self.redis.llen(QUEUE), 0)
        self.assertTrue(await deferToThread(daemon.answers))

    async def test_pause_holds_across_sighup_and_restart_until_resumed(self) -> None:
        from tests.integration.test_exactly_once import Daemon, killed_at_cleanup, wait_answering

        self.path.write_text(schedule("tick", "* * * * * * *", queue="ticks",
                                      kwargs={"record_redis": self.url}))
        daemon = killed_at_cleanup(self, Daemon(self.dir, 0, self.values()))
        daemon.start()
        await wait_answering([daemon], timeout=30)
        await wait_for(lambda: self.redis.llen(QUEUE) >= 1, timeout=10)

        code, out, err = await self.btu(daemon.config, "pause", "tick")
        self.assertEqual((code, out, err), (
            0, "Paused Task Schedule tick: no run is planned until 'btu resume tick'.\n", ""))
        code, out, _ = await self.btu(daemon.config, "pause", "tick")
        self.assertEqual(code, 0)
        self.assertIn("already paused", out)
        code, out, err = await self.btu(daemon.config, "pause", "NOSUCH")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no Task Schedule named NOSUCH", err)
        # The jobs enqueued before the pause go; none may follow.
        self.redis.delete(QUEUE)
        await self.assert_nothing_planned(daemon)

        # An edit and SIGHUP: the reload queues the changed schedule for planning.
        self.path.write_text(schedule("tick", "* * * * * * *", queue="ticks", timeout=30,
                                      kwargs={"record_redis": self.url}))
        daemon.kill(signal.SIGHUP)
        await wait_for(lambda: "schedules file reloaded: 0 added, 1 changed" in daemon.output(),
                       timeout=10)
        await self.assert_nothing_planned(daemon)

        daemon.kill(signal.SIGTERM)
        await deferToThread(daemon.proc.wait, 30)
        daemon.start()  # a new process: the pause is only in Redis
        await wait_answering([daemon], timeout=30)
        await wait_for(lambda: "full refresh:" in daemon.output(), timeout=10)
        await self.assert_nothing_planned(daemon)

        result = await run_worker(0, ["ticks"], url=self.url)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        self.assertEqual(read_redis_records(self.url), [])

        code, out, _ = await self.btu(daemon.config, "--json", "show-scheduled")
        self.assertEqual(code, 0)
        self.assertEqual([p["schedule"] for p in json.loads(out)["paused"]], ["tick"])
        code, out, _ = await self.btu(daemon.config, "history", "tick", "-n", "1")
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[1].split()[:2], ["-", PAUSED])

        resumed_at = time.time()
        code, out, _ = await self.btu(daemon.config, "resume", "tick")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("Resumed Task Schedule tick"), out)
        code, out, _ = await self.btu(daemon.config, "resume", "tick")
        self.assertEqual((code, out), (0, "Task Schedule tick is not paused; nothing to "
                                          "resume.\n"))
        await wait_for(lambda: self.redis.llen(QUEUE) >= 2, timeout=10)
        result = await run_worker(0, ["ticks"], url=self.url)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        records = read_redis_records(self.url)
        self.assertGreaterEqual(len(records), 2)
        # Planned from the resume on: none of the runs missed while paused.
        self.assertGreaterEqual(min(r["job"]["meta"]["scheduled_time"] for r in records),
                                int(resumed_at))
        outcomes = self.outcomes("tick")
        self.assertEqual(outcomes[outcomes.index(RESUMED):][:2], [RESUMED, PAUSED])
        self.assertEqual(outcomes[0], ENQUEUED)
        daemon.kill(signal.SIGTERM)
        await deferToThread(daemon.proc.wait, 30)
        self.assertNotIn("Traceback", daemon.output())


class TwoDaemonsPauseTests(FileDaemonCase):
    """Two daemons of one site on one Redis (high availability), one prefix."""

    async def test_a_pause_through_one_daemon_holds_for_the_other(self) -> None:
        """Paused through daemon 1's socket: daemon 2's full refresh and reload leave it
        unplanned too; resumed through daemon 2, both plan it again."""
        self.path.write_text(schedule("tick", "* * * * * * *", queue="ticks"))
        first = await self.start()
        service, fatal = make_service(dict(self.values(), socket_path=str(self.dir / "two.sock")))
        self.services.append(service)
        await service.startService()
        self.assertEqual(fatal, [])
        second = service
        await wait_for(lambda: "tick" in self.members(), timeout=10)
        reply = await deferToThread(request, first.config.socket_path, "pause_task_schedule",
                                    "tick")
        self.assertTrue(reply.startswith("Paused"), reply)
        self.redis.delete(QUEUE)
        await second.refresh.trigger()
        self.path.write_text(schedule("tick", "* * * * * * *", queue="ticks", timeout=30))
        self.assertIn("1 changed", await second.control.reload())
        await sleep(2.5)
        self.assertNotIn("tick", self.members())
        self.assertEqual(self.redis.llen(QUEUE), 0)
        reply = await deferToThread(request, second.config.socket_path, "resume_task_schedule",
                                    "tick")
        self.assertTrue(reply.startswith("Resumed"), reply)
        await wait_for(lambda: self.redis.llen(QUEUE) >= 1, timeout=10)


class MariaDBPauseTests(unittest.TestCase):
    """An in-process daemon on a fresh Frappe database."""

    timeout = 90

    async def setUp(self) -> None:
        self.dir = server_directory(self)
        server = await start_server(self, self.dir, "pause")
        self.redis = server.client()
        self.addCleanup(self.redis.close)
        self.db = TestDatabase(load_samples=False)
        self.addCleanup(self.db.drop)
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedule("TS-000123", "BTU-1", "0 13 * * *")
        service, fatal = make_service(config_values(
            self.db.name, rq_port=server.port, rq_database=0,
            socket_path=str(self.dir / "d.sock")))
        await service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(fatal, [])
        self.service = service
        await wait_for(lambda: self.planned())

    def planned(self) -> bool:
        return self.redis.hexists(MEMBER_INDEX, "TS-000123")

    async def ask(self, request_type: str) -> str:
        return await deferToThread(request, self.service.config.socket_path, request_type,
                                   "TS-000123")

    async def settled(self) -> None:
        """The FIFO drained and the planner idle (its batch written)."""
        await wait_for(lambda: len(self.service.fifo) == 0)
        await sleep(0.3)

    async def test_pause_holds_across_a_full_refresh_and_sighup(self) -> None:
        self.assertTrue((await self.ask("pause_task_schedule")).startswith("Paused"))
        self.assertFalse(self.planned())
        await self.service.refresh.trigger()
        await self.settled()
        self.assertFalse(self.planned())
        await self.service.sighup()
        await self.service.refresh.trigger()
        await self.settled()
        self.assertFalse(self.planned())
        self.assertTrue((await self.ask("resume_task_schedule")).startswith("Resumed"))
        await wait_for(self.planned, timeout=5)

    async def test_deleted_schedule_takes_its_history_with_it(self) -> None:
        """The BTU app cancels, then deletes: the history goes.  A schedule created
        later under the same name (its create request arrives before its row) starts
        with no history, and no pause."""
        self.patch(control_module, "GONE_CHECK_SECS", 0.5)
        key = Keys().history("TS-000123")
        self.redis.lpush(key, encode_run(1, "1970-01-01T00:00:01.000000Z", "J1", ENQUEUED))
        await self.ask("pause_task_schedule")
        self.assertIn("nothing to cancel", await self.ask("cancel_task_schedule"))
        self.db.execute("DELETE FROM `tabBTU Task Schedule` WHERE name = %s", ("TS-000123",))
        await wait_for(lambda: not self.redis.exists(key), timeout=5)
        self.assertFalse(self.redis.hexists(Keys().paused, "TS-000123"))

        # Gone without a cancel (deleted by SQL): the new schedule's create request
        # reads no row yet, which ends the old life all the same.
        self.redis.lpush(key, encode_run(1, "1970-01-01T00:00:01.000000Z", "J1", ENQUEUED))
        await self.ask("create_task_schedule")
        await wait_for(lambda: not self.redis.exists(key), timeout=5)
        self.db.add_schedule("TS-000123", "BTU-1", "0 14 * * *")
        await self.ask("create_task_schedule")
        await wait_for(self.planned, timeout=5)
        self.assertFalse(self.redis.exists(key))
        self.assertFalse(self.redis.hexists(Keys().paused, "TS-000123"))


class BenchPauseTests(unittest.TestCase):
    """One daemon for two sites of a bench, each with its own TS-000001 every second."""

    timeout = 120
    bench = test_sites.WholeBenchTests.bench
    btu = test_sites.WholeBenchTests.btu

    async def test_a_pause_holds_for_its_site_only(self) -> None:
        """``btu --site a.test pause TS-000001`` stops a.test's runs, in a.test's key
        prefix; b.test's schedule of the same name keeps running; resume starts it again."""
        setup = await self.bench()
        config, warnings = load_config(setup.config_path)
        fatal: list[str] = []
        service = SitesService(config, reactor, on_fatal=fatal.append, warnings=warnings)
        await service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        a, b = service.site("a.test"), service.site("b.test")
        for site in (a, b):
            await wait_for(lambda s=site: s.timer.stats.enqueued >= 1, timeout=20)
        site_a = ("--config", setup.config_path, "--site", "a.test")
        code, out, err = await self.btu(*site_a, "pause", "TS-000001")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("Paused Task Schedule TS-000001"), out)
        self.assertEqual(setup.redis.hkeys("btu_scheduler:a.test:paused"), [b"TS-000001"])
        self.assertFalse(setup.redis.exists("btu_scheduler:b.test:paused"))
        await sleep(1.5)  # a claim settled before the pause is counted by now
        held = a.timer.stats.enqueued
        running = b.timer.stats.enqueued
        await wait_for(lambda: b.timer.stats.enqueued >= running + 3, timeout=15)
        self.assertEqual(a.timer.stats.enqueued, held)
        self.assertFalse(setup.redis.hexists("btu_scheduler:a.test:schedule_members",
                                             "TS-000001"))
        code, out, _ = await self.btu(*site_a, "resume", "TS-000001")
        self.assertEqual(code, 0)
        await wait_for(lambda: a.timer.stats.enqueued > held, timeout=10)
        self.assertEqual(fatal, [])
