"""The store's scripts against the real Redis: one member per schedule,
exactly-once claims, pruning and exact-name cancel."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from btu_twisted.redis_gateway import RedisGateway
from btu_twisted.store import (
    CLAIMED,
    LAST_ENQUEUED,
    LOST,
    MEMBER_INDEX,
    SCHEDULE_SET,
    STALE,
    Claim,
    ScheduleStore,
)
from tests.integration.support import REDIS_HOST, REDIS_PORT, sync_redis

DB = 3


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sync = sync_redis(DB)
        self.sync.flushdb()
        self.gateway = RedisGateway(reactor, REDIS_HOST, REDIS_PORT, database=DB)
        self.gateway.start()
        self.store = ScheduleStore(self.gateway)

    async def tearDown(self) -> None:
        await self.gateway.stop()
        self.sync.flushdb()
        self.sync.close()

    def members(self) -> list[tuple[str, float]]:
        return [(m.decode(), s) for m, s in self.sync.zrange(SCHEDULE_SET, 0, -1, withscores=True)]

    async def test_plan_replaces_the_one_member(self) -> None:
        """Planning a schedule twice leaves only its newest member, scored by its time."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-10": 2100})
        await self.store.plan(1000, {"TS-1": 3000})
        self.assertEqual(self.members(), [("TS-10|2100", 2100.0), ("TS-1|3000", 3000.0)])

    async def test_plan_never_brings_back_an_enqueued_run(self) -> None:
        """A time at or before the last enqueued run is refused and reported."""
        self.sync.hset(LAST_ENQUEUED, "TS-1", 2000)
        rejected = await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000})
        self.assertEqual(rejected, {"TS-1": 2000})
        self.assertEqual(self.members(), [("TS-2|2000", 2000.0)])

    async def test_plan_keeps_a_member_that_is_already_due(self) -> None:
        """A due member belongs to the timer; replanning must not replace it."""
        await self.store.plan(1000, {"TS-1": 1500})
        await self.store.plan(1600, {"TS-1": 1800})
        self.assertEqual(self.members(), [("TS-1|1500", 1500.0)])

    async def test_unplan_removes_the_member(self) -> None:
        """A schedule in ``unplans`` loses its member and its index entry."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000})
        await self.store.plan(1000, {}, ["TS-1", "never-planned"])
        self.assertEqual(self.members(), [("TS-2|2000", 2000.0)])
        self.assertIsNone(self.sync.hget(MEMBER_INDEX, "TS-1"))

    async def test_claim_enqueues_once(self) -> None:
        """The first claim writes the job, pushes it and registers the queue;
        a second claim of the same member (another daemon) gets nothing."""
        await self.store.plan(1000, {"TS-1": 2000})
        claim = Claim(
            member="TS-1|2000", schedule="TS-1", when=2000, job_id="job-1",
            origin="default", fields={"status": "queued", "data": b"\x00\xff", "timeout": 600},
        )
        first = await self.store.claim([claim], "2026-01-01T00:00:00.000000Z")
        second = await self.store.claim([claim], "2026-01-01T00:00:00.000000Z")
        self.assertEqual((first, second), ([CLAIMED], [LOST]))
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"job-1"])
        self.assertEqual(self.sync.smembers("rq:queues"), {b"rq:queue:default"})
        job = self.sync.hgetall("rq:job:job-1")
        self.assertEqual(job[b"data"], b"\x00\xff")
        self.assertEqual(job[b"timeout"], b"600")
        self.assertEqual(job[b"enqueued_at"], b"2026-01-01T00:00:00.000000Z")
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-1"), b"2000")
        self.assertEqual(self.members(), [])

    async def test_claim_of_a_stale_member_enqueues_nothing(self) -> None:
        """A member for a time already enqueued is removed without a job."""
        self.sync.zadd(SCHEDULE_SET, {"TS-1|1500": 1500})
        self.sync.hset(LAST_ENQUEUED, "TS-1", 2000)
        claim = Claim(member="TS-1|1500", schedule="TS-1", when=1500, job_id="j",
                      origin="default", fields={"status": "queued"})
        self.assertEqual(await self.store.claim([claim], "x"), [STALE])
        self.assertEqual(self.sync.llen("rq:queue:default"), 0)

    async def test_claim_without_job_skips_the_run(self) -> None:
        """A claim with no job removes the member and records the run as done."""
        await self.store.plan(1000, {"TS-1": 2000})
        skip = Claim(member="TS-1|2000", schedule="TS-1", when=2000)
        result = await self.store.claim([skip], "x")
        self.assertEqual(result, [CLAIMED])
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-1"), b"2000")
        self.assertEqual(self.sync.keys("rq:*"), [])

    async def test_prune_removes_disabled_stale_and_garbage(self) -> None:
        """Members of schedules not enabled, stale duplicates (a Rust daemon's
        cron edits) and members without a name all go; the owned member stays."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000})
        self.sync.zadd(SCHEDULE_SET, {"TS-1|1900": 1900, "garbage": 5, "TS-3|2500": 2500})
        removed = await self.store.prune(["TS-1", "TS-3"])
        self.assertEqual(removed, ["TS-1", "TS-2", "TS-3"])
        self.assertEqual(self.members(), [("TS-1|2000", 2000.0)])

    async def test_cancel_matches_the_exact_name(self) -> None:
        """Cancelling TS-1 leaves TS-10 alone; names containing '|' work."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-10": 2000, "a|b": 2000})
        self.sync.zadd(SCHEDULE_SET, {"TS-1|1900": 1900})
        self.assertTrue(await self.store.cancel("TS-1"))
        self.assertFalse(await self.store.cancel("TS-1"))
        self.assertTrue(await self.store.cancel("a|b"))
        self.assertEqual(self.members(), [("TS-10|2000", 2000.0)])

    async def test_earliest_and_count(self) -> None:
        """earliest() lists members by time with integer scores."""
        await self.store.plan(1000, {"B": 3000, "A": 2000, "123": 2500})
        self.assertEqual(await self.store.earliest(2), [("A|2000", 2000), ("123|2500", 2500)])
        self.assertEqual(await self.store.count(), 3)
