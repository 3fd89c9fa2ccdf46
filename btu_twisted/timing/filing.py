"""Filing the run history the claims left in Redis's inbox."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from btu_twisted.seams import TimerStore, as_deferred


class HistoryFiler:
    """One fold in flight at a time: the folds of a burst's rounds would
    otherwise compete with its claims for Redis; one more is asked for if
    claims came in during a fold."""

    # Its lines are the timer's, as they were before it had parts.
    log = Logger(namespace="btu_twisted.timing.timer.Timer")

    def __init__(self, store: TimerStore, running: Callable[[], bool]) -> None:
        self._store = store
        self._running = running
        self.folding: Deferred[None] | None = None  # filing the run history
        self._fold_again = False

    def fold(self) -> None:
        """File the run history entries claimed so far under their schedules
        (history.py), one fold at a time.  A failed fold loses nothing: the
        entries wait in Redis for the next one."""
        if self.folding is not None:
            self._fold_again = True
            return
        if not self._running():
            return
        # How many script calls it took matters to no one here.
        folding = as_deferred(self._store.fold_history()).addCallback(lambda _: None)
        folding.addErrback(lambda failure: self.log.debug(
            "run history not filed yet: {error}", error=failure.value))
        if folding.called:
            return
        self.folding = folding

        def done(_: object) -> None:
            self.folding = None
            if self._fold_again:
                self._fold_again = False
                self.fold()

        folding.addCallback(done)
