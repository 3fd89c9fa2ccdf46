"""Pausing (``btu pause``/``resume``) and history that belongs to one schedule's life.

Clock-driven, on the fakes: the control's replies and what they do to the
FIFO, the timer and the store; the planner and the full refresh leaving a
paused schedule out; a schedule found deleted losing its history and pause.
The store's scripts themselves are held to the same rules by the store cases
(tests/store_cases.py), on real Redis and on the fake.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from btu_twisted.daemon.control import GONE_CHECK_SECS, SiteControl
from btu_twisted.daemon.protocol import ControlFactory
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.planning.planner import Planner
from btu_twisted.planning.refresh import FullRefresh
from btu_twisted.seams import UnknownSchedule
from btu_twisted.sources.combined import FileSchedules, ScheduleSources
from btu_twisted.store.history import ENQUEUED, PAUSED, RESUMED, encode_run, parse_run
from btu_twisted.store.pauses import rq_time
from tests.fakes import EPOCH, FakeDatabase, FakeStore, make_row, run_until

S = EPOCH  # minute-aligned: "* * * * *" runs at S + 60


class Parts:
    """What SiteControl reads of a site, on the fakes (a file schedule and MariaDB)."""

    def __init__(self, clock: Clock) -> None:
        self.fifo = ScheduleFifo()
        self.db = FakeDatabase(clock)
        self.db.put(make_row("TS-1"), make_row("TS-2"))
        self.file = FileSchedules("/nowhere/schedules.toml")
        self.file.replace({"file-1": make_row("file-1")})
        self.sources = ScheduleSources(clock, self.db, self.file)  # type: ignore[arg-type]
        self.store = FakeStore(clock)
        self.forgotten: list[str] = []
        self.timer = SimpleNamespace(forget=self.forgotten.extend)

    def outcomes(self, name: str) -> list[str]:
        return [run.outcome for run in map(parse_run, self.store.run_history.get(name, []))
                if run is not None]


class ControlCase(unittest.TestCase):
    """A real SiteControl on fake parts, at second S."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.parts = Parts(self.clock)
        self.control = SiteControl(self.clock, self.parts, dependencies=dict)  # type: ignore[arg-type]
        self.addCleanup(self.control.stop)


class ControlTests(ControlCase):
    def test_pause_removes_the_member_and_keeps_it_from_coming_back(self) -> None:
        """A pause drops the planned member, the name waiting in the FIFO and the timer's
        builds, records when in Redis and in the history, and answers one line."""
        self.parts.store.add("TS-1", S + 60)
        self.parts.fifo.add("TS-1")
        reply = self.successResultOf(self.control.pause("TS-1"))
        self.assertEqual(reply, "Paused Task Schedule TS-1: no run is planned until "
                                "'btu resume TS-1'.")
        self.assertIsNone(self.parts.store.member_of("TS-1"))
        self.assertEqual(len(self.parts.fifo), 0)
        self.assertEqual(self.parts.forgotten, ["TS-1"])
        self.assertEqual(self.parts.store.paused_since, {"TS-1": S})
        self.assertEqual(self.parts.store.run_history["TS-1"],
                         [encode_run(S, rq_time(S), None, PAUSED)])

    def test_pause_twice_says_so(self) -> None:
        """Pausing a paused schedule changes nothing and says it was already paused."""
        self.successResultOf(self.control.pause("TS-1"))
        self.clock.advance(10)
        reply = self.successResultOf(self.control.pause("TS-1"))
        self.assertIn("already paused", reply)
        self.assertEqual(self.parts.store.paused_since, {"TS-1": S})
        self.assertEqual(self.parts.outcomes("TS-1"), [PAUSED])

    def test_unknown_name_fails(self) -> None:
        """A name no source has is an UnknownSchedule (exit 1 in ``btu``); nothing paused."""
        for action in (self.control.pause, self.control.resume):
            failure = self.failureResultOf(action("NOSUCH"), UnknownSchedule)
            self.assertIn("no Task Schedule named NOSUCH", failure.getErrorMessage())
        self.assertEqual(self.parts.store.paused_since, {})

    def test_resume_plans_from_now(self) -> None:
        """A resume lifts the pause, records it and puts the name on the FIFO (the
        planner plans from now); a schedule not paused says so and queues nothing."""
        reply = self.successResultOf(self.control.resume("TS-1"))
        self.assertEqual(reply, "Task Schedule TS-1 is not paused; nothing to resume.")
        self.assertEqual(len(self.parts.fifo), 0)
        self.successResultOf(self.control.pause("TS-1"))
        self.clock.advance(3600)
        reply = self.successResultOf(self.control.resume("TS-1"))
        self.assertTrue(reply.startswith("Resumed Task Schedule TS-1"), reply)
        self.assertEqual(self.parts.store.paused_since, {})
        self.assertEqual(self.parts.fifo.take(10), ["TS-1"])
        self.assertEqual(self.parts.outcomes("TS-1"), [RESUMED, PAUSED])

    def test_file_schedules_pause_too(self) -> None:
        """A schedules-file schedule is paused like a MariaDB one."""
        self.successResultOf(self.control.pause("file-1"))
        self.assertIn("file-1", self.parts.store.paused_since)

    def test_cancel_note_only_for_file_schedules(self) -> None:
        """A file schedule's cancel says it comes back and points to pause; a MariaDB
        schedule's reply stays as the BTU app knows it."""
        note = self.control.cancel_note("file-1")
        assert note is not None
        self.assertIn("comes back at the next full refresh", note)
        self.assertIn("btu pause file-1", note)
        self.assertIsNone(self.control.cancel_note("TS-1"))

    def test_cancel_of_a_deleted_row_ends_its_life(self) -> None:
        """The BTU app cancels before its delete commits: GONE_CHECK_SECS later the row
        is looked for, and a deleted one loses its history and pause; one still there
        keeps them."""
        for name in ("TS-1", "TS-2"):
            self.parts.store.run_history[name] = [encode_run(S - 60, "t", "J", ENQUEUED)]
        self.parts.store.paused_since["TS-1"] = S - 60
        self.successResultOf(self.control.cancel("TS-1"))
        self.successResultOf(self.control.cancel("TS-2"))
        self.parts.db.delete("TS-1")
        run_until(self.clock, S + GONE_CHECK_SECS)
        self.assertNotIn("TS-1", self.parts.store.run_history)
        self.assertEqual(self.parts.store.paused_since, {})
        self.assertIn("TS-2", self.parts.store.run_history)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_drops_pending_checks(self) -> None:
        """A stopping service leaves no delayed call behind."""
        self.successResultOf(self.control.cancel("TS-1"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.control.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ProtocolTests(ControlCase):
    """The new request types over the real protocol and a real SiteControl."""

    def ask(self, request_type: str, content: Any) -> str:
        protocol = ControlFactory(self.control, self.clock).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        line = json.dumps({"request_type": request_type, "request_content": content}) + "\n"
        protocol.dataReceived(line.encode())
        reply = transport.value().decode()
        protocol.connectionLost(None)
        return reply

    def test_requests(self) -> None:
        self.assertTrue(self.ask("pause_task_schedule", "TS-1").startswith("Paused"))
        self.assertIn("already paused", self.ask("pause_task_schedule", "TS-1"))
        self.assertEqual(self.ask("pause_task_schedule", "NOSUCH"),
                         "Error: no Task Schedule named NOSUCH; nothing to pause.\n")
        self.assertEqual(self.ask("resume_task_schedule", "NOSUCH"),
                         "Error: no Task Schedule named NOSUCH; nothing to resume.\n")
        self.assertTrue(self.ask("resume_task_schedule", "TS-1").startswith("Resumed"))
        reply = self.ask("cancel_task_schedule", "file-1")
        self.assertTrue(reply.startswith("BTU Task Schedule file-1 was not scheduled in Python "
                                         "RQ; nothing to cancel. It is in the schedules file"),
                        reply)
        self.assertEqual(self.ask("cancel_task_schedule", "TS-2"),
                         "BTU Task Schedule TS-2 was not scheduled in Python RQ; nothing to "
                         "cancel.\n")


class PlanningTests(unittest.TestCase):
    """The planner and the full refresh honour a pause; a deleted row ends a life."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(S)
        self.fifo = ScheduleFifo()
        self.db = FakeDatabase(self.clock)
        self.db.put(make_row("TS-1"), make_row("TS-2"))
        self.store = FakeStore(self.clock)
        self.unplanned: list[str] = []
        self.planner = Planner(self.clock, self.fifo, self.db, self.store,  # type: ignore[arg-type]
                               default_zone="UTC", on_unplanned=self.unplanned.extend)

    def plan(self, *names: str) -> dict[str, int]:
        return self.successResultOf(self.planner.plan(list(names)))

    def test_paused_schedule_is_not_planned(self) -> None:
        """plan.lua leaves a paused schedule out: no member, told to the timer,
        not remembered as planned (so the refresh looks at it again)."""
        self.store.add("TS-1", S + 60)
        self.store.paused_since["TS-1"] = S
        self.assertEqual(self.plan("TS-1", "TS-2"), {"TS-2": S + 60})
        self.assertIsNone(self.store.member_of("TS-1"))
        self.assertEqual(self.unplanned, ["TS-1"])
        self.assertFalse(self.planner.memory.matches("TS-1", 0))
        self.assertEqual(self.planner.planned_total, 1)

    def test_resumed_schedule_is_planned_from_now(self) -> None:
        """Paused for an hour: the runs of that hour are not fired; the next run is
        the first one after the resume."""
        self.store.paused_since["TS-1"] = S
        self.plan("TS-1")
        self.clock.advance(3600)
        del self.store.paused_since["TS-1"]
        self.assertEqual(self.plan("TS-1"), {"TS-1": S + 3600 + 60})

    def test_full_refresh_keeps_a_paused_schedule_unplanned(self) -> None:
        """Every refresh queues the paused schedule (it has no member) and the
        planner leaves it out again, however many refreshes there are."""
        self.store.paused_since["TS-1"] = S
        refresh = FullRefresh(self.clock, 3600, self.fifo, self.db, self.store,  # type: ignore[arg-type]
                              memory=self.planner.memory)
        for _ in range(2):
            self.successResultOf(refresh.refresh())
            self.plan(*self.fifo.take(100))
            self.assertEqual(set(self.store.index), {"TS-2"})
            self.clock.advance(3600)

    def test_full_refresh_clears_pauses_of_deleted_schedules(self) -> None:
        """A schedule deleted unseen (no cancel, no request) loses its pause at the next
        full refresh; a pause taken after the refresh began reading is kept (it may
        be a schedule created since)."""
        self.store.paused_since.update({"GONE": S - 10, "TS-1": S - 10, "NEWER": S + 5})
        refresh = FullRefresh(self.clock, 3600, self.fifo, self.db, self.store,  # type: ignore[arg-type]
                              memory=self.planner.memory)
        self.successResultOf(refresh.refresh())
        self.assertEqual(self.store.closed, [["GONE"]])
        self.assertEqual(set(self.store.paused_since), {"TS-1", "NEWER"})

    def test_deleted_row_ends_its_life(self) -> None:
        """A row read as deleted loses its history and pause, so a new schedule
        created under the same name starts with an empty history."""
        self.store.run_history["TS-1"] = [encode_run(S - 60, "t", "J1", ENQUEUED)]
        self.store.paused_since["TS-1"] = S - 60
        self.store.last_job["TS-1"] = "J1"
        self.db.delete("TS-1")
        self.plan("TS-1", "TS-2")
        self.assertEqual(self.store.closed, [["TS-1"]])
        self.assertNotIn("TS-1", self.store.run_history)
        self.assertEqual((self.store.paused_since, self.store.last_job), ({}, {}))
        self.db.put(make_row("TS-1"))  # Frappe reuses the name
        self.assertEqual(self.plan("TS-1"), {"TS-1": S + 60})
        self.assertNotIn("TS-1", self.store.run_history)

    def test_existing_rows_close_nothing(self) -> None:
        """Planning rows that exist makes no close_lives call at all."""
        self.plan("TS-1", "TS-2")
        self.assertEqual(self.store.closed, [])
