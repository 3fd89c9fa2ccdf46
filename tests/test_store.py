"""The store's claim results as the timer sees them, with the in-memory fake.

The real scripts are tested against Redis in tests/integration/test_store.py;
here, what a BLOCKED claim means for the timer: the run stays, is reported
once, is retried, and is enqueued exactly once when the key is fixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.store.schedule_store import (
    BLOCKED,
    BLOCKED_RETRY_SECS,
    CANCEL,
    Blocked,
    ScheduleStore,
)
from btu_twisted.timing.timer import Timer
from tests.fakes import EPOCH, FakeDatabase, FakeStore, FlakyBuilder, make_row, run_until

T = EPOCH + 60  # a run of the rows' "* * * * *", a minute after the clock starts


class BlockedCodeTests(unittest.SynchronousTestCase):
    def test_blocked_is_the_code_with_a_reason(self) -> None:
        """A Blocked result compares as BLOCKED and says why."""
        result = Blocked("rq:queue:x holds a string, not a list")
        self.assertEqual(result, BLOCKED)
        self.assertEqual(int(result), 3)
        self.assertIn("rq:queue:x", result.reason)


class Redis6:
    """Answers EVAL as Redis 6 does: a "#!lua" first line does not compile."""

    def __init__(self) -> None:
        self.scripts: list[str] = []

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        self.scripts.append(script)
        if script.startswith("#!"):
            return fail(Exception(
                "ERR Error compiling script (new function): user_script:1:"
                " unexpected symbol near '#'"
            ))
        return succeed(7)


class OldRedisTests(unittest.TestCase):
    async def test_scripts_lose_the_shebang_on_redis_6(self) -> None:
        """Redis before 7 cannot compile "#!lua": the store says so once and
        sends its scripts without that line from then on, same line numbers."""
        redis = Redis6()
        store = ScheduleStore(redis)  # type: ignore[arg-type]
        with capturedLogs() as events:
            self.assertTrue(await store.cancel("A"))
            self.assertTrue(await store.cancel("B"))
        self.assertEqual([s.startswith("#!") for s in redis.scripts], [True, False, False])
        self.assertEqual(redis.scripts[1].count("\n"), CANCEL.count("\n"))
        self.assertEqual(len(events), 1)
        self.assertIn("older than 7.0", formatEvent(events[0]))

    async def test_other_script_errors_are_not_retried(self) -> None:
        """Any other error is the caller's, and the shebang stays."""
        redis = Redis6()
        redis.eval = lambda script, keys, args: fail(  # type: ignore[method-assign]
            Exception("WRONGTYPE Operation against a key holding the wrong kind of value"))
        store = ScheduleStore(redis)  # type: ignore[arg-type]
        with self.assertRaisesRegex(Exception, "^WRONGTYPE "):
            await store.cancel("A")
        self.assertTrue(store._shebangs)


class BlockedClaimTimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        # Answers take a millisecond, so that a busy loop shows as one.
        self.store = FakeStore(self.clock, latency=0.001)
        self.db = FakeDatabase(self.clock, latency=0.001)
        self.fifo = ScheduleFifo()
        self.timer = Timer(self.clock, self.store, self.db,  # type: ignore[arg-type]
                           FlakyBuilder(self.clock), self.fifo, polling_interval=60.0)
        for name, queue in (("GOOD", "default"), ("BAD", "broken")):
            self.db.put(make_row(name, queue=queue))
            self.store.add(name, T)

    def tearDown(self) -> None:
        self.timer.stopService()
        run_until(self.clock, self.clock.seconds() + 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_blocked_claim_is_kept_logged_once_and_retried(self) -> None:
        """With rq:queue:broken of the wrong type, BAD's run stays a member
        while GOOD's is enqueued; one error line however many retries; once
        the key is fixed the run is enqueued once, and planned again."""
        self.store.wrong_type["rq:queue:broken"] = "string"
        with capturedLogs() as events:
            self.timer.startService()
            run_until(self.clock, T + 1, max_calls=2000)
            self.assertEqual([r.schedule for r in self.store.enqueued()], ["GOOD"])
            self.assertIn(f"BAD|{T}", self.store.zset)
            self.assertNotIn("BAD", self.store.last_enqueued)
            self.assertNotIn("BAD", self.fifo)
            run_until(self.clock, T + 5 * BLOCKED_RETRY_SECS, max_calls=2000)
        claims_of_bad = [c for _, batch in self.store.claim_batches for c in batch
                         if c.schedule == "BAD"]
        self.assertGreaterEqual(len(claims_of_bad), 4)  # retried ...
        self.assertLessEqual(len(claims_of_bad), 7)     # ... but not in a busy loop
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual([(e["schedule"], "rq:queue:broken" in e["reason"]) for e in errors],
                         [("BAD", True)])

        del self.store.wrong_type["rq:queue:broken"]
        run_until(self.clock, self.clock.seconds() + BLOCKED_RETRY_SECS + 3)
        bad_runs = self.store.enqueued("BAD")
        self.assertEqual([(r.when, r.origin) for r in bad_runs], [(T, "broken")])
        self.assertEqual(self.store.last_enqueued["BAD"], T)
        self.assertIn("BAD", self.fifo)
