"""What a real Frappe site does to the daemon (COMPAT.md 8): the BTU app sends
its socket request *before* it commits, edits arrive with no request at all,
Redis comes back empty, and the job id goes back to the schedule row.

Each test drives the real MariaDB the way Frappe does (the row changed in an
open transaction, the request sent with the BTU client's byte pattern, the
commit half a second after the reply) against the whole daemon in this
reactor, on real Redis.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.store.schedule_store import LAST_ENQUEUED, MEMBER_INDEX, SCHEDULE_SET
from tests.integration.daemon import make_service, run_worker, wait_for
from tests.integration.support import (
    REDIS_HOST,
    REDIS_PORT,
    TestDatabase,
    admin_connection,
    clean_redis,
    config_values,
    exclusive_redis_db,
)
from tests.integration.test_faults import sleep

DB = 8


def btu_request(path: str, request_type: str, content: str | None) -> str | None:
    """BTU's SchedulerAPI client (COMPAT.md 1): one send, no newline, sleep 0.5 s, one recv."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.send(json.dumps({"request_type": request_type, "request_content": content}).encode())
        time.sleep(0.5)
        reply = s.recv(2048)
    return reply.decode() if reply else None


class OpenTransaction:
    """A Frappe request's transaction: writes stay invisible until ``commit``."""

    def __init__(self, database: str) -> None:
        self.conn = admin_connection(database)
        self.conn.autocommit(False)
        self.conn.begin()

    def execute(self, sql: str, params: Any = None) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)

    def commit(self) -> float:
        self.conn.commit()
        self.conn.close()
        return time.time()


def now6() -> datetime:
    """What Frappe writes to ``modified``: the saving process's clock, microseconds."""
    return datetime.now()


class RealSiteCase(unittest.TestCase):
    async def setUp(self) -> None:
        await exclusive_redis_db(self, DB)
        self.db = TestDatabase(load_samples=False)
        self.addCleanup(self.db.drop)
        self.db.set_zone("UTC")
        self.redis = clean_redis(self, DB)
        self.db.add_task("BTU-1", "tests.jobfuncs.record",
                         repr({"record_redis": f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}"}))
        self.service: Any = None

    async def tearDown(self) -> None:
        if self.service is not None and self.service.running:
            await self.service.stopService()

    async def start(self, **overrides: Any) -> None:
        values = config_values(self.db.name, redis_db=DB, **overrides)
        self.service, fatal = make_service(values)
        await self.service.startService()
        self.assertEqual(fatal, [])
        await wait_for(lambda: self.service.refresh.last)

    def member(self, name: str) -> int | None:
        value = self.redis.hget(MEMBER_INDEX, name)
        return None if value is None else int(value.rsplit(b"|", 1)[1])

    def job_ids(self, queue: str = "default") -> list[bytes]:
        return self.redis.lrange(f"rq:queue:{queue}", 0, -1)

    async def btu_save(self, sql: str, params: Any, name: str) -> tuple[str | None, float]:
        """Frappe's save of a schedule with BTU's before_save request.

        Returns the daemon's reply and the time of the commit."""
        txn = OpenTransaction(self.db.name)
        txn.execute(sql, params)
        reply = await deferToThread(
            btu_request, self.service.config.socket_path, "create_task_schedule", name
        )
        await sleep(0.5)  # the rest of Frappe's save before the commit
        return reply, txn.commit()


class RequestBeforeCommitTests(RealSiteCase):
    async def test_new_schedule_runs_within_seconds_of_its_commit(self) -> None:
        """A schedule inserted in an open transaction, announced before the
        commit: its first every-second run is enqueued within 5 s of the
        commit, and a real worker runs it."""
        await self.start()
        reply, committed = await self.btu_save(
            "INSERT INTO `tabBTU Task Schedule` (name, task, cron_string, enabled, queue_name,"
            " modified) VALUES (%s, 'BTU-1', '* * * * * * *', 1, 'default', %s)",
            ("TS-NEW", now6()), "TS-NEW",
        )
        self.assertIn("TS-NEW", reply or "")
        await wait_for(lambda: self.job_ids(), timeout=5.0)
        delay = time.time() - committed
        self.assertLess(delay, 5.0)
        self.service.log.info("commit to first job: {delay:.2f} s", delay=delay)
        await self.service.stopService()
        result = await run_worker(DB, ["default"])
        self.assertEqual(result.returncode, 0, result.stderr.decode()[-2000:])
        self.assertGreaterEqual(self.redis.llen("btu_test:records"), 1)

    async def test_just_enabled_schedule_is_planned_after_the_commit(self) -> None:
        """Enabled in an open transaction: the request reads it as disabled,
        the plannings after the commit plan it."""
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *", enabled=False)
        await self.start()
        self.assertIsNone(self.member("TS-1"))
        _, committed = await self.btu_save(
            "UPDATE `tabBTU Task Schedule` SET enabled = 1, modified = %s WHERE name = %s",
            (now6(), "TS-1"), "TS-1",
        )
        await wait_for(lambda: self.member("TS-1"), timeout=5.0)
        self.assertLess(time.time() - committed, 5.0)

    async def test_edited_cron_never_enqueues_the_old_run(self) -> None:
        """A cron edited about 4 s before its old run was due (3 s is the
        promise; 1 s of slack for a loaded machine): the old run is not
        enqueued, the new cron is planned."""
        due = int(time.time()) + 12
        old = time.strftime("%S %M %H * * * *", time.gmtime(due))
        new = time.strftime("%S %M %H * * * *", time.gmtime(due + 3600))
        self.db.add_schedule("TS-1", "BTU-1", old)
        await self.start()
        await wait_for(lambda: self.member("TS-1") == due)
        # btu_save takes ~1 s (BTU's 0.5 s wait, then the rest of the save):
        # the commit lands ~4 s before due.
        await sleep(max(0.0, due - 4.0 - 1.0 - time.time()))
        _, committed = await self.btu_save(
            "UPDATE `tabBTU Task Schedule` SET cron_string = %s, modified = %s WHERE name = %s",
            (new, now6(), "TS-1"), "TS-1",
        )
        self.assertLessEqual(committed, due - 3.0, "the test itself ran late")
        await sleep(due + 3 - time.time())
        self.assertEqual(self.job_ids(), [])
        self.assertEqual(self.member("TS-1"), due + 3600)


class ChangeFeedTests(RealSiteCase):
    async def test_sql_edit_without_request_is_planned(self) -> None:
        """An edit by SQL (or frappe.db.set_value) that bumps modified, with no
        socket request, is planned within 5 s."""
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        await self.start()
        await wait_for(lambda: self.member("TS-1"))
        edited = time.time()
        self.db.execute(
            "UPDATE `tabBTU Task Schedule` SET cron_string = '30 14 * * *', modified = %s",
            (now6(),),
        )
        await wait_for(lambda: time.gmtime(self.member("TS-1") or 0).tm_min == 30, timeout=5.0)
        self.assertLess(time.time() - edited, 5.0)

    async def test_cancelled_task_loses_its_runs(self) -> None:
        """Cancelling the BTU Task (docstatus 2) removes its schedules' runs
        within 5 s; a draft task's schedule stays planned."""
        self.db.add_task("BTU-DRAFT", "tests.jobfuncs.record")
        self.db.execute("UPDATE `tabBTU Task` SET docstatus = 0 WHERE name = 'BTU-DRAFT'")
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        self.db.add_schedule("TS-2", "BTU-DRAFT", "0 13 * * *")
        await self.start()
        await wait_for(lambda: self.member("TS-1") and self.member("TS-2"))
        self.db.execute(
            "UPDATE `tabBTU Task` SET docstatus = 2, modified = %s WHERE name = 'BTU-1'",
            (now6(),),
        )
        await wait_for(lambda: self.member("TS-1") is None, timeout=5.0)
        self.assertIsNotNone(self.member("TS-2"))

    async def test_zone_change_replans_everything(self) -> None:
        """Changing BTU Configuration's cron_time_zone plans every schedule
        again, in the new zone."""
        self.db.add_schedule("TS-1", "BTU-1", "0 13 * * *")
        await self.start()
        before = await wait_for(lambda: self.member("TS-1"))
        self.db.set_zone("Asia/Kolkata")
        after = await wait_for(lambda: (m := self.member("TS-1")) != before and m, timeout=5.0)
        self.assertEqual(time.strftime("%M", time.gmtime(after)), "30")  # 13:00 IST = 07:30Z


class RedisLostKeysTests(RealSiteCase):
    async def test_flushdb_is_replanned_within_ten_seconds(self) -> None:
        """FLUSHDB (a Redis restart without persistence looks the same):
        every enabled schedule is planned again within 10 s."""
        self.db.add_schedules(
            [(f"TS-{i:03d}", "BTU-1", "0 13 * * *", True, "default", None) for i in range(25)]
        )
        await self.start()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 25)
        self.redis.flushdb()
        flushed = time.time()
        await wait_for(lambda: self.redis.zcard(SCHEDULE_SET) == 25, timeout=10.0)
        delay = time.time() - flushed
        self.assertLess(delay, 10.0)
        self.service.log.info("flush to all planned again: {delay:.2f} s", delay=delay)


class JobIdTests(RealSiteCase):
    async def test_job_id_written_back_without_touching_modified(self) -> None:
        """After each enqueue the row's redis_job_id names the job just
        enqueued (what BTU's Last Execution Results reads); modified stays."""
        stamp = datetime(2024, 5, 1, 12, 0, 0, 123456)
        self.db.add_schedule("TS-1", "BTU-1", "* * * * * * *")
        self.db.execute("UPDATE `tabBTU Task Schedule` SET modified = %s", (stamp,))
        await self.start()
        await wait_for(lambda: len(self.job_ids()) >= 2, timeout=10.0)

        def written() -> bool:
            value = self.db.execute("SELECT redis_job_id FROM `tabBTU Task Schedule`")[0][0]
            return bool(value) and value.encode() in self.job_ids()

        await wait_for(written, timeout=5.0)
        (modified,) = self.db.execute("SELECT modified FROM `tabBTU Task Schedule`")[0]
        self.assertEqual(modified, stamp)
        self.assertGreater(self.redis.hlen(LAST_ENQUEUED), 0)

    async def test_locked_row_does_not_hold_up_runs(self) -> None:
        """A schedule row locked by an open transaction (the BTU app editing
        it) delays only the job-id write: runs keep being enqueued, and the
        id is written once the lock is gone."""
        self.db.add_schedule("TS-1", "BTU-1", "* * * * * * *")
        await self.start()
        await wait_for(lambda: self.job_ids(), timeout=10.0)
        locker = admin_connection(self.db.name)
        locker.autocommit(False)
        with locker.cursor() as cur:
            cur.execute("SELECT * FROM `tabBTU Task Schedule` FOR UPDATE")
        try:
            count = len(self.job_ids())
            await wait_for(lambda: len(self.job_ids()) >= count + 4, timeout=10.0)
        finally:
            locker.rollback()
            locker.close()
        latest = self.job_ids()[-1]

        def written_after_lock() -> bool:
            value = self.db.execute("SELECT redis_job_id FROM `tabBTU Task Schedule`")[0][0]
            ids = self.job_ids()
            return (value or "").encode() in ids[ids.index(latest):]

        await wait_for(written_after_lock, timeout=10.0)
        self.assertTrue(self.service.db.health.up)


