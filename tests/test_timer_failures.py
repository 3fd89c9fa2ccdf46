"""Failed timer steps that the health tracker does not explain: logged once
with a traceback, then sparsely, then once when steps succeed again."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.logger import LogEvent, LogLevel, capturedLogs

from btu_twisted.store.schedule_store import Window
from tests.test_timer import S, T, TimerCase, mentioning, texts


class StepFailureTests(TimerCase):
    def break_window(self) -> list[float]:
        """Make every window read fail with an error Redis's health does not
        see (a bug, a reply the gateway could not parse); returns the times
        of the failed reads."""
        failed_at: list[float] = []
        working = self.store.window

        def broken(horizon: float, limit: int) -> Deferred[Window]:
            failed_at.append(self.clock.seconds())
            return fail(RuntimeError("window reply unreadable (test)"))

        self.store.window = broken  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store, "window", working)
        return failed_at

    def mend_window(self) -> None:
        del self.store.window  # the class's method again

    def tracebacks(self, events: list[LogEvent]) -> list[LogEvent]:
        """The events logged with a traceback (trial's own check of logged
        errors is told they are expected)."""
        self.flushLoggedErrors(RuntimeError)
        return [e for e in events if "log_failure" in e]

    def test_long_streak_logs_one_traceback_then_powers_of_two(self) -> None:
        """Ten minutes of failing steps (retried with backoff up to 30 s):
        one traceback for the first, one short line at the 2nd, 4th, 8th and
        16th failure naming the count, the next delay and the error, nothing
        for the others; one line when steps succeed again."""
        self.schedule("TS-1", T + 3600)
        failed_at = self.break_window()
        with capturedLogs() as events:
            self.timer.startService()
            self.advance_to(S + 600)
        self.assertGreater(len(failed_at), 16)
        self.assertLess(len(failed_at), 32)
        [traceback] = self.tracebacks(events)
        self.assertIn("timer step failed", texts([traceback])[0])
        self.assertIs(traceback["log_failure"].type, RuntimeError)
        again = mentioning(events, "timer step failed again")
        self.assertEqual(len(again), 4, texts(events))
        for count, line in zip((2, 4, 8, 16), again, strict=True):
            self.assertIn(f"({count} in a row, next try in ", line)
            self.assertIn("RuntimeError: window reply unreadable (test)", line)
        self.assertIn("next try in 2 s", again[0])  # backoff 1, 2, 4, ...
        self.assertEqual(len(events), 5, texts(events))

        failures = len(failed_at)
        self.mend_window()
        with capturedLogs() as events:
            self.advance_to(S + 700)
        self.assertEqual(
            texts(events), [f"timer steps succeed again after {failures} failures"]
        )
        self.assertEqual(events[0]["log_level"], LogLevel.info)

    def test_next_streak_gets_its_own_traceback(self) -> None:
        """A success ends the streak: the next failure is unexpected again."""
        failed_at = self.break_window()
        with capturedLogs() as events:
            self.timer.startService()
            self.settle()
            self.mend_window()
            self.advance_to(S + 5)
            self.break_window()
            self.timer.planned(S)  # wake it now
            self.settle()
        self.assertEqual(len(failed_at), 1)
        self.assertEqual(len(self.tracebacks(events)), 2, texts(events))
        self.assertEqual(mentioning(events, "timer step failed again"), [])
        self.assertEqual(mentioning(events, "succeed again after 1 failures"), [
            "timer steps succeed again after 1 failures"])

    def test_outage_the_health_tracker_reported_adds_nothing(self) -> None:
        """Redis down (its Dependency logs the outage and the recovery): the
        timer's failed steps add no line of their own, not even at recovery."""
        self.schedule("TS-1", S + 400)
        self.store.down = True
        with capturedLogs() as events:
            self.timer.startService()
            self.advance_to(S + 300)
            self.store.down = False
            self.advance_to(S + 405)
        self.assertEqual(self.job_count("TS-1"), 1)
        self.assertEqual(mentioning(events, "timer step"), [])
        self.assertEqual(self.tracebacks(events), [])


class RowReadFailureTests(TimerCase):
    """A due run's rows that cannot be read: retried, and said once."""

    def break_reads(self, error: Exception) -> list[object]:
        tries: list[object] = []

        def read(names: object) -> Deferred[object]:
            tries.append(names)
            return fail(error)

        self.db.read_schedules = read  # type: ignore[method-assign]
        return tries

    def test_unexpected_read_error_is_one_warning_per_kind(self) -> None:
        """A SQL error while MariaDB is up (a column the BTU app dropped) is
        one warning however often the read is retried; the run goes out once
        the rows can be read; a different error later is warned of again."""
        self.schedule("TS-1", T)
        tries = self.break_reads(RuntimeError("(1054, \"Unknown column 't.arguments'\")"))
        with capturedLogs() as events:
            self.timer.startService()
            self.advance_to(T + 60)
        self.assertGreater(len(tries), 3)
        warned = mentioning(events, "could not be read")
        self.assertEqual(len(warned), 1, texts(events))
        self.assertIn("Unknown column", warned[0])
        self.assertEqual(self.job_count("TS-1"), 0)
        del self.db.read_schedules  # the class's method again
        self.advance_to(T + 120)
        self.assertEqual(self.job_count("TS-1"), 1)
        self.schedule("TS-2", T + 200)
        self.break_reads(RuntimeError("(1146, \"Table 'tabBTU Task' doesn't exist\")"))
        with capturedLogs() as events:
            self.advance_to(T + 260)
        self.assertEqual(len(mentioning(events, "could not be read", "1146")), 1, texts(events))

    def test_an_outage_is_left_to_the_database_health(self) -> None:
        """MariaDB down: its health logs the outage; the timer adds no warning."""
        self.schedule("TS-1", T)
        self.db.down = True
        with capturedLogs() as events:
            self.timer.startService()
            self.advance_to(T + 30)
            self.db.down = False
            self.advance_to(T + 90)
        self.assertEqual(self.job_count("TS-1"), 1)
        self.assertEqual(mentioning(events, "could not be read"), [], texts(events))
