"""The log lines of the timer's failed steps."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.seams import TimerStore


class StepReport:
    """Remembers the streak of failed steps, which a single log call cannot."""

    # Its lines are the timer's, as they were before it had parts.
    log = Logger(namespace="btu_twisted.timing.timer.Timer")

    def __init__(self, store: TimerStore) -> None:
        self._store = store
        self._step_failures = 0              # timer steps failed in a row
        self._step_failures_logged = False   # this streak's traceback is logged

    def report(self, failure: Failure | None, next_delay: float) -> None:
        """Log a streak of failed steps without flooding the journal.

        A Redis outage the health tracker has seen is its to report (one line
        each way).  Otherwise the first failure of a streak is unexpected and
        gets its traceback; the same failure repeated at every backoff retry
        says nothing new, so later ones get one short line each only when the
        count reaches a power of two (2, 4, 8, ...: about ten lines a day with
        30 s retries), and one line says when steps succeed again.
        """
        if failure is None:
            if self._step_failures and self._step_failures_logged:
                self.log.info(
                    "timer steps succeed again after {count} failures",
                    count=self._step_failures,
                )
            self._step_failures = 0
            self._step_failures_logged = False
            return
        self._step_failures += 1
        health = self._store.health
        if health is not None and not health.up:
            return
        count = self._step_failures
        if not self._step_failures_logged:
            self._step_failures_logged = True
            self.log.failure("timer step failed", failure)
        elif count & (count - 1) == 0:
            self.log.error(
                "timer step failed again ({count} in a row, next try in {delay:.0f} s): "
                "{error_type}: {error}",
                count=count, delay=next_delay,
                error_type=type(failure.value).__name__, error=failure.getErrorMessage(),
            )
