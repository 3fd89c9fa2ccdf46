"""Tests for btu_twisted.daemon.control: what a socket request does to the planning FIFO,
which names ``reload NAME`` takes, and what ``status`` counts."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from btu_twisted.daemon.control import SiteControl
from btu_twisted.daemon.framing import Declined
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.seams import UnknownSchedule
from btu_twisted.sources.change_feed import ChangeFeed
from btu_twisted.sources.combined import NoChangeFeed
from btu_twisted.timing.stats import TimerStats
from tests.fakes import EPOCH, FakeDatabase, FakeStore, make_row, run_until


def control_of(fifo: ScheduleFifo, changes: Any, clock: Clock) -> SiteControl:
    parts: Any = SimpleNamespace(fifo=fifo, changes=changes)
    return SiteControl(clock, parts, dependencies=dict)


class RequestPlanningTests(unittest.TestCase):
    """A socket request puts its name on the FIFO once: a planner asleep on
    ``get()`` takes it, and the batch it then drains must not hold it again."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.fifo = ScheduleFifo()

    def check_once(self, control: SiteControl) -> None:
        waiting = self.fifo.get()  # the planner, asleep on an empty FIFO
        self.assertTrue(control.request_planning("TS-1"))
        self.assertEqual(self.successResultOf(waiting), "TS-1")
        self.assertEqual(self.fifo.take(10), [])

    def test_once_with_the_change_feed(self) -> None:
        feed = ChangeFeed(
            self.clock, FakeDatabase(self.clock), self.fifo,  # type: ignore[arg-type]
            on_zone_changed=lambda: None, interval=2.0, overlap=timedelta(seconds=120), stagger=2.0,
            follow_ups=(1.5,),
        )
        feed.startService()
        self.addCleanup(feed.stopService)
        self.fifo.take(10)  # what the feed's first look queued
        self.check_once(control_of(self.fifo, feed, self.clock))
        run_until(self.clock, self.clock.seconds() + 1.5)
        self.assertEqual(self.fifo.take(10), ["TS-1"])  # the follow-up still comes

    def test_once_without_mariadb(self) -> None:
        self.check_once(control_of(self.fifo, NoChangeFeed(self.fifo), self.clock))

    def test_full_fifo_refuses_and_schedules_no_follow_up(self) -> None:
        fifo = ScheduleFifo(max_names=1)
        feed = ChangeFeed(
            self.clock, FakeDatabase(self.clock), fifo,  # type: ignore[arg-type]
            on_zone_changed=lambda: None, interval=2.0, overlap=timedelta(seconds=120), stagger=2.0,
            follow_ups=(1.5,),
        )
        feed.startService()
        self.addCleanup(feed.stopService)
        fifo.take(10)
        fifo.add("OTHER")
        control = control_of(fifo, feed, self.clock)
        self.assertFalse(control.request_planning("TS-1"))
        self.assertEqual(self.clock.getDelayedCalls()[1:], [])  # only the feed's loop


def _site(clock: Clock, store: FakeStore, db: FakeDatabase | None, file: object = None) -> Any:
    """The parts SiteControl reads, as plain attributes (a site with nothing done yet)."""
    fifo = ScheduleFifo()
    return SimpleNamespace(
        config=SimpleNamespace(name="btu", environment_name="test"),
        started_at=clock.seconds(), fifo=fifo, changes=NoChangeFeed(fifo), store=store,
        timer=SimpleNamespace(stats=TimerStats(), forget=lambda names: None),
        sources=SimpleNamespace(db=db, file=file, read_schedules=(
            db.read_schedules if db is not None else lambda names: succeed({}))),
        planner=SimpleNamespace(planned_total=0, ahead={}),
        refresh=SimpleNamespace(keys_lost=0, last={}),
        job_ids=SimpleNamespace(written=0),
    )


class ReplanTests(unittest.TestCase):
    """``btu reload NAME`` (the ``reload`` request with a name): only a name a
    source has is planned; an unknown one is declined, with nothing queued."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.db = FakeDatabase(self.clock, latency=0.0)
        self.parts = _site(self.clock, FakeStore(self.clock, latency=0.0), self.db)
        self.control = SiteControl(self.clock, self.parts, dependencies=dict)

    def replan(self, name: str) -> Deferred[str]:
        d = self.control.replan(name)
        run_until(self.clock, self.clock.seconds())
        return d

    def test_known_schedule_is_planned(self) -> None:
        self.db.put(make_row("TS-1"))
        line = self.successResultOf(self.replan("TS-1"))
        self.assertEqual(line, "BTU Scheduler now re-processing Task Schedule TS-1 in Python RQ.")
        self.assertEqual(self.parts.fifo.take(10), ["TS-1"])

    def test_disabled_schedule_says_so(self) -> None:
        self.db.put(make_row("TS-1", enabled=False))
        line = self.successResultOf(self.replan("TS-1"))
        self.assertIn("It is disabled", line)
        self.assertEqual(self.parts.fifo.take(10), ["TS-1"])  # its member goes

    def test_paused_schedule_says_so(self) -> None:
        """Planning refuses a paused schedule: the reply must not promise a run."""
        self.db.put(make_row("TS-1"))
        self.parts.store.paused_since["TS-1"] = int(EPOCH)
        line = self.successResultOf(self.replan("TS-1"))
        self.assertIn("It is paused: nothing is planned until 'btu resume TS-1'.", line)

    def test_unknown_schedule_is_declined(self) -> None:
        failure = self.failureResultOf(self.replan("NOSUCH"), UnknownSchedule)
        self.assertEqual(failure.getErrorMessage(), "no Task Schedule 'NOSUCH' in MariaDB")
        self.assertEqual(self.parts.fifo.take(10), [])

    def test_unknown_in_the_schedules_file(self) -> None:
        """Without MariaDB the reply names the file."""
        parts = _site(self.clock, FakeStore(self.clock, latency=0.0), None, file=object())
        control = SiteControl(self.clock, parts, dependencies=dict)
        failure = self.failureResultOf(control.replan("NOSUCH"), UnknownSchedule)
        self.assertEqual(failure.getErrorMessage(), "no Task Schedule 'NOSUCH' in the schedules file")

    def test_long_unknown_name_is_shortened(self) -> None:
        failure = self.failureResultOf(self.replan("x" * 20000), UnknownSchedule)
        message = failure.getErrorMessage()
        self.assertLess(len(message), 200)
        self.assertIn("19920 more characters", message)

    def test_full_fifo_is_declined(self) -> None:
        self.db.put(make_row("TS-1"))
        self.parts.fifo = ScheduleFifo(max_names=1)
        self.parts.changes = NoChangeFeed(self.parts.fifo)
        self.parts.fifo.add("OTHER")
        failure = self.failureResultOf(self.replan("TS-1"), Declined)
        self.assertIn("planning queue is full", failure.getErrorMessage())


class StatusTests(unittest.TestCase):
    """``status`` counts the sorted set when asked, not at the timer's last look."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.store = FakeStore(self.clock, latency=0.0)
        self.parts = _site(self.clock, self.store, FakeDatabase(self.clock, latency=0.0))
        self.control = SiteControl(self.clock, self.parts, dependencies=dict)

    def status(self) -> dict[str, Any]:
        d = self.control.status()
        run_until(self.clock, self.clock.seconds())
        return self.successResultOf(d)

    def test_members_planned_after_the_timer_looked(self) -> None:
        """The timer last saw an empty set (its look at start-up); a run planned
        15 h ahead since is counted, and named as the next one due."""
        self.parts.timer.stats.seen_at = self.clock.seconds() - 30
        ahead = int(self.clock.seconds()) + 15 * 3600
        self.store.add("TS-1", ahead)
        self.assertEqual(self.control.snapshot()["members"], 0)
        status = self.status()
        self.assertEqual(status["members"], 1)
        self.assertEqual(status["members_counted_at"], status["now"])
        self.assertEqual(status["next_due"]["member"], f"TS-1|{ahead}")
        self.assertEqual(status["members_near"], 0)

    def test_cancels_while_claiming_are_apart_from_lost_runs(self) -> None:
        self.parts.timer.stats.withdrawn = 4
        status = self.status()
        self.assertEqual((status["lost_to_other_daemons"], status["cancelled_while_claiming"]),
                         (0, 4))

    def test_redis_down_gives_the_last_look(self) -> None:
        """Redis not answering: the timer's last count, said to be that, and why."""
        self.store.down = True
        self.parts.timer.stats.members_seen = 3
        self.parts.timer.stats.seen_at = self.clock.seconds() - 5
        status = self.status()
        self.assertEqual(status["members"], 3)
        self.assertNotEqual(status["members_counted_at"], status["now"])
        self.assertIn("members_error", status)
