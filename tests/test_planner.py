"""The planner, driven by a Clock: FIFO names become each schedule's one next run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.planning import planner as planner_module
from btu_twisted.planning.planner import Planner
from tests.fakes import EPOCH, FakeDatabase, FakeStore, make_row, run_until

S = EPOCH  # minute-aligned; "* * * * *" next runs at S + 60


def texts(events: Iterable[LogEvent], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e.get("log_level") == level]


def failures(events: Iterable[LogEvent]) -> list[LogEvent]:
    return [e for e in events if "log_failure" in e]


class PlannerCase(unittest.TestCase):
    """A Clock at S, fakes answering synchronously, a Planner stopped at the end."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.fifo = ScheduleFifo()
        self.db = FakeDatabase(self.clock)
        self.store = FakeStore(self.clock)
        self.planned: list[int] = []
        self.planner = Planner(
            self.clock,
            self.fifo,
            self.db,  # type: ignore[arg-type]
            self.store,  # type: ignore[arg-type]
            default_zone="UTC",
            on_planned=self.planned.append,
            dependencies=(self.db.health, self.store.health),
        )
        self.addCleanup(self.stop_and_check)

    def stop_and_check(self) -> None:
        """Every test ends with the planner stopped and no delayed call left."""
        if self.planner.running:
            stopped = _deferred(self.planner.stopService())
            run_until(self.clock, self.clock.seconds())
            self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def advance_to(self, when: float) -> None:
        run_until(self.clock, when)

    def reads(self) -> list[list[str]]:
        return [c.detail for c in self.db.calls_of("read_schedules")]


def _deferred(result: Deferred[None] | None) -> Deferred[None]:
    return result if isinstance(result, Deferred) else succeed(None)


class ConsumeTests(PlannerCase):
    def test_empty_fifo_reads_nothing_however_long(self) -> None:
        """With nothing queued the planner waits on the FIFO: no query, no
        Redis call and no timer, whatever the clock does."""
        self.planner.startService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**6)
        self.clock.advance(10**6)
        self.assertEqual(sum(self.db.calls.values()), 0)
        self.assertEqual(sum(self.store.calls.values()), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_names_planned_as_they_arrive(self) -> None:
        """Each name is planned as soon as it is queued, to its next run in
        the schedule's zone, and the timer hears of the new time."""
        self.db.put(make_row("TS-A"), make_row("TS-B", "30 9 * * *", zone="Europe/Paris"))
        self.planner.startService()
        self.clock.advance(10)
        self.fifo.add("TS-A")
        self.clock.advance(0)  # the planner lets a burst gather for one turn
        self.assertEqual(self.store.member_of("TS-A"), f"TS-A|{S + 60}")
        self.assertEqual(self.planned, [S + 60])
        self.clock.advance(100)
        self.fifo.add("TS-B")
        self.clock.advance(0)
        # 2027-01-15 09:30 in Paris (UTC+1) is 08:30 UTC, S + 30 min.
        self.assertEqual(self.store.member_of("TS-B"), f"TS-B|{S + 1800}")
        self.assertEqual(self.planned, [S + 60, S + 1800])
        self.assertEqual([c.at for c in self.db.calls_of("read_schedules")], [S + 10, S + 110])
        self.assertEqual(len(self.fifo), 0)

    def test_replanning_replaces_the_one_member(self) -> None:
        """A schedule whose cron changed has exactly one member afterwards,
        at the new time."""
        self.db.put(make_row("TS-A"))
        self.planner.startService()
        self.fifo.add("TS-A")
        self.clock.advance(0)
        self.db.update("TS-A", cron_string="0 12 * * *")
        self.fifo.add("TS-A")
        self.clock.advance(0)
        self.assertEqual(self.store.zset, {f"TS-A|{S + 4 * 3600}": S + 4 * 3600})


class BatchTests(PlannerCase):
    def test_queued_names_read_in_batches(self) -> None:
        """1,200 names waiting at start are read in ceil(1200 / 500) queries
        and written in as many store calls."""
        names = [f"TS-{i:04d}" for i in range(1200)]
        self.db.put(*(make_row(n) for n in names))
        self.fifo.extend(names)
        self.planner.startService()
        self.assertEqual([len(r) for r in self.reads()], [500, 500, 200])
        self.assertEqual(self.store.calls["plan"], 3)
        self.assertEqual(len(self.store.zset), 1200)
        self.assertEqual(self.planner.planned_total, 1200)

    def test_names_arriving_while_a_batch_is_read_wait_for_the_next(self) -> None:
        """With MariaDB answering asynchronously, a burst of 1,200 names
        arriving at a waiting planner is read in full batches: the planner
        lets the burst gather for one reactor turn before its first query."""
        self.db.latency = 0.0
        names = [f"TS-{i:04d}" for i in range(1200)]
        self.db.put(*(make_row(n) for n in names))
        self.planner.startService()
        self.fifo.extend(names)
        self.advance_to(S)
        self.assertEqual([len(r) for r in self.reads()], [500, 500, 200])
        self.assertEqual(len(self.store.zset), 1200)


class DrainedTests(PlannerCase):
    """Free heap memory goes back once the FIFO drains after a bulk (heap.py)."""

    def setUp(self) -> None:
        super().setUp()
        self.drained: list[int] = []
        self.planner._on_drained = lambda: self.drained.append(self.planner.planned_total)

    def test_called_once_when_a_bulk_has_drained(self) -> None:
        """1,200 names at start: one call, after the last batch, not after each."""
        names = [f"TS-{i:04d}" for i in range(1200)]
        self.db.put(*(make_row(n) for n in names))
        self.fifo.extend(names)
        self.planner.startService()
        self.assertEqual(self.drained, [1200])

    def test_not_called_for_a_few_names(self) -> None:
        """Names planned one by one (socket requests, replans) add up: the
        call comes only once DRAINED_AFTER of them have been planned."""
        self.db.put(make_row("TS-A"))
        self.planner.startService()
        for _ in range(planner_module.DRAINED_AFTER - 1):
            self.fifo.add("TS-A")
            self.clock.advance(0)
        self.assertEqual(self.drained, [])
        self.fifo.add("TS-A")
        self.clock.advance(0)
        self.assertEqual(self.drained, [planner_module.DRAINED_AFTER])


class UnplanTests(PlannerCase):
    def test_disabled_deleted_and_broken_schedules_lose_their_member(self) -> None:
        """Planning a disabled, a deleted or an unplannable schedule (bad
        cron, no cron, unknown zone) removes its member; an enabled one gets
        its next run."""
        self.db.put(
            make_row("TS-OFF", enabled=False),
            make_row("TS-BROKEN", "61 * * * *"),
            make_row("TS-EMPTY", ""),
            make_row("TS-ZONE", zone="Mars/Olympus_Mons"),
            make_row("TS-ON"),
        )
        names = ["TS-OFF", "TS-GONE", "TS-BROKEN", "TS-EMPTY", "TS-ZONE", "TS-ON"]
        for name in names:
            self.store.add(name, S + 3600)
        self.fifo.extend(names)
        self.planner.startService()
        self.assertEqual(self.store.zset, {f"TS-ON|{S + 60}": S + 60})
        self.assertEqual(self.store.index, {"TS-ON": f"TS-ON|{S + 60}"})

    def test_broken_cron_logged_once_until_reason_changes(self) -> None:
        """An unplannable schedule logs one error naming it and the reason;
        replanning it with the same reason logs nothing more; a different
        reason logs again; once fixed and broken again it logs again."""
        self.db.put(make_row("TS-X", "61 * * * *"))
        self.planner.startService()

        def errors_after_planning() -> list[str]:
            with capturedLogs() as events:
                self.fifo.add("TS-X")
                self.clock.advance(0)
            return texts(events, LogLevel.error)

        first = errors_after_planning()
        self.assertEqual(len(first), 1)
        self.assertIn("TS-X", first[0])
        self.assertIn("minute field '61' out of range", first[0])
        self.assertEqual(errors_after_planning(), [])
        self.assertEqual(errors_after_planning(), [])

        self.db.update("TS-X", cron_string="* * *")
        changed = errors_after_planning()
        self.assertEqual(len(changed), 1)
        self.assertIn("TS-X", changed[0])
        self.assertIn("3 fields", changed[0])

        self.db.update("TS-X", cron_string="* * * * *")
        self.assertEqual(errors_after_planning(), [])
        self.assertEqual(self.store.member_of("TS-X"), f"TS-X|{S + 60}")

        self.db.update("TS-X", cron_string="61 * * * *")
        self.assertEqual(len(errors_after_planning()), 1)
        self.assertIsNone(self.store.member_of("TS-X"))


class RejectedTests(PlannerCase):
    def test_time_already_enqueued_is_replanned_after_last_enqueued_run(self) -> None:
        """A next run at or before the schedule's last enqueued run (another
        daemon got there first) is refused by the store; the planner plans
        the run after that one instead, and tells the timer."""
        self.db.put(make_row("TS-A"), make_row("TS-B"))
        self.store.last_enqueued["TS-A"] = S + 60  # the very run we would plan
        self.store.last_enqueued["TS-B"] = S + 300  # far ahead of us
        self.fifo.extend(["TS-A", "TS-B"])
        self.planner.startService()
        self.assertEqual(self.store.member_of("TS-A"), f"TS-A|{S + 120}")
        self.assertEqual(self.store.member_of("TS-B"), f"TS-B|{S + 360}")
        self.assertEqual(self.planned, [S + 120])
        self.assertEqual(self.store.calls["plan"], 2)

    def test_member_already_due_is_kept(self) -> None:
        """A member already due belongs to the timer: replanning the schedule
        at that instant leaves it alone (the timer replans after its claim)."""
        self.db.put(make_row("TS-A"))
        self.store.add("TS-A", S)
        self.fifo.add("TS-A")
        self.planner.startService()
        self.assertEqual(self.store.zset, {f"TS-A|{S}": S})


class TaskStateTests(PlannerCase):
    def test_cancelled_or_missing_task_unplanned_draft_planned(self) -> None:
        """A schedule whose task is cancelled (docstatus 2) or missing has no
        run (logged once per state, the timer told to forget it); a draft
        task's schedule is planned, as BTU lets schedules link drafts."""
        forgotten: list[list[str]] = []
        self.planner._on_unplanned = forgotten.append
        self.db.put(
            make_row("TS-C", task_docstatus=2),
            make_row("TS-M", task_docstatus=None),
            make_row("TS-D", task_docstatus=0),
        )
        for name in ("TS-C", "TS-M", "TS-D"):
            self.store.add(name, S + 3600)
        self.planner.startService()
        with capturedLogs() as events:
            self.fifo.extend(["TS-C", "TS-M", "TS-D"])
            self.clock.advance(0)
            self.fifo.extend(["TS-C", "TS-M"])
            self.clock.advance(0)
        self.assertEqual(self.store.zset, {f"TS-D|{S + 60}": S + 60})
        lines = texts(events, LogLevel.info)
        self.assertEqual(len([t for t in lines if "TS-C" in t and "cancelled" in t]), 1, lines)
        self.assertEqual(len([t for t in lines if "TS-M" in t and "does not exist" in t]), 1)
        self.assertEqual(sorted(forgotten[0]), ["TS-C", "TS-M"])


class ClockAheadTests(PlannerCase):
    def test_last_run_far_ahead_is_reported_not_planned_years_ahead(self) -> None:
        """A last enqueued run years ahead (a clock that ran ahead) leaves the
        schedule unplanned with one error naming it and the way to clear it,
        a counted failure, and an entry in ``ahead``; once cleared it is
        planned normally."""
        failures: list[str] = []
        self.planner._on_failure = failures.append
        self.db.put(make_row("TS-A"))
        self.store.last_enqueued["TS-A"] = S + 7 * 365 * 86400
        self.planner.startService()
        with capturedLogs() as events:
            self.fifo.add("TS-A")
            self.clock.advance(0)
            self.fifo.add("TS-A")
            self.clock.advance(0)
        self.assertEqual(self.store.zset, {})
        errors = texts(events, LogLevel.error)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("TS-A", errors[0])
        self.assertIn("btu clear-last-run TS-A", errors[0])
        self.assertEqual(failures, ["last_run_ahead"])
        self.assertEqual(self.planner.ahead, {"TS-A": S + 7 * 365 * 86400})
        del self.store.last_enqueued["TS-A"]
        self.fifo.add("TS-A")
        self.clock.advance(0)
        self.assertEqual(self.store.member_of("TS-A"), f"TS-A|{S + 60}")
        self.assertEqual(self.planner.ahead, {})


class OutageTests(PlannerCase):
    def test_database_down_names_retried_with_backoff_logged_once(self) -> None:
        """MariaDB down: the batch goes back on the FIFO and is retried after
        1, 2, 4 s ...; the outage is logged once (by the Dependency) and no
        traceback is logged; when MariaDB is back everything is planned and
        the backoff starts from 1 s again for the next outage."""
        self.db.put(make_row("TS-A"), make_row("TS-B"))
        self.db.down = True
        self.fifo.extend(["TS-A", "TS-B"])
        with capturedLogs() as events:
            self.planner.startService()
            self.advance_to(S + 8)
            self.assertEqual(
                [c.at for c in self.db.calls_of("read_schedules")], [S, S + 1, S + 3, S + 7]
            )
            self.assertEqual(self.store.zset, {})
            self.assertEqual(len(self.fifo), 2)
            self.db.down = False
            self.advance_to(S + 20)
        self.assertEqual(self.db.calls_of("read_schedules")[-1].at, S + 15)
        self.assertEqual(sorted(self.store.index), ["TS-A", "TS-B"])
        self.assertEqual(len(self.fifo), 0)
        self.assertEqual(len(texts(events, LogLevel.error)), 1, texts(events))
        self.assertIn("MariaDB is unavailable", texts(events, LogLevel.error)[0])
        self.assertEqual(len([t for t in texts(events) if "available again" in t]), 1)
        self.assertEqual(failures(events), [])
        self.assertTrue(self.db.health.up)

        # Recovered: a new name is planned at once, a new outage retries after 1 s.
        self.db.put(make_row("TS-C"))
        self.fifo.add("TS-C")
        self.clock.advance(0)
        self.assertIsNotNone(self.store.member_of("TS-C"))
        self.db.down = True
        self.fifo.add("TS-A")
        at = self.clock.seconds()
        self.advance_to(at + 1)
        self.assertEqual([c.at for c in self.db.calls_of("read_schedules")][-2:], [at, at + 1])
        self.db.down = False
        self.advance_to(at + 10)

    def test_redis_down_names_retried_and_planned_after(self) -> None:
        """Redis down when the batch is written: the names go back on the
        FIFO, one line says Redis is unavailable, and they are planned once
        it is back."""
        self.db.put(make_row("TS-A"))
        self.store.down = True
        self.fifo.add("TS-A")
        with capturedLogs() as events:
            self.planner.startService()
            self.advance_to(S + 30)
            self.assertIn("TS-A", self.fifo)
            self.store.down = False
            self.advance_to(S + 60)
        self.assertEqual(self.store.member_of("TS-A"), f"TS-A|{S + 60}")
        self.assertEqual(len(texts(events, LogLevel.error)), 1, texts(events))
        self.assertEqual(failures(events), [])


class StopTests(PlannerCase):
    def test_stop_while_waiting_on_fifo(self) -> None:
        """Stopping a planner asleep on the FIFO finishes at once, leaves no
        delayed call, and a name queued afterwards stays queued."""
        self.planner.startService()
        self.successResultOf(_deferred(self.planner.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fifo.add("TS-A")
        self.assertEqual(len(self.fifo), 1)
        self.assertEqual(self.db.calls["read_schedules"], 0)

    def test_stop_during_backoff(self) -> None:
        """Stopping while waiting to retry after an outage cancels the wait;
        the names stay queued for the next start."""
        self.db.down = True
        self.fifo.add("TS-A")
        self.planner.startService()
        self.assertTrue(self.clock.getDelayedCalls())
        self.successResultOf(_deferred(self.planner.stopService()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIn("TS-A", self.fifo)

    def test_stop_during_a_read_waits_for_the_batch(self) -> None:
        """Stopping while a batch is being read finishes after that batch is
        written, and the planner takes nothing more from the FIFO."""
        self.db.put(make_row("TS-A"), make_row("TS-B"))
        self.db.hold.add("read_schedules")
        self.planner.startService()
        self.fifo.add("TS-A")
        self.clock.advance(0)
        stopped = _deferred(self.planner.stopService())
        self.assertNoResult(stopped)
        self.fifo.add("TS-B")
        self.assertEqual(self.db.release(), 1)
        self.successResultOf(stopped)
        self.assertIsNotNone(self.store.member_of("TS-A"))
        self.assertEqual(self.fifo.take(5), ["TS-B"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UnexpectedErrorTests(PlannerCase):
    def test_an_unexpected_cron_error_stays_with_its_schedule(self) -> None:
        """An exception the cron module did not foresee makes that schedule
        unplannable (one error naming it), while the rest of its batch is
        planned and nothing is retried forever."""
        from btu_twisted.planning import planner as planner_module

        real = planner_module.cron.next_run

        def next_run(cron_string: str, zone: object, after: float) -> int:
            if cron_string == "13 13 13 * *":
                raise OverflowError("date value out of range")
            return real(cron_string, zone, after)

        self.patch(planner_module.cron, "next_run", next_run)
        self.db.put(make_row("TS-ODD", "13 13 13 * *"), make_row("TS-OK"))
        self.planner.startService()
        with capturedLogs() as events:
            self.fifo.extend(["TS-ODD", "TS-OK"])
            self.clock.advance(0)
        self.assertIsNone(self.store.member_of("TS-ODD"))
        self.assertIsNotNone(self.store.member_of("TS-OK"))
        self.assertEqual(len(self.fifo), 0)
        errors = texts(events, LogLevel.error)
        self.assertEqual(len(errors), 1)
        self.assertIn("TS-ODD", errors[0])
        self.assertIn("OverflowError", errors[0])


class UrgentLaneTests(PlannerCase):
    def test_a_replan_after_a_run_overtakes_100000_refresh_names(self) -> None:
        """A full refresh has queued 100,000 names (the bulk lane) and the
        planner is reading its first batch of them when a run is enqueued and
        its schedule queued for its next run: the very next batch plans that
        schedule first, not after the 99,500 others."""
        names = [f"TS-{i:06d}" for i in range(100_000)]
        self.db.put(make_row("EVERY-SECOND", "* * * * * * *"))
        self.fifo.extend(names, bulk=True)
        self.db.hold.add("read_schedules")
        self.planner.startService()
        self.assertEqual(len(self.db.held), 1)
        self.fifo.add("EVERY-SECOND")
        self.assertEqual(self.db.release(), 1)
        self.assertEqual(self.db.release(), 1)
        self.assertEqual(self.reads()[1][0], "EVERY-SECOND")
        self.assertEqual(self.reads()[0][0], "TS-000000")
        self.assertEqual(self.store.member_of("EVERY-SECOND"), f"EVERY-SECOND|{S + 1}")
        self.assertEqual(len(self.reads()[1]), 500)  # the rest of its batch: refresh names
        self.db.hold.clear()
        self.fifo.take(len(self.fifo))
        self.assertEqual(self.db.release(), 1)


class SharedCronTests(PlannerCase):
    def test_schedules_sharing_a_cron_string_cost_one_computation_per_second(self) -> None:
        """1,000 schedules on two cron strings (one of them broken) and two
        zones cost four next-run computations; the next second, the same
        again; every schedule gets the run its own string and zone give."""
        computed: list[tuple[str | None, str | None]] = []
        real = planner_module.next_run_for

        def counting(row: Any, default_zone: str, after: float) -> int:
            computed.append((row.cron_string, row.cron_time_zone))
            return real(row, default_zone, after)

        self.patch(planner_module, "next_run_for", counting)
        crons = ["0 12 * * *", "61 * * * *"]
        rows = [make_row(f"TS-{i}", crons[i % 2], zone="Asia/Tokyo" if i % 3 else None)
                for i in range(1000)]
        self.db.put(*rows)
        self.planner.startService()
        with capturedLogs():
            self.fifo.extend(r.name for r in rows)
            self.clock.advance(0)
            self.assertEqual(len(computed), 4)
            self.clock.advance(1)
            self.fifo.extend(r.name for r in rows[:10])
            self.clock.advance(0)
        self.assertEqual(len(computed), 8)
        self.assertEqual(self.store.member_of("TS-0"), f"TS-0|{S + 4 * 3600}")  # noon UTC
        tokyo_noon = S + 4 * 3600 - 9 * 3600 + 24 * 3600  # 08:00 UTC is 17:00 in Tokyo
        self.assertEqual(self.store.member_of("TS-4"), f"TS-4|{tokyo_noon}")
        self.assertEqual(len(self.store.zset), 500)
