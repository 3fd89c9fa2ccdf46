"""One wake-up for many timers (issue 10: "one timer wake-up for all" the sites).

The Alarm on its own, then three Timers sharing one, driven by a Clock: one
DelayedCall at a time, each timer woken at its own time and never before.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.timing.alarm import Alarm
from btu_twisted.timing.timer import LOOKAHEAD, Timer
from tests.fakes import EPOCH, FakeDatabase, FakeStore, FlakyBuilder, make_row, run_until

S = EPOCH
T = S + 30


class AlarmTests(unittest.TestCase):
    """The Alarm with plain callbacks."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.alarm = Alarm(self.clock)
        self.woken: list[tuple[str, float]] = []

    def record(self, name: str) -> Callable[[], None]:
        return lambda: self.woken.append((name, self.clock.seconds()))

    def calls(self) -> list[float]:
        return [c.getTime() for c in self.clock.getDelayedCalls()]

    def test_one_call_at_the_earliest_time_each_woken_at_its_own(self) -> None:
        """Three wakers, one DelayedCall, always at the earliest time still
        wanted; a waker is woken when its time comes, not when another's does."""
        a, b, c = (self.alarm.waker(self.record(n)) for n in "abc")
        b.at(S + 20)
        a.at(S + 10)
        c.at(S + 15)
        self.assertEqual(self.calls(), [S + 10])
        run_until(self.clock, S + 14.999)
        self.assertEqual(self.woken, [("a", S + 10)])
        self.assertEqual(self.calls(), [S + 15])
        run_until(self.clock, S + 30)
        self.assertEqual(self.woken, [("a", S + 10), ("c", S + 15), ("b", S + 20)])
        self.assertEqual(self.calls(), [])

    def test_only_earlier_times_move_a_waker(self) -> None:
        """Like re-arming a callLater only when sooner: a later time keeps the
        earlier one, an earlier time moves the one call forward."""
        a = self.alarm.waker(self.record("a"))
        a.at(S + 10)
        a.at(S + 50)
        self.assertEqual((a.when, self.calls()), (S + 10, [S + 10]))
        a.at(S + 3)
        self.assertEqual((a.when, self.calls()), (S + 3, [S + 3]))
        run_until(self.clock, S + 60)
        self.assertEqual(self.woken, [("a", S + 3)])

    def test_cancel_leaves_the_others_times(self) -> None:
        """A cancelled waker (its timer stopped) is not woken; the call moves to
        the next waker's time, and goes when none is left."""
        a, b = self.alarm.waker(self.record("a")), self.alarm.waker(self.record("b"))
        a.at(S + 10)
        b.at(S + 20)
        a.cancel()
        self.assertFalse(a.active())
        self.assertEqual(self.calls(), [S + 20])
        b.cancel()
        self.assertEqual(self.calls(), [])
        b.at(S + 25)
        run_until(self.clock, S + 60)
        self.assertEqual(self.woken, [("b", S + 25)])

    def test_due_together_woken_by_time_then_by_making_order(self) -> None:
        """Wakers late together (the reactor was busy) are woken in one go, the
        earliest time first, ties in the order the wakers were made."""
        wakers = [self.alarm.waker(self.record(n)) for n in "abcd"]
        for waker, when in zip(wakers, (S + 2, S + 1, S + 2, S + 1), strict=True):
            waker.at(when)
        self.clock.advance(5)  # every one overdue at the one firing
        self.assertEqual([n for n, _ in self.woken], ["b", "d", "a", "c"])

    def test_woken_waker_asking_for_now_waits_for_the_next_turn(self) -> None:
        """A callback asking to be woken again at once gets a new call (the next
        reactor turn), not a loop inside the firing that woke it; other wakers
        keep their times."""
        depths: list[int] = []

        def again() -> None:
            depths.append(sum(f.name == "_fire" for f in traceback.extract_stack()))
            if len(depths) < 3:
                waker.at(self.clock.seconds())
                self.assertEqual(self.calls(), [])  # armed once this firing ends

        waker = self.alarm.waker(again)
        other = self.alarm.waker(self.record("other"))
        other.at(S + 100)
        waker.at(S + 1)
        self.clock.advance(1)  # Clock.advance also runs the calls it adds for now
        self.assertEqual(depths, [1, 1, 1])
        self.assertEqual(self.calls(), [S + 100])

    def test_a_failing_callback_does_not_stop_the_others(self) -> None:
        """One site's timer raising is logged; the other due ones are still
        woken and the alarm still wakes the later ones."""
        def fail() -> None:
            raise RuntimeError("boom")

        bad = self.alarm.waker(fail)
        good = self.alarm.waker(self.record("good"))
        later = self.alarm.waker(self.record("later"))
        bad.at(S + 1)
        good.at(S + 1)
        later.at(S + 9)
        with capturedLogs() as events:
            run_until(self.clock, S + 10)
        self.assertEqual(self.woken, [("good", S + 1), ("later", S + 9)])
        failures = [e for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(len(failures), 1)
        self.flushLoggedErrors(RuntimeError)


class SharedTimersTests(unittest.TestCase):
    """Three Timers (three sites: a store, a FIFO each) on one Alarm."""

    polling = 3600.0  # the safety-net wake-up stays out of the way

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.alarm = Alarm(self.clock)
        self.db = FakeDatabase(self.clock, latency=0.0)
        self.builder = FlakyBuilder(self.clock)
        self.stores = [FakeStore(self.clock, latency=0.0) for _ in range(3)]
        self.timers = [
            Timer(self.clock, store, self.db, self.builder, ScheduleFifo(),  # type: ignore[arg-type]
                  polling_interval=self.polling, alarm=self.alarm)
            for store in self.stores
        ]
        self.addCleanup(self.stop_all_and_check)

    def stop_all_and_check(self) -> None:
        for timer in self.timers:
            if timer.running:
                timer.stopService()
        run_until(self.clock, self.clock.seconds())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def schedule(self, site: int, name: str, when: int) -> None:
        self.db.put(make_row(name, "* * * * * * *"))
        self.stores[site].add(name, when)

    def alarm_calls(self) -> list[float]:
        return [c.getTime() for c in self.clock.getDelayedCalls() if c.func == self.alarm._fire]

    def step_to(self, when: float) -> None:
        """run_until, checking at every reactor turn that the alarm holds one call at most."""
        for _ in range(100_000):
            self.assertLessEqual(len(self.alarm_calls()), 1)
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= when]
            if not due:
                break
            self.clock.rightNow = max(self.clock.rightNow, min(due))
            self.clock.advance(0)
        self.clock.rightNow = max(self.clock.rightNow, when)

    def ticks(self, site: int) -> list[float]:
        """When that site's timer looked at its store (once per wake-up)."""
        return [c.at for c in self.stores[site].calls_of("window")]

    def claimed_at(self, site: int) -> list[float]:
        return [at for at, _ in self.stores[site].claim_batches]

    def start(self) -> None:
        for timer in self.timers:
            timer.startService()
        self.step_to(S)

    def test_one_call_each_site_woken_at_its_own_time(self) -> None:
        """Runs at T, T+5 and T+20 on three sites: idle, the reactor holds one
        call (the alarm's); each site looks at its store only at its own
        wake-ups, LOOKAHEAD before its run and at it, and claims at its own second."""
        for site, when in enumerate((T, T + 5, T + 20)):
            self.schedule(site, f"TS-{site}", when)
        self.start()
        self.assertEqual(self.alarm_calls(), [T - LOOKAHEAD])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        self.step_to(T + 60)
        for site, when in enumerate((T, T + 5, T + 20)):
            self.assertEqual(self.claimed_at(site), [when])
            self.assertEqual(len(self.stores[site].enqueued()), 1)
            self.assertEqual([t for t in self.ticks(site) if t > S],
                             [when - LOOKAHEAD, when], f"site {site}")
        self.assertEqual(self.alarm_calls(), [T + self.polling])  # site 0's safety net

    def test_no_run_enqueued_before_its_second(self) -> None:
        """While another site's run is claimed, a later one is neither claimed
        nor looked at."""
        self.schedule(0, "TS-0", T)
        self.schedule(1, "TS-1", T + 5)
        self.start()
        self.step_to(T + 5 - LOOKAHEAD - 0.001)
        self.assertEqual(len(self.stores[0].enqueued()), 1)
        self.assertEqual(self.stores[1].enqueued(), [])
        self.assertEqual([t for t in self.ticks(1) if t > S], [])
        self.step_to(T + 5 - 0.001)
        self.assertEqual(self.stores[1].enqueued(), [])
        self.step_to(T + 5)
        self.assertEqual(self.claimed_at(1), [T + 5])

    def test_planned_earlier_run_moves_the_one_call(self) -> None:
        """A site whose planner adds an earlier run brings the shared call
        forward; the others are not woken by it."""
        self.schedule(0, "TS-FAR", S + 1000)
        self.schedule(1, "TS-LATER", S + 2000)
        self.start()
        self.assertEqual(self.alarm_calls(), [S + 1000 - LOOKAHEAD])

        self.schedule(2, "TS-NEAR", S + 10)
        self.timers[2].planned(S + 10)
        self.assertEqual(self.alarm_calls(), [S + 10 - LOOKAHEAD])
        self.step_to(S + 10)
        self.assertEqual(self.claimed_at(2), [S + 10])
        self.assertEqual([t for t in self.ticks(0) + self.ticks(1) if t > S], [])
        self.assertEqual(self.alarm_calls(), [S + 1000 - LOOKAHEAD])
        self.step_to(S + 2000)
        self.assertEqual((self.claimed_at(0), self.claimed_at(1)), ([S + 1000], [S + 2000]))

    def test_stopping_one_site_leaves_the_others_wake_ups(self) -> None:
        """A stopped site's wake-up goes; the call moves to the next site's,
        whose run is still enqueued on time."""
        self.schedule(0, "TS-0", T)
        self.schedule(1, "TS-1", T + 5)
        self.start()
        self.timers[0].stopService()
        self.assertEqual(self.alarm_calls(), [T + 5 - LOOKAHEAD])
        self.step_to(T + 60)
        self.assertEqual(self.stores[0].enqueued(), [])
        self.assertEqual(self.claimed_at(1), [T + 5])
        self.timers[1].stopService()
        self.timers[2].stopService()
        self.assertEqual(self.alarm_calls(), [])
