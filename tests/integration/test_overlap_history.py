"""Overlap control and run history on a real daemon, Redis and rq worker.

File schedules (no MariaDB) keep these tests small; the same claim script
serves MariaDB schedules, whose ``overlap`` comes from the config key (unit
tests in tests/test_overlap_history.py).  Each test runs its own redis-server.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.threads import deferToThread

from btu_twisted.cli import main as btu
from btu_twisted.store.health_record import decode
from btu_twisted.store.history import ENQUEUED, SKIPPED_MISFIRE, SKIPPED_OVERLAP, parse_run
from btu_twisted.store.keys import LAST_ENQUEUED, MEMBER_INDEX, SCHEDULE_SET, Keys
from tests.integration.daemon import run_worker, wait_for
from tests.integration.support import write_config
from tests.integration.test_file_schedules import FileDaemonCase, schedule


class OverlapHistoryTests(FileDaemonCase):
    async def start(self, **extra: Any) -> Any:
        """The daemon, and its config written where ``btu --config`` reads it."""
        write_config(self.dir / "btu.toml", self.values(**extra))
        return await super().start(**extra)

    def runs(self, name: str) -> list[Any]:
        return [parse_run(raw) for raw in self.redis.lrange(Keys().history(name), 0, -1)]

    def outcomes(self, name: str) -> list[str]:
        return [run.outcome for run in self.runs(name)]

    async def btu_history(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        argv = ["--config", str(self.dir / "btu.toml"), "history", *args]
        code = await deferToThread(btu, argv, out, err)
        return code, out.getvalue(), err.getvalue()

    async def test_overlap_skip_holds_runs_until_the_job_has_run(self) -> None:
        """Every second, overlap = "skip": while the first job waits on its queue,
        the next runs are recorded as skipped_overlap and no second job is queued;
        once a real worker has run it, the next run is enqueued again.  ``btu
        history --json`` shows it all, newest first, with the job's status."""
        self.path.write_text(schedule("slow", "* * * * * * *", overlap="skip", queue="slow",
                                      kwargs={"record_redis": self.url}))
        await self.start()
        await wait_for(lambda: self.outcomes("slow").count(SKIPPED_OVERLAP) >= 2, timeout=10)
        self.assertEqual(self.redis.llen("rq:queue:slow"), 1)
        self.assertEqual(self.outcomes("slow")[-1], ENQUEUED)
        first_job = self.runs("slow")[-1].job_id

        result = await run_worker(0, ["slow"], url=self.url)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        await wait_for(lambda: self.outcomes("slow")[0] == ENQUEUED, timeout=5)
        self.assertEqual(self.redis.llen("rq:queue:slow"), 1)

        code, out, err = await self.btu_history("slow", "--json")
        self.assertEqual((code, err), (0, ""))
        shown = json.loads(out)
        self.assertEqual(shown[0]["outcome"], ENQUEUED)
        self.assertEqual(shown[0]["status"], "queued")
        self.assertIsNotNone(shown[0]["enqueued_at"])
        skipped = [run for run in shown if run["outcome"] == SKIPPED_OVERLAP]
        self.assertGreaterEqual(len(skipped), 2)
        self.assertTrue(all(run["job_id"] is None and run["enqueued_at"] is None
                            for run in skipped))
        oldest = shown[-1]
        self.assertEqual((oldest["job_id"], oldest["status"]), (first_job, "finished"))
        # How it ended: seconds on the queue (the worker came later) and running.
        self.assertGreater(oldest["queue_secs"], 0)
        self.assertGreaterEqual(oldest["run_secs"], 0)
        self.assertIsNotNone(oldest["ended_at"])
        self.assertIsNone(shown[0]["run_secs"])
        scheduled = [run["scheduled"] for run in shown]
        self.assertEqual(scheduled, sorted(scheduled, reverse=True))
        self.assertEqual(len(scheduled), len(set(scheduled)))

        code, out, _ = await self.btu_history("slow", "-n", "2")
        self.assertEqual(code, 0)
        self.assertEqual(len(out.strip().splitlines()), 3)  # header and two runs
        code, _, err = await self.btu_history("nothing-here")
        self.assertEqual(code, 1)
        self.assertIn("no run history for schedule 'nothing-here'", err)

    async def test_misfire_grace_skips_a_missed_file_run_and_records_it(self) -> None:
        """A file schedule's run missed while the daemon was down (its member
        left a minute or two in the past) is skipped under misfire_grace_secs, recorded as
        skipped_misfire, and the schedule planned for its next run."""
        self.path.write_text(schedule("minutely", "* * * * *",
                                      kwargs={"record_redis": self.url}))
        now = int(self.redis.time()[0])
        missed = (now // 60 - 1) * 60  # a minute its cron produces, 60-119 s ago
        self.redis.zadd(SCHEDULE_SET, {f"minutely|{missed}": missed})
        self.redis.hset(MEMBER_INDEX, "minutely", f"minutely|{missed}")
        await self.start(misfire_grace_secs=5)
        await wait_for(lambda: self.runs("minutely"), timeout=10)
        # A minute boundary may pass during the test: later runs come first.
        *later, oldest = self.runs("minutely")
        self.assertEqual((oldest.scheduled, oldest.outcome, oldest.job_id),
                         (missed, SKIPPED_MISFIRE, None))
        self.assertTrue(all(run.scheduled > missed for run in later))
        self.assertGreaterEqual(int(self.redis.hget(LAST_ENQUEUED, "minutely")), missed)
        # The index names the claimed member until the replan replaces it.
        await wait_for(lambda: int((self.redis.hget(MEMBER_INDEX, "minutely") or b"|0")
                                   .rpartition(b"|")[2]) > now, timeout=5)
        member = self.redis.hget(MEMBER_INDEX, "minutely").decode()
        self.assertIn(member.encode(), self.redis.zrange(SCHEDULE_SET, 0, -1))
        # Schedule health counts the skipped run as missed (health_record.py).
        await wait_for(lambda: self.redis.hget(Keys().health, "minutely"), timeout=10)
        record = decode(self.redis.hget(Keys().health, "minutely"))
        self.assertIsNotNone(record)
        self.assertIn(missed, record.missed_times)  # type: ignore[union-attr]

    async def test_file_schedules_planned_again_after_redis_loses_its_keys(self) -> None:
        """FLUSHDB (a Redis restart without persistence): every enabled file
        schedule is planned again within 10 s, the disabled one is not."""
        self.path.write_text(schedule("a", "0 0 1 1 *") + schedule("b", "30 4 * * 1")
                             + schedule("off", "* * * * *", enabled=False))
        await self.start()
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == 2, timeout=10)
        before = self.redis.hgetall(MEMBER_INDEX)
        self.redis.flushdb()
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == 2, timeout=10)
        self.assertEqual(self.redis.hgetall(MEMBER_INDEX), before)
        self.assertEqual(self.redis.zcard(SCHEDULE_SET), 2)
