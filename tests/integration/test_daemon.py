"""The whole daemon against real MariaDB, Redis and rq workers: schedules in
the database become jobs on the right queues at their time, and a real worker
runs them."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.cli import main
from btu_twisted.store.schedule_store import LAST_ENQUEUED, SCHEDULE_SET
from tests.integration.daemon import make_service, run_worker, wait_for
from tests.integration.support import (
    REDIS_HOST,
    REDIS_PORT,
    TestDatabase,
    config_values,
    exclusive_redis_db,
    sync_redis,
    toml_text,
)

DB = 2


class DaemonTests(unittest.TestCase):
    async def setUp(self) -> None:
        # Another checkout testing at the same time would flush db 2 under us.
        await exclusive_redis_db(self, DB)
        self.db = TestDatabase(load_samples=False)
        self.redis = sync_redis(DB)
        self.redis.flushdb()
        self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"
        self.service = None

    async def tearDown(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()
        self.redis.flushdb()
        self.redis.close()
        self.db.drop()

    async def start(self, **overrides: object) -> None:
        values = config_values(self.db.name, redis_db=DB, **overrides)
        self.service, self.fatal = make_service(values)
        await self.service.startService()
        self.assertEqual(self.fatal, [])

    def jobs(self, queue: str = "default") -> list[dict[bytes, bytes]]:
        ids = self.redis.lrange(f"rq:queue:{queue}", 0, -1)
        return [self.redis.hgetall(b"rq:job:" + i) for i in ids]

    async def test_every_second_schedule_runs_on_the_right_queue(self) -> None:
        """A 7-field every-second schedule is enqueued each second on its
        queue with the task's timeout and meta, and a real worker runs it."""
        args = repr({"record_redis": self.url, "greeting": "hello"})
        self.db.add_task("BTU-1", "tests.jobfuncs.record", args, queue="long", max_duration=42)
        self.db.add_schedule("TS-1", "BTU-1", "* * * * * * *", queue="short",
                             overrides="{'greeting': 'hi'}")
        started = time.time()
        await self.start()
        await wait_for(lambda: len(self.jobs("short")) >= 2, timeout=10)
        jobs = self.jobs("short")
        self.assertEqual(jobs[0][b"origin"], b"short")
        self.assertEqual(jobs[0][b"timeout"], b"42")
        meta = pickle.loads(jobs[0][b"meta"])
        self.assertEqual(meta["task_schedule"], "TS-1")
        self.assertEqual(meta["task"], "BTU-1")
        self.assertGreater(meta["scheduled_time"], started - 1)
        times = [pickle.loads(j[b"meta"])["scheduled_time"] for j in jobs]
        self.assertEqual(times, sorted(set(times)), "each second once, in order")
        # The next run is planned again after each claim (a moment after it).
        members = await wait_for(lambda: self.redis.zrange(SCHEDULE_SET, 0, -1))
        self.assertIn(b"TS-1", members[0])
        await self.service.stopService()
        result = await run_worker(DB, ["short"])
        self.assertEqual(result.returncode, 0, result.stderr.decode()[-2000:])
        records = [json.loads(r) for r in self.redis.lrange("btu_test:records", 0, -1)]
        self.assertEqual(len(records), len(jobs))
        self.assertEqual(records[0]["kwargs"], {"greeting": "hi"})
        self.assertEqual(records[0]["job"]["origin"], "short")

    async def test_plans_enabled_and_ignores_disabled_and_broken(self) -> None:
        """Enabled schedules get one member each; disabled and broken ones get
        none and do not disturb the others."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedules([
            ("TS-OK", "BTU-1", "0 13 * * *", True, "default", None),
            ("TS-OFF", "BTU-1", "0 13 * * *", False, "default", None),
            ("TS-BAD", "BTU-1", "not a cron", True, "default", None),
            ("TS-NEVER", "BTU-1", "0 0 30 2 *", True, "default", None),
            ("TS-NULL", "BTU-1", None, True, "default", None),
        ])
        await self.start()
        members = await wait_for(lambda: self.redis.zrange(SCHEDULE_SET, 0, -1))
        self.assertEqual([m.split(b"|")[0] for m in members], [b"TS-OK"])
        when = int(members[0].split(b"|")[1])
        # Read in the site's cron_time_zone (the fixture's America/Los_Angeles).
        local = datetime.fromtimestamp(when, ZoneInfo("America/Los_Angeles"))
        self.assertEqual((local.hour, local.minute, local.second), (13, 0, 0))
        self.assertLess(when - time.time(), 86400)

    async def test_falls_back_to_time_zone_string(self) -> None:
        """Without a cron_time_zone row, time_zone_string is the zone."""
        self.db.set_zone(None)
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        await self.start(time_zone_string="Asia/Kolkata")
        members = await wait_for(lambda: self.redis.zrange(SCHEDULE_SET, 0, -1))
        local = datetime.fromtimestamp(int(members[0].split(b"|")[1]), ZoneInfo("Asia/Kolkata"))
        self.assertEqual((local.hour, local.minute), (13, 0))

    async def test_cron_edit_and_reload_leaves_one_member(self) -> None:
        """After a cron edit, create_task_schedule replaces the member."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        await self.start()
        first = await wait_for(lambda: self.redis.zrange(SCHEDULE_SET, 0, -1))
        self.db.execute("UPDATE `tabBTU Task Schedule` SET cron_string = '30 14 * * *'")
        self.assertTrue(self.service.request_planning("TS-1"))
        second = await wait_for(
            lambda: (m := self.redis.zrange(SCHEDULE_SET, 0, -1)) != first and m
        )
        self.assertEqual(len(second), 1)
        self.assertEqual(time.gmtime(int(second[0].split(b"|")[1])).tm_min, 30)

    async def test_disabled_by_due_time_is_dropped(self) -> None:
        """A schedule disabled before its run is due gets no job."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        await self.start()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 1)
        # Disabled in MariaDB, but the BTU app never told the daemon; its run
        # comes due a moment later.
        self.db.execute("UPDATE `tabBTU Task Schedule` SET enabled = 0")
        due = int(time.time()) + 1
        await self.service.store.plan(time.time(), {"TS-1": due})
        self.service.timer.planned(due)
        await wait_for(lambda: self.redis.hget(LAST_ENQUEUED, "TS-1") == str(due).encode())
        self.assertEqual(self.jobs(), [])
        self.assertEqual(self.redis.zcard(SCHEDULE_SET), 0)

    async def test_cancel_over_control(self) -> None:
        """cancel() removes exactly the named schedule's member."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedules([
            ("TS-1", "BTU-1", "0 13 * * *", True, "default", None),
            ("TS-10", "BTU-1", "0 13 * * *", True, "default", None),
        ])
        await self.start()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 2)
        self.assertTrue(await self.service.cancel("TS-1"))
        self.assertFalse(await self.service.cancel("TS-1"))
        self.assertEqual([m.split(b"|")[0] for m in self.redis.zrange(SCHEDULE_SET, 0, -1)],
                         [b"TS-10"])

    async def test_btu_reload_and_status_over_the_socket(self) -> None:
        """``btu reload NAME`` asks the running daemon, which looks the name up in
        MariaDB: an unknown name exits 1 (nothing planned), a known one exits 0.
        ``btu status`` counts the run planned hours ahead when asked, whatever the
        timer saw at its last look."""
        self.db.add_task("BTU-1", "tests.jobfuncs.record")
        self.db.add_schedules([("TS-1", "BTU-1", "0 13 * * *", True, "default", None)])
        values = config_values(self.db.name, redis_db=DB)
        self.service, self.fatal = make_service(values)
        await self.service.startService()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 1)
        config = self.mktemp()
        with open(config, "w") as stream:
            stream.write(toml_text(values))
        os.chmod(config, 0o600)

        def btu(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = main(["--config", config, *argv], stdout=out, stderr=err)
            return code, out.getvalue(), err.getvalue()

        code, out, err = await deferToThread(btu, "reload", "NOSUCH")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("no Task Schedule 'NOSUCH' in MariaDB", err)
        self.assertNotIn("NOSUCH", self.service.fifo)
        code, out, err = await deferToThread(btu, "reload", "TS-1")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("re-processing Task Schedule TS-1", out)
        self.service.timer.stats.members_seen = 0  # a look from before the planning
        code, out, err = await deferToThread(btu, "--json", "status")
        self.assertEqual((code, err), (0, ""))
        status = json.loads(out)
        self.assertEqual(status["members"], 1)
        self.assertTrue(status["next_due"]["member"].startswith("TS-1|"))
        self.assertEqual((status["lost_to_other_daemons"], status["cancelled_while_claiming"]),
                         (0, 0))

    async def test_unreachable_database_is_fatal(self) -> None:
        """Without startup_without_database_connections, an unreachable MariaDB
        is one clear fatal message."""
        values = config_values(self.db.name, redis_db=DB, mysql_port=1)
        self.service, fatal = make_service(values)
        await self.service.startService()
        self.assertEqual(len(fatal), 1)
        self.assertIn("cannot use MariaDB", fatal[0])
        await self.service.stopService()
