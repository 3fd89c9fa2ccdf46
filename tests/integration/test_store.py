"""The store's scripts against the real Redis: one member per schedule,
exactly-once claims, pruning and exact-name cancel."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import redis
import txredisapi
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from btu_twisted.store import schedule_store as store_module
from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.history import (
    ENQUEUED,
    FOLD_TEXTS,
    SKIPPED_MISFIRE,
    SKIPPED_OVERLAP,
    Run,
    encode_run,
    parse_run,
)
from btu_twisted.store.keys import Keys
from btu_twisted.store.schedule_store import (
    BLOCKED,
    CLAIMED,
    LAST_ENQUEUED,
    LOST,
    MEMBER_INDEX,
    OVERLAPPED,
    RECENT_SECS,
    SCHEDULE_SET,
    STALE,
    WITHDRAWN,
    Claim,
    ScheduleStore,
)
from tests.fakes import FakeStore
from tests.integration.support import (
    REDIS_HOST,
    REDIS_PORT,
    exclusive_redis_db,
    sync_redis,
)

DB = 3


# The PRUNE script before it went page-wise: the reference the paged prune
# must agree with.
OLD_PRUNE = """
local zset, idx = KEYS[1], KEYS[2]
local keep = {}
for i = 1, #ARGV do keep[ARGV[i]] = true end
local removed = {}
for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
  local name = string.match(m, '^(.*)|[^|]*$')
  local owned = name and redis.call('HGET', idx, name)
  if not name or not keep[name] or owned ~= m then
    redis.call('ZREM', zset, m)
    if name and owned == m then redis.call('HDEL', idx, name) end
    if name then removed[#removed + 1] = name end
  end
end
for _, name in ipairs(redis.call('HKEYS', idx)) do
  if not keep[name] then redis.call('HDEL', idx, name) end
end
return removed
"""


def job_claim(name: str, when: int, job_id: str, origin: str = "default") -> Claim:
    return Claim(member=f"{name}|{when}", schedule=name, when=when, job_id=job_id,
                 origin=origin, fields={"status": "queued", "origin": origin})


HISTORY = Keys().history("")
LAST_JOB = Keys().last_job


class StoreTests(unittest.TestCase):
    async def setUp(self) -> None:
        await exclusive_redis_db(self, DB)
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

    async def test_a_big_plan_goes_in_small_script_calls(self) -> None:
        """450 plans and 30 unplans go to Redis as three calls of at most
        PLAN_CHUNK schedules; rejections from every call come back."""
        await self.store.plan(1000, {f"OLD-{i}": 2000 for i in range(30)})
        self.sync.hset(LAST_ENQUEUED, mapping={"TS-7": 5000, "TS-444": 5000})
        sizes: list[int] = []
        real_eval = self.store._eval

        async def counting(script: str, keys: Any, args: Any) -> Any:
            sizes.append(int(args[1]) + len(args) - 2 - 2 * int(args[1]))
            return await real_eval(script, keys, args)

        self.store._eval = counting  # type: ignore[method-assign]
        rejected = await self.store.plan(
            1000, {f"TS-{i}": 3000 + i for i in range(450)}, [f"OLD-{i}" for i in range(30)])
        self.assertEqual(sizes, [200, 200, 80])
        self.assertEqual(rejected, {"TS-7": 5000, "TS-444": 5000})
        self.assertEqual(self.sync.zcard(SCHEDULE_SET), 448)
        self.assertEqual(self.sync.hlen(MEMBER_INDEX), 448)

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

    async def test_claims_write_the_run_history_trimmed(self) -> None:
        """Each claim settled by us adds one entry, in the same script (to the
        inbox, filed by fold_history), newest first: enqueued ones with their
        job id, jobless ones with the outcome the timer gave; the list keeps
        history_length entries."""
        store = ScheduleStore(self.gateway, history_length=3)
        for when in (2000, 2060, 2120, 2180):
            await store.plan(1000, {"TS-1": when})
            claim = job_claim("TS-1", when, f"job-{when}")
            if when == 2120:
                claim = Claim(member=f"TS-1|{when}", schedule="TS-1", when=when,
                              outcome=SKIPPED_MISFIRE)
            self.assertEqual(await store.claim([claim], f"at-{when}"), [CLAIMED])
        lost = await store.claim([job_claim("TS-1", 2180, "again")], "late")
        self.assertEqual(lost, [LOST])  # not settled by us: no entry
        self.assertEqual(await store.fold_history(), 1)
        self.assertFalse(self.sync.exists(Keys().history_inbox))
        runs = [parse_run(raw) for raw in self.sync.lrange(HISTORY + "TS-1", 0, -1)]
        self.assertEqual(runs, [
            Run(2180, "at-2180", "job-2180", ENQUEUED),
            Run(2120, "at-2120", None, SKIPPED_MISFIRE),
            Run(2060, "at-2060", "job-2060", ENQUEUED),
        ])
        off = ScheduleStore(self.gateway, history_length=0)
        await off.plan(1000, {"TS-2": 2000})
        await off.claim([job_claim("TS-2", 2000, "j2")], "x")
        self.assertFalse(self.sync.exists(Keys().history_inbox))
        await off.fold_history()
        self.assertFalse(self.sync.exists(HISTORY + "TS-2"))

    async def test_overlap_skip_holds_a_run_while_the_previous_job_is_busy(self) -> None:
        """With overlap, a run whose previous job is still queued or started is
        settled without a job (result OVERLAPPED, recorded as skipped_overlap);
        once that job has finished, the next run is enqueued.  Without overlap
        nothing is checked."""
        async def claim(when: int, job_id: str, overlap: bool = True) -> int:
            await self.store.plan(1000, {"TS-1": when})
            c = Claim(member=f"TS-1|{when}", schedule="TS-1", when=when, job_id=job_id,
                      origin="default", fields={"status": "queued"}, overlap=overlap)
            [result] = await self.store.claim([c], f"at-{when}")
            return result

        self.assertEqual(await claim(2000, "first"), CLAIMED)
        self.assertEqual(await claim(2060, "second"), OVERLAPPED)
        self.assertFalse(self.sync.exists("rq:job:second"))
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"first"])
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-1"), b"2060")
        self.assertEqual(self.members(), [])
        self.sync.hset("rq:job:first", "status", "started")
        self.assertEqual(await claim(2120, "third"), OVERLAPPED)
        self.sync.hset("rq:job:first", "status", "finished")
        self.assertEqual(await claim(2180, "fourth"), CLAIMED)
        self.assertEqual(await claim(2240, "fifth", overlap=False), CLAIMED)
        await self.store.fold_history()
        outcomes = [parse_run(raw).outcome  # type: ignore[union-attr]
                    for raw in self.sync.lrange(HISTORY + "TS-1", 0, -1)]
        self.assertEqual(outcomes, [ENQUEUED, ENQUEUED, SKIPPED_OVERLAP, SKIPPED_OVERLAP,
                                    ENQUEUED])
        # Two runs of one schedule in one batch: the second sees the first's job.
        await self.store.plan(1000, {"TS-2": 3000})
        self.sync.zadd(SCHEDULE_SET, {"TS-2|3060": 3060})
        both = [Claim(member=f"TS-2|{w}", schedule="TS-2", when=w, job_id=f"b{w}",
                      origin="default", fields={"status": "queued"}, overlap=True)
                for w in (3000, 3060)]
        self.assertEqual(await self.store.claim(both, "x"), [CLAIMED, OVERLAPPED])

    async def test_a_broken_history_key_loses_its_entry_not_the_claim(self) -> None:
        """A history key holding another type (someone's SET) does not block
        or undo the claim: the job is enqueued, that entry is lost when filed,
        the other schedules' entries are filed."""
        self.sync.set(HISTORY + "TS-1", "not a list")
        await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000})
        claims = [job_claim("TS-1", 2000, "j"), job_claim("TS-2", 2000, "k")]
        self.assertEqual(await self.store.claim(claims, "x"), [CLAIMED, CLAIMED])
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"j", b"k"])
        await self.store.fold_history()
        self.assertEqual(self.sync.get(HISTORY + "TS-1"), b"not a list")
        self.assertEqual(self.sync.llen(HISTORY + "TS-2"), 1)

    async def test_a_broken_inbox_loses_entries_not_claims(self) -> None:
        """An inbox of the wrong type loses the call's entries, never its
        claims; an inbox text that does not unpack is dropped when filed, the
        texts after it are filed."""
        inbox = Keys().history_inbox
        self.sync.set(inbox, "not a list")
        await self.store.plan(1000, {"TS-1": 2000})
        self.assertEqual(await self.store.claim([job_claim("TS-1", 2000, "j")], "x"), [CLAIMED])
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"j"])
        self.assertEqual(await self.store.fold_history(), 1)
        self.assertEqual(self.sync.get(inbox), b"not a list")
        self.sync.delete(inbox)
        self.sync.rpush(inbox, b"\xc1 not msgpack")
        await self.store.plan(1000, {"TS-1": 2060})
        self.assertEqual(await self.store.claim([job_claim("TS-1", 2060, "j2")], "y"), [CLAIMED])
        await self.store.fold_history()
        self.assertFalse(self.sync.exists(inbox))
        runs = [parse_run(raw) for raw in self.sync.lrange(HISTORY + "TS-1", 0, -1)]
        self.assertEqual(runs, [Run(2060, "y", "j2", ENQUEUED)])

    async def test_an_inbox_text_of_the_earlier_layout_is_filed_too(self) -> None:
        """A daemon before 2026-11-29 packed name, entry text pairs; one
        upgraded while its inbox waits loses none of them."""
        inbox = Keys().history_inbox
        old = Run(1940, "w", "j0", ENQUEUED)
        self.sync.eval("return redis.call('RPUSH', KEYS[1], cmsgpack.pack({'TS-1', ARGV[1]}))",
                       1, inbox, encode_run(old.scheduled, old.decided_at, old.job_id, old.outcome))
        await self.store.plan(1000, {"TS-1": 2000})
        self.assertEqual(await self.store.claim([job_claim("TS-1", 2000, "j1")], "x"), [CLAIMED])
        self.assertEqual(await self.store.fold_history(), 1)
        runs = [parse_run(raw) for raw in self.sync.lrange(HISTORY + "TS-1", 0, -1)]
        self.assertEqual(runs, [Run(2000, "x", "j1", ENQUEUED), old])

    async def test_filing_goes_a_few_calls_at_a_time_oldest_first(self) -> None:
        """Many claim calls' entries are filed FOLD_TEXTS texts per script call
        (no call blocks Redis for long), oldest first, so each list ends newest
        first and trimmed."""
        store = ScheduleStore(self.gateway, history_length=5)
        for k in range(10):
            when = 2000 + 60 * k
            await store.plan(1000, {"TS-1": when, "TS-2": when})
            got = await store.claim(
                [job_claim("TS-1", when, f"a{k}"), job_claim("TS-2", when, f"b{k}")], f"t{k}")
            self.assertEqual(got, [CLAIMED, CLAIMED])
        self.assertEqual(self.sync.llen(Keys().history_inbox), 10)
        self.assertEqual(await store.fold_history(), -(-10 // FOLD_TEXTS))
        for name, letter in (("TS-1", "a"), ("TS-2", "b")):
            runs = [parse_run(raw) for raw in self.sync.lrange(HISTORY + name, 0, -1)]
            self.assertEqual([r.job_id for r in runs], [f"{letter}{k}" for k in (9, 8, 7, 6, 5)])

    async def test_prune_forgets_history_and_last_job_of_deleted_schedules(self) -> None:
        """A deleted schedule's run history and last job go with its last run."""
        now = int(self.sync.time()[0])
        old = now - 2 * RECENT_SECS
        for name in ("GONE", "KEPT"):
            self.sync.hset(LAST_ENQUEUED, name, old)
            self.sync.hset(LAST_JOB, name, "j")
            self.sync.lpush(HISTORY + name, encode_run(old, "x", "j", ENQUEUED))
        await self.store.prune([], existing=["KEPT"])
        self.assertEqual(self.sync.hkeys(LAST_JOB), [b"KEPT"])
        self.assertFalse(self.sync.exists(HISTORY + "GONE"))
        self.assertTrue(self.sync.exists(HISTORY + "KEPT"))

    async def test_prune_removes_disabled_stale_and_garbage(self) -> None:
        """Members of schedules not enabled, stale duplicates (a Rust daemon's
        cron edits) and members without a name all go; the owned member stays."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000})
        self.sync.zadd(SCHEDULE_SET, {"TS-1|1900": 1900, "garbage": 5, "TS-3|2500": 2500})
        removed = await self.store.prune(["TS-1", "TS-3"])
        self.assertEqual(removed, ["TS-1", "TS-2", "TS-3"])
        self.assertEqual(self.members(), [("TS-1|2000", 2000.0)])

    async def test_plan_with_an_unreadable_last_run_plans_the_others(self) -> None:
        """A garbage last run does not stop a plan batch (the claim reports it);
        a broken daemon key fails the batch before any write."""
        self.sync.hset(LAST_ENQUEUED, "A", "garbage")
        await self.store.plan(1000, {"A": 2000, "B": 2000})
        self.assertEqual(self.members(), [("A|2000", 2000.0), ("B|2000", 2000.0)])
        self.sync.delete(MEMBER_INDEX)
        self.sync.set(MEMBER_INDEX, "x")
        with self.assertRaises(txredisapi.ResponseError):
            await self.store.plan(1000, {"C": 2000})
        self.assertEqual(len(self.members()), 2)

    async def test_prune_forgets_last_runs_of_deleted_schedules(self) -> None:
        """Given every existing name, prune drops the last runs of schedules
        that no longer exist (long ago or far ahead), keeps those of enabled
        and disabled ones, and keeps a recent one: its schedule may have been
        created after the caller's SQL read."""
        now = int(self.sync.time()[0])
        old, recent = now - 2 * RECENT_SECS, now - 60
        self.sync.hset(LAST_ENQUEUED, mapping={
            "ON": old, "OFF": old, "GONE": old, "AHEAD": now + 2 * RECENT_SECS,
            "BAD": "x", "NEW": recent,
        })
        await self.store.prune(["ON"])  # no existing names: every last run kept
        self.assertEqual(len(self.sync.hkeys(LAST_ENQUEUED)), 6)
        await self.store.prune(["ON"], existing=["ON", "OFF"])
        self.assertEqual(sorted(self.sync.hkeys(LAST_ENQUEUED)), [b"NEW", b"OFF", b"ON"])

    async def test_last_runs_forgotten_page_by_page(self) -> None:
        """Thousands of deleted schedules' last runs are forgotten through
        HSCAN pages, never one call over the whole hash: every call of the
        forget script gets at most a page of names."""
        now = int(self.sync.time()[0])
        old = now - 2 * RECENT_SECS
        self.sync.hset(LAST_ENQUEUED, mapping={f"GONE-{i}": old for i in range(2500)})
        self.sync.hset(LAST_ENQUEUED, mapping={'q"\\\U0001F600\n': old, "KEPT|x": old})
        self.sync.hset(LAST_ENQUEUED, "KEPT", old)
        sizes: list[int] = []
        real_eval = self.store._eval

        async def counting(script: str, keys: Any, args: Any) -> Any:
            if script == store_module.FORGET_LAST_RUNS:
                sizes.append(len(args))
            return await real_eval(script, keys, args)

        self.store._eval = counting  # type: ignore[method-assign]
        await self.store.prune([], existing=["KEPT", "KEPT|x"])
        self.assertEqual(sorted(self.sync.hkeys(LAST_ENQUEUED)), [b"KEPT", b"KEPT|x"])
        self.assertGreaterEqual(len(sizes), 3)
        self.assertLessEqual(max(sizes), 2 * store_module.SCAN_PAGE)

    async def test_prune_agrees_with_the_fake(self) -> None:
        """The fake store's prune leaves the same members and last runs as the script."""
        now = int(self.sync.time()[0])
        fake = FakeStore(Clock())
        fake._clock.advance(now)  # type: ignore[attr-defined]
        for target in (self.store, fake):
            await target.plan(now, {"A": now + 60, "B": now + 60, "C": now + 60, "F": now - 1})
            # Claimed and not replanned yet: its index entry dangles.
            self.assertEqual(await target.claim([job_claim("F", now - 1, "jf")], "t"), [CLAIMED])
        self.sync.zadd(SCHEDULE_SET, {"A|5": 5, "junk": 1})
        fake.add_raw("A|5", 5)
        fake.add_raw("junk", 1)
        last = {"A": now - 9000, "B": now - 9000, "D": now - 9000, "E": now - 10}
        self.sync.hset(LAST_ENQUEUED, mapping=last)
        fake.last_enqueued.update(last)
        real = await self.store.prune(["A", "F"], existing=["A", "B", "F"])
        fake_removed = await fake.prune(["A", "F"], existing=["A", "B", "F"])
        self.assertEqual(real, fake_removed)
        self.assertIn("F", real)
        self.assertEqual([(m, int(w)) for m, w in self.members()], fake._ordered())
        last_runs = self.sync.hgetall(LAST_ENQUEUED)
        self.assertEqual({k.decode(): int(v) for k, v in last_runs.items()}, fake.last_enqueued)
        index = self.sync.hgetall(MEMBER_INDEX)
        self.assertEqual({k.decode(): v.decode() for k, v in index.items()}, fake.index)

    def mixed_set(self) -> tuple[dict[str, float], dict[str, str], list[str]]:
        """Members, index and enabled names of a set a Rust daemon and ours
        both wrote: owned members of enabled and of disabled schedules, stale
        duplicates, members without a name, names containing '|'."""
        zset: dict[str, float] = {}
        index: dict[str, str] = {}
        enabled: list[str] = []
        for i in range(1200):
            name = f"TS-{i}" if i % 7 else f"a|{i}|b"
            if i % 11 == 0:  # what JSON must carry: quotes, backslashes, UTF-8, controls
                name = f'q"{i}\\/\U0001F600\n\t'
            member = f"{name}|{5000 + i}"
            zset[member] = 5000 + i
            index[name] = member
            if i % 5:
                enabled.append(name)
            if i % 3 == 0:
                zset[f"{name}|{4000 + i}"] = 4000 + i  # a stale duplicate
        for i in range(40):
            zset[f"GONE-{i}|{3000 + i}"] = 3000 + i    # nobody owns it, not enabled
        zset.update({"garbage": 1, "|5": 5, "TS-1|": 6, "TS-1|x": 7})
        return zset, index, enabled

    def load(self, zset: dict[str, float], index: dict[str, str]) -> None:
        self.sync.delete(SCHEDULE_SET, MEMBER_INDEX)
        self.sync.zadd(SCHEDULE_SET, zset)
        self.sync.hset(MEMBER_INDEX, mapping=index)

    def snapshot(self) -> tuple[list[tuple[str, float]], dict[str, str]]:
        index = self.sync.hgetall(MEMBER_INDEX)
        return self.members(), {k.decode(): v.decode() for k, v in index.items()}

    async def test_paged_prune_does_what_the_whole_set_script_did(self) -> None:
        """On a mixed set, the paged prune leaves the same members and index
        and returns the same names as the old single script (kept here as the
        reference), and the fake agrees; every call reads one small page."""
        zset, index, enabled = self.mixed_set()
        self.load(zset, index)
        old = sorted({n.decode() for n in self.sync.eval(OLD_PRUNE, 2, SCHEDULE_SET,
                                                          MEMBER_INDEX, *enabled) if n})
        expected = self.snapshot()
        self.load(zset, index)
        calls: list[tuple[str, Any]] = []
        real_eval = self.store._eval

        async def counting(script: str, keys: Any, args: Any) -> Any:
            calls.append((script, args))
            return await real_eval(script, keys, args)

        self.store._eval = counting  # type: ignore[method-assign]
        self.patch(store_module, "SCAN_PAGE", 100)
        new = await self.store.prune(enabled)
        self.assertEqual(new, old)
        self.assertEqual(self.snapshot(), expected)
        self.assertIn("a|21|b", new)       # a stale duplicate of a name with '|'
        self.assertIn("GONE-3", new)
        scans = [args for script, args in calls
                 if script in (store_module.PRUNE_INDEX, store_module.PRUNE_MEMBERS)]
        self.assertGreater(len(scans), 10)
        self.assertTrue(all(args[1] == 100 for args in scans))
        unplans = [args for script, args in calls if script == store_module.UNPLAN_IF_OWNED]
        self.assertTrue(unplans)
        self.assertLessEqual(max(len(args) for args in unplans), 2 * 2 * 100)

        fake = FakeStore(Clock())
        fake.zset = {m: int(w) for m, w in zset.items()}
        fake.index = dict(index)
        self.assertEqual(self.successResultOf(fake.prune(enabled)), old)
        self.assertEqual(
            (fake._ordered(), fake.index), ([(m, int(w)) for m, w in expected[0]], expected[1])
        )

    async def test_prune_drops_dangling_index_entries_and_reports_them(self) -> None:
        """An index entry whose member is gone from the set would hide a
        schedule with no run from the full refresh: prune drops it and
        returns the name to be planned again; ``seen`` hears of the others."""
        await self.store.plan(1000, {"A": 2000, "B": 2000, "C": 2000})
        self.sync.zrem(SCHEDULE_SET, "B|2000")
        seen: list[tuple[str, str]] = []
        removed = await self.store.prune(["A", "B"], seen=lambda *pair: seen.append(pair))
        self.assertEqual(removed, ["B", "C"])
        self.assertEqual(seen, [("A", "A|2000")])
        self.assertEqual(self.snapshot(), ([("A|2000", 2000.0)], {"A": "A|2000"}))

    async def test_cancel_matches_the_exact_name(self) -> None:
        """Cancelling TS-1 removes the member TS-1 owns and leaves TS-10 alone;
        names containing '|' work.  A stale duplicate the index does not know
        (a Rust daemon's) is not looked for (that would walk the whole set):
        the next prune removes it."""
        fake = FakeStore(Clock())
        for store in (self.store, fake):
            await store.plan(1000, {"TS-1": 2000, "TS-10": 2000, "a|b": 2000, "a": 2100})
        self.sync.zadd(SCHEDULE_SET, {"TS-1|1900": 1900})
        fake.add_raw("TS-1|1900", 1900)
        for store in (self.store, fake):
            self.assertTrue(await store.cancel("TS-1"))
            self.assertFalse(await store.cancel("TS-1"))
            self.assertTrue(await store.cancel("a|b"))
            self.assertFalse(await store.cancel("TS"))
        self.assertEqual(
            self.members(), [("TS-1|1900", 1900.0), ("TS-10|2000", 2000.0), ("a|2100", 2100.0)]
        )
        self.assertEqual([(m, int(w)) for m, w in self.members()], fake._ordered())
        self.assertEqual(self.sync.hkeys(MEMBER_INDEX), [b"TS-10", b"a"])
        self.assertEqual(await self.store.prune(["TS-1", "TS-10", "a"]), ["TS-1"])
        self.assertEqual(self.members(), [("TS-10|2000", 2000.0), ("a|2100", 2100.0)])

    def test_cancel_reads_no_whole_key(self) -> None:
        """Cancel is one index lookup: it calls no command that walks the set
        or the index (the old script's ZRANGE blocked Redis 0.2 s at 100,000)."""
        for whole in ("ZRANGE", "ZSCAN", "HKEYS", "HGETALL", "HSCAN", "KEYS"):
            self.assertNotIn(f"'{whole}'", store_module.CANCEL)

    async def test_earliest_and_count(self) -> None:
        """earliest() lists members by time with integer scores."""
        await self.store.plan(1000, {"B": 3000, "A": 2000, "123": 2500})
        self.assertEqual(await self.store.earliest(2), [("A|2000", 2000), ("123|2500", 2500)])
        self.assertEqual(await self.store.count(), 3)

    async def test_a_queue_key_of_the_wrong_type_blocks_only_its_claim(self) -> None:
        """With rq:queue:bad holding a string, the claim on it is BLOCKED and
        left untouched (member, index and last run kept, no job written),
        while the rest of the batch is enqueued; reported once, and claimed
        normally once the key is fixed."""
        await self.store.plan(1000, {"TS-1": 2000, "TS-2": 2000, "TS-3": 2000})
        self.sync.hset(LAST_ENQUEUED, "TS-2", 1500)
        self.sync.set("rq:queue:bad", "not a list")
        batch = [job_claim("TS-1", 2000, "job-1"), job_claim("TS-2", 2000, "job-2", "bad"),
                 job_claim("TS-3", 2000, "job-3")]
        with capturedLogs() as events:
            first = await self.store.claim(batch, "t")
            again = await self.store.claim([batch[1]], "t")
        self.assertEqual(first, [CLAIMED, BLOCKED, CLAIMED])
        self.assertEqual(again, [BLOCKED])
        self.assertIn("rq:queue:bad holds a string, not a list", first[1].reason)
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"job-1", b"job-3"])
        self.assertEqual(self.members(), [("TS-2|2000", 2000.0)])
        self.assertEqual(self.sync.hget(MEMBER_INDEX, "TS-2"), b"TS-2|2000")
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-2"), b"1500")
        self.assertEqual(self.sync.exists("rq:job:job-2"), 0)
        self.assertEqual(self.sync.get("rq:queue:bad"), b"not a list")
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)
        self.assertEqual(errors[0]["schedule"], "TS-2")
        self.assertIn("rq:queue:bad", errors[0]["reason"])

        self.sync.delete("rq:queue:bad")
        with capturedLogs() as events:
            self.assertEqual(await self.store.claim([batch[1]], "t"), [CLAIMED])
        self.assertEqual(self.sync.lrange("rq:queue:bad", 0, -1), [b"job-2"])
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-2"), b"2000")
        self.assertEqual([e["schedule"] for e in events], ["TS-2"])

    async def test_job_key_rq_queues_and_last_run_are_checked_too(self) -> None:
        """A job key that is not a hash, an rq:queues that is not a set (only
        claims with a job need it) and an unreadable last run each block just
        the claims they concern."""
        await self.store.plan(1000, {"A": 2000, "B": 2000, "C": 2000})
        self.sync.rpush("rq:job:job-a", "x")
        self.sync.hset(LAST_ENQUEUED, "B", "garbage")
        results = await self.store.claim(
            [job_claim("A", 2000, "job-a"), job_claim("B", 2000, "job-b"),
             Claim(member="C|2000", schedule="C", when=2000)], "t")
        self.assertEqual(results, [BLOCKED, BLOCKED, CLAIMED])
        self.assertIn("rq:job:job-a holds a list, not a hash", results[0].reason)
        self.assertIn("B", results[1].reason)
        self.assertIn("not a unix time", results[1].reason)
        self.assertEqual(self.members(), [("A|2000", 2000.0), ("B|2000", 2000.0)])

        self.sync.delete("rq:job:job-a")
        self.sync.set("rq:queues", "oops")
        await self.store.plan(1000, {"C": 2100})
        results = await self.store.claim(
            [job_claim("A", 2000, "job-a"), Claim(member="C|2100", schedule="C", when=2100)],
            "t")
        self.assertEqual(results, [BLOCKED, CLAIMED])
        self.assertIn("rq:queues holds a string, not a set", results[0].reason)
        self.assertEqual(self.sync.exists("rq:job:job-a", "rq:queue:default"), 0)

    async def test_a_claim_call_larger_than_the_scripts_chunks(self) -> None:
        """CLAIM reads and writes the daemon's keys in commands of at most 1,000
        items: a call of 2,500 claims (some lost, some stale) still gives each
        its own result, in order, and queues the jobs in claim order."""
        names = [f"TS-{i:04d}" for i in range(2500)]
        await self.store.plan(1000, {name: 2000 for name in names})
        self.sync.zrem(SCHEDULE_SET, "TS-0007|2000")
        self.sync.hset(LAST_ENQUEUED, "TS-2222", 2000)
        claims = [job_claim(name, 2000, f"job-{name}") for name in names]
        results = await self.store.claim(claims, "t")
        expected = [CLAIMED] * 2500
        expected[7], expected[2222] = WITHDRAWN, STALE
        self.assertEqual(results, expected)
        queued = [j.decode() for j in self.sync.lrange("rq:queue:default", 0, -1)]
        self.assertEqual(queued, [f"job-{n}" for n in names if n not in ("TS-0007", "TS-2222")])
        self.assertEqual(self.sync.zcard(SCHEDULE_SET), 0)
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "TS-2499"), b"2000")
        # CLAIM leaves the member index alone; each schedule's replan replaces its entry.
        self.assertEqual(self.sync.hget(MEMBER_INDEX, "TS-2499"), b"TS-2499|2000")
        await self.store.plan(2000, {name: 2060 for name in names})
        self.assertEqual(self.sync.zcard(SCHEDULE_SET), 2500)
        self.assertEqual(self.sync.hlen(MEMBER_INDEX), 2500)
        self.assertEqual(self.sync.hget(MEMBER_INDEX, "TS-2499"), b"TS-2499|2060")

    async def test_jobs_with_different_fields_in_one_call(self) -> None:
        """Field names go once per call for all jobs that have the same; jobs
        with other names, none, or no job at all are written each as it is."""
        await self.store.plan(1000, {name: 2000 for name in "ABCDE"})
        claims = [
            Claim(member="A|2000", schedule="A", when=2000, job_id="ja", origin="default",
                  fields={"status": "queued", "data": b"\x80\x05"}),
            Claim(member="B|2000", schedule="B", when=2000, job_id="jb", origin="default",
                  fields={"timeout": 60}),
            Claim(member="C|2000", schedule="C", when=2000, job_id="jc", origin="default",
                  fields={}),
            Claim(member="D|2000", schedule="D", when=2000),
            Claim(member="E|2000", schedule="E", when=2000, job_id="je", origin="default",
                  fields={"status": "queued", "data": b"x", "enqueued_at": "builder's"}),
        ]
        self.assertEqual(await self.store.claim(claims, "t"), [CLAIMED] * 5)
        self.assertEqual(self.sync.hgetall("rq:job:ja"),
                         {b"status": b"queued", b"data": b"\x80\x05", b"enqueued_at": b"t"})
        self.assertEqual(self.sync.hgetall("rq:job:jb"), {b"timeout": b"60", b"enqueued_at": b"t"})
        self.assertEqual(self.sync.hgetall("rq:job:jc"), {b"enqueued_at": b"t"})
        self.assertEqual(self.sync.hgetall("rq:job:je"),
                         {b"status": b"queued", b"data": b"x", b"enqueued_at": b"t"})
        self.assertEqual(self.sync.lrange("rq:queue:default", 0, -1), [b"ja", b"jb", b"jc", b"je"])
        self.assertEqual(self.sync.hget(LAST_ENQUEUED, "D"), b"2000")

    async def test_a_broken_daemon_key_fails_the_batch_before_any_write(self) -> None:
        """If the daemon's own hash of last runs is not a hash, the script
        fails as a whole without touching any member or queue."""
        await self.store.plan(1000, {"A": 2000})
        self.sync.delete(LAST_ENQUEUED)
        self.sync.set(LAST_ENQUEUED, "x")
        with self.assertRaises(txredisapi.ResponseError) as caught:
            await self.store.claim([job_claim("A", 2000, "job-a")], "t")
        self.assertIn("not a hash", str(caught.exception))
        self.assertEqual(self.members(), [("A|2000", 2000.0)])
        self.assertEqual(self.sync.exists("rq:job:job-a", "rq:queue:default"), 0)


class OutOfMemoryTests(unittest.TestCase):
    """A private redis-server (the shared one must never be put out of memory)."""

    def setUp(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise unittest.SkipTest("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="btu-oom-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.socket = os.path.join(self.dir, "redis.sock")
        self.server = subprocess.Popen(
            [server, "--port", "0", "--unixsocket", self.socket, "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self.server.wait)
        self.addCleanup(self.server.terminate)
        self.sync = redis.Redis(unix_socket_path=self.socket)
        self.addCleanup(self.sync.close)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sync.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def test_writing_scripts_are_refused_up_front(self) -> None:
        """Out of memory, CLAIM and PLAN are refused before doing anything
        (a script without the shebang ran its deletes, then failed or wrote
        anyway); CANCEL, which only deletes, and WINDOW, which only reads, run."""
        self.sync.zadd(SCHEDULE_SET, {"A|2000": 2000, "B|2000": 2000})
        self.sync.hset(MEMBER_INDEX, mapping={"A": "A|2000", "B": "B|2000"})
        self.sync.config_set("maxmemory", 1)
        claim_keys = [SCHEDULE_SET, LAST_ENQUEUED, "rq:queues", "btu_scheduler:last_job",
                      "btu_scheduler:history_inbox", "rq:job:j", "rq:queue:default"]
        with self.assertRaisesRegex(redis.ResponseError, "maxmemory"):
            self.sync.eval(store_module.CLAIM, len(claim_keys), *claim_keys,
                           "t", 1, 0, "A|2000", "A", 2000, "j", 0)
        with self.assertRaisesRegex(redis.ResponseError, "maxmemory"):
            self.sync.eval(store_module.PLAN, 3, SCHEDULE_SET, MEMBER_INDEX, LAST_ENQUEUED,
                           1000, 1, "A", 3000)
        self.assertEqual(self.sync.zrange(SCHEDULE_SET, 0, -1), [b"A|2000", b"B|2000"])
        self.assertEqual(self.sync.exists(LAST_ENQUEUED, "rq:job:j"), 0)
        window = self.sync.eval(store_module.WINDOW, 1, SCHEDULE_SET, "5000", 10)
        self.assertEqual(window[0], 2)
        self.assertEqual(self.sync.eval(store_module.CANCEL, 2, SCHEDULE_SET, MEMBER_INDEX, "B"), 1)
