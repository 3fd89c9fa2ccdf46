"""Tests for btu_twisted.daemon.control: what a socket request does to the planning FIFO."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from btu_twisted.daemon.control import SiteControl
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.sources.change_feed import ChangeFeed
from btu_twisted.sources.combined import NoChangeFeed
from tests.fakes import EPOCH, FakeDatabase, run_until


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
