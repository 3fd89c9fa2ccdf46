"""The full refresh, driven by a Clock: every enabled schedule queued, stale members pruned."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.planning.planner import Planner
from btu_twisted.planning.refresh import FullRefresh
from tests.fakes import EPOCH, FakeDatabase, FakeStore, make_row, run_until

S = EPOCH


def texts(events: Iterable[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


def failures(events: Iterable[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


class RefreshCase(unittest.TestCase):
    """A Clock at S, fakes, and a FullRefresh every ``interval`` seconds."""

    interval = 3600.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.fifo = ScheduleFifo()
        self.db = FakeDatabase(
            self.clock,
            [make_row("TS-A"), make_row("TS-B"), make_row("TS-OFF", enabled=False)],
        )
        self.store = FakeStore(self.clock)
        self.refreshed: list[tuple[float, float, int]] = []
        self.refresh = FullRefresh(
            self.clock,
            self.interval,
            self.fifo,
            self.db,  # type: ignore[arg-type]
            self.store,  # type: ignore[arg-type]
            on_refreshed=lambda at, duration, members: self.refreshed.append(
                (at, duration, members)
            ),
        )
        self.addCleanup(self.stop_and_check)

    def stop_and_check(self) -> None:
        """Every test ends with the refresh stopped and no delayed call left."""
        if self.refresh.running:
            self.successResultOf(_deferred(self.refresh.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def advance_to(self, when: float) -> None:
        run_until(self.clock, when)

    def refresh_times(self) -> list[float]:
        return [c.at for c in self.db.calls_of("schedule_states")]


def _deferred(result: Deferred[None] | None) -> Deferred[None]:
    return result if isinstance(result, Deferred) else succeed(None)


class PeriodTests(RefreshCase):
    def test_runs_at_start_and_every_interval(self) -> None:
        """A refresh runs at start and then once per interval."""
        self.refresh.startService()
        self.advance_to(S + 3 * self.interval + 1)
        self.assertEqual(
            self.refresh_times(),
            [S, S + self.interval, S + 2 * self.interval, S + 3 * self.interval],
        )
        self.assertEqual(len(self.refreshed), 4)

    def test_queues_all_enabled_names(self) -> None:
        """Every enabled schedule, and only those, goes onto the FIFO."""
        self.refresh.startService()
        self.assertEqual(self.fifo.take(10), ["TS-A", "TS-B"])
        self.assertEqual(self.refresh.last["schedules"], 2)

    def test_names_already_waiting_are_not_doubled(self) -> None:
        """A refresh adds nothing for a name already waiting in the FIFO."""
        self.fifo.add("TS-B")
        self.refresh.startService()
        self.assertEqual(self.fifo.take(10), ["TS-B", "TS-A"])

    def test_prunes_stale_members_and_requeues_their_names(self) -> None:
        """Members of disabled or unknown schedules, stale duplicates (a Rust
        daemon's) and unreadable members are removed; the enabled schedules'
        own members stay; every name that lost a member is queued again."""
        self.store.add("TS-A", S + 60)
        self.store.add_raw(f"TS-A|{S + 30}", S + 30)  # duplicate not in the index
        self.store.add("TS-OFF", S + 60)
        self.store.add("TS-DELETED", S + 90)
        self.store.add_raw("garbage", S + 10)
        self.refresh.startService()
        self.assertEqual(self.store.zset, {f"TS-A|{S + 60}": S + 60})
        self.assertEqual(self.store.index, {"TS-A": f"TS-A|{S + 60}"})
        self.assertEqual(self.fifo.take(10), ["TS-A", "TS-B", "TS-DELETED", "TS-OFF"])
        self.assertEqual(self.refresh.last["removed"], 3)

    def test_on_refreshed_gets_start_duration_and_member_count(self) -> None:
        """on_refreshed is called once per refresh with its start time, how
        long it took (here MariaDB answers its one chunk of rows in 0.5 s)
        and the members left."""
        self.db.latency = 0.5
        self.store.add("TS-A", S + 60)
        self.store.add("TS-OFF", S + 60)
        self.refresh.startService()
        self.assertEqual(self.refreshed, [])
        self.advance_to(S + 1)
        self.assertEqual(self.refreshed, [(S, 0.5, 1)])
        self.assertEqual(self.refresh.last["duration"], 0.5)


class FailureTests(RefreshCase):
    def test_failure_retried_with_backoff_before_next_period_then_recovers(self) -> None:
        """MariaDB down at start: the refresh is retried after 1, 2, 4 s...
        (not an hour later), the outage is logged once and without a
        traceback, and the first retry after MariaDB is back queues every
        enabled schedule; the regular period goes on."""
        self.db.down = True
        with capturedLogs() as events:
            self.refresh.startService()
            self.advance_to(S + 8)
            self.assertEqual(self.refresh_times(), [S, S + 1, S + 3, S + 7])
            self.assertEqual(len(self.fifo), 0)
            self.db.down = False
            self.advance_to(S + 20)
        self.assertEqual(self.refresh_times()[-1], S + 15)
        self.assertEqual(self.fifo.take(10), ["TS-A", "TS-B"])
        self.assertEqual(len(self.refreshed), 1)
        self.assertEqual(len(texts(events, LogLevel.error)), 1, texts(events))
        self.assertEqual(failures(events), [])
        self.advance_to(S + self.interval)
        self.assertEqual(self.refresh_times()[-1], S + self.interval)
        self.assertEqual(len(self.refreshed), 2)

    def test_backoff_restarts_after_recovery(self) -> None:
        """After a successful refresh, the next outage is retried after 1 s
        again, not after the last outage's longest wait."""
        self.db.down = True
        self.refresh.startService()
        self.advance_to(S + 40)  # 0, 1, 3, 7, 15, 31
        self.db.down = False
        self.advance_to(S + 100)  # recovered at S + 63
        self.db.down = True
        self.advance_to(S + self.interval + 2)
        self.assertEqual(
            self.refresh_times()[-2:], [S + self.interval, S + self.interval + 1]
        )
        self.db.down = False

    def test_redis_down_during_prune_retried(self) -> None:
        """Redis down when pruning: the refresh is retried and completes once
        Redis answers."""
        self.store.down = True
        self.store.add("TS-OFF", S + 60)
        self.refresh.startService()
        self.advance_to(S + 5)
        self.assertEqual(self.refreshed, [])
        self.store.down = False
        self.advance_to(S + 10)
        self.assertEqual(len(self.refreshed), 1)
        self.assertEqual(self.store.zset, {})


class LostKeysTests(RefreshCase):
    def test_flushed_redis_is_replanned_within_seconds(self) -> None:
        """Redis comes back empty (restart without persistence, FLUSHDB): the
        marker check sees it within 2 s and every enabled schedule is queued
        again, long before the next period; a Redis that kept its keys costs
        one EXISTS per check and no refresh."""
        self.refresh.startService()
        self.advance_to(S + 10)
        self.fifo.take(10)
        self.assertEqual(len(self.refreshed), 1)
        self.store.flush()
        with capturedLogs() as events:
            self.advance_to(S + 13)
        self.assertEqual(len(self.refreshed), 2)
        self.assertEqual(sorted(self.fifo.take(10)), ["TS-A", "TS-B"])
        self.assertEqual(len(texts(events, LogLevel.warn)), 1)
        self.assertEqual(self.refresh.keys_lost, 1)
        self.advance_to(S + 100)
        self.assertEqual(len(self.refreshed), 2)
        self.assertGreater(self.store.calls["keys_present"], 40)

    def test_redis_down_then_back_empty(self) -> None:
        """Redis away, then back without its keys: one refresh once it answers."""
        self.refresh.startService()
        self.advance_to(S + 10)
        self.store.down = True
        self.advance_to(S + 30)
        self.store.flush()
        self.store.down = False
        self.advance_to(S + 33)
        self.assertEqual(len(self.refreshed), 2)


class LastRunPruneTests(RefreshCase):
    def test_deleted_schedules_last_runs_go_disabled_ones_stay(self) -> None:
        """A full refresh forgets the last runs of schedules that no longer
        exist (no slow leak), keeps those of disabled ones (they still guard
        runs if re-enabled) and of enabled ones."""
        old = S - 7200  # older than the store's grace for just-created schedules
        self.store.last_enqueued.update({"TS-A": old, "TS-OFF": old, "TS-DELETED": old})
        self.refresh.startService()
        self.advance_to(S + 1)
        self.assertEqual(self.store.last_enqueued, {"TS-A": old, "TS-OFF": old})


class OverlapTests(RefreshCase):
    interval = 10.0

    def test_slow_refresh_delays_the_next_tick(self) -> None:
        """A refresh still waiting on MariaDB when the period ends is not
        joined by a second one: one query in flight, however long."""
        self.db.hold.add("schedule_states")
        self.refresh.startService()
        self.advance_to(S + 5 * self.interval)
        self.assertEqual(self.db.calls["schedule_states"], 1)
        self.db.hold.clear()
        self.db.release()
        self.assertEqual(self.fifo.take(10), ["TS-A", "TS-B"])
        self.advance_to(S + 7 * self.interval)
        self.assertEqual(self.db.max_in_flight["schedule_states"], 1)

    def test_retry_in_flight_does_not_overlap_the_regular_tick(self) -> None:
        """A retry after a failure, still running when the period ends, is not
        overlapped by the period's regular refresh.

        DEFECT (btu_twisted/planning/refresh.py, FullRefresh._retry_now): retries run
        outside the LoopingCall (``Deferred.fromCoroutine`` on a separate
        ``callLater``), so the LoopingCall does not wait for them and starts
        its tick while a retry is in flight (and a retry likewise fires while
        a slow regular tick is in flight).  Expected: at most one refresh in
        flight; actual: two concurrent ``schedule_states`` queries at S + 10.
        """
        self.db.down = True
        self.refresh.startService()
        self.advance_to(S + 6)  # failed at S, S + 1, S + 3
        self.db.down = False
        self.db.hold.add("schedule_states")
        self.advance_to(S + self.interval + 1)  # retry at S + 7 hangs; tick at S + 10
        self.db.hold.clear()
        self.db.release()
        self.assertEqual(self.db.max_in_flight["schedule_states"], 1)


class StopTests(RefreshCase):
    def test_stop_when_idle(self) -> None:
        """Stopping between refreshes cancels the next one."""
        self.refresh.startService()
        self.assertTrue(self.clock.getDelayedCalls())
        self.assertIsNone(self.refresh.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.advance_to(S + 3 * self.interval)
        self.assertEqual(self.db.calls["schedule_states"], 1)

    def test_stop_while_retrying(self) -> None:
        """Stopping while a retry is scheduled cancels it."""
        self.db.down = True
        self.refresh.startService()
        self.advance_to(S + 2)
        self.successResultOf(_deferred(self.refresh.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refresh_finishing_after_stop_schedules_nothing(self) -> None:
        """A refresh in flight at stop that then fails schedules no retry,
        and one that succeeds schedules no next tick."""
        self.db.hold.add("schedule_states")
        self.refresh.startService()
        self.successResultOf(_deferred(self.refresh.stopService()))
        self.db.down = True
        self.assertEqual(self.db.release(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

        self.db.down = False
        self.refresh.startService()
        self.successResultOf(_deferred(self.refresh.stopService()))
        self.assertEqual(self.db.release(), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ChangedOnlyTests(unittest.TestCase):
    """A refresh with the planner's memory queues only what needs planning."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.fifo = ScheduleFifo()
        self.db = FakeDatabase(self.clock, [make_row(n) for n in ("A", "B", "C", "D", "a|b")])
        self.db.put(make_row("OFF", enabled=False))
        self.store = FakeStore(self.clock)
        self.planner = Planner(self.clock, self.fifo, self.db, self.store,  # type: ignore[arg-type]
                               default_zone="UTC")
        self.refresh = FullRefresh(self.clock, 3600.0, self.fifo, self.db,  # type: ignore[arg-type]
                                   self.store, memory=self.planner.memory)  # type: ignore[arg-type]
        self.addCleanup(self.refresh.stopService)
        self.refresh.startService()  # the first refresh: nothing planned yet, all queued
        self.assertEqual(self.fifo.take(10), ["A", "B", "C", "D", "a|b"])
        self.successResultOf(self.planner.plan(["A", "B", "C", "D", "a|b"]))

    def refresh_now(self) -> list[str]:
        self.successResultOf(self.refresh.trigger())
        return self.fifo.take(100)

    def test_nothing_changed_nothing_queued(self) -> None:
        """Rows as planned and every member in place: nothing is queued, and
        the planner reads nothing."""
        reads = self.db.calls["read_schedules"]
        self.assertEqual(self.refresh_now(), [])
        self.assertEqual(self.refresh.last["queued"], 0)
        self.assertEqual(self.refresh.last["schedules"], 5)
        self.assertEqual(self.db.calls["read_schedules"], reads)

    def test_keys_lost_queue_every_name_as_it_is_read(self) -> None:
        """Redis lost its keys: what the planner remembers planning is gone
        too, so each name is queued with its chunk of rows, before the prune
        (the planner starts at once), not after it as a missing member."""
        self.store.flush()
        self.store.hold.add("prune")
        prunes = self.store.calls["prune"]
        self.refresh._watch.stop()  # the check, by hand
        lost = self.refresh.check_keys()
        self.assertEqual(len(self.planner.memory), 0)
        self.assertEqual(self.fifo.take(10), ["A", "B", "C", "D", "a|b"])
        self.assertEqual(self.store.calls["prune"], prunes + 1)  # and held
        self.store.hold.clear()
        self.store.release()
        self.successResultOf(lost)
        self.assertEqual(self.fifo.take(10), [])
        self.assertEqual(self.refresh.keys_lost, 1)

    def test_changed_rows_and_missing_or_foreign_members_are_queued(self) -> None:
        """Queued: a cron edited behind ``modified``'s back, a task cancelled,
        a new schedule, a member gone (claimed, cancelled) and a member some
        other daemon replaced; not the schedule whose row and member are as
        planned."""
        self.db.update("A", cron_string="0 12 * * *")
        self.db.update("a|b", task_docstatus=2)
        self.db.put(make_row("NEW"))
        self.store.remove("B")
        self.store.add("C", S + 3600)
        self.assertEqual(sorted(self.refresh_now()), ["A", "B", "C", "NEW", "a|b"])
        self.assertEqual(self.refresh.last["queued"], 5)

    def test_a_claimed_member_not_replanned_yet_is_queued_and_counted(self) -> None:
        """A claim leaves the index naming its member until the replan: the
        prune drops that dangling entry, counts it removed, and queues it."""
        self.refresh_now()
        del self.store.zset[self.store.member_of("B")]
        self.assertEqual(self.refresh_now(), ["B"])
        self.assertEqual(self.refresh.last["removed"], 1)
        self.assertIsNone(self.store.member_of("B"))

    def test_a_zone_change_plans_everything_again(self) -> None:
        """A new cron_time_zone changes what every run means: all queued."""
        for name in ("A", "B", "C", "D", "a|b"):
            self.db.update(name, cron_time_zone="Asia/Tokyo")
        self.assertEqual(self.refresh_now(), ["A", "B", "C", "D", "a|b"])

    def test_disabled_then_enabled_again_is_planned(self) -> None:
        """A schedule disabled (its member pruned) and enabled again without
        any request is planned at the next refresh."""
        self.db.update("D", enabled=False)
        self.assertEqual(self.refresh_now(), ["D"])  # pruned: back to the planner
        self.successResultOf(self.planner.plan(["D"]))
        self.assertIsNone(self.store.member_of("D"))
        self.db.update("D", enabled=True)
        self.assertEqual(self.refresh_now(), ["D"])

    def test_trigger_during_a_refresh_runs_another_after_it(self) -> None:
        """The zone changes while a refresh is pruning, its rows read with
        the old zone (nothing to plan): the change feed's trigger does not
        join it, a second refresh follows and plans everything."""
        self.store.hold.add("prune")
        first = self.refresh.trigger()
        self.assertEqual(self.db.calls["schedule_states"], 2)
        for name in ("A", "B", "C", "D", "a|b"):
            self.db.update(name, cron_time_zone="Asia/Tokyo")
        second = self.refresh.trigger()
        self.assertEqual(self.store.release(), 1)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(self.fifo.take(10), ["A", "B", "C", "D", "a|b"])
        self.assertEqual(self.store.release(), 1)
        self.successResultOf(second)
        self.assertEqual(self.db.calls["schedule_states"], 3)
