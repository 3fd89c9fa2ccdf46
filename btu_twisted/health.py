"""Up/down state of one outside service (MariaDB, Redis, the Frappe site).

An outage must produce one clear log line when it starts and one when it ends,
not one per schedule per second; the same state feeds the ``status`` request
and the metrics gauges.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class Dependency:
    """Remembers whether a service answered last time, and since when not."""

    log = Logger()

    def __init__(self, name: str, clock: IReactorTime) -> None:
        self.name = name
        self._clock = clock
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.recovered_at: float | None = None
        self.outages = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, reason: object, started: float | None = None) -> bool:
        """Record a failure; True (and one log line) only when an outage starts.

        ``started`` is when the failed attempt began: an attempt begun before
        the end of the last outage (a connect still failing from it, reported
        after another attempt already succeeded) says nothing new and does not
        start another outage.
        """
        self.last_error = _one_line(reason)
        if self.down_since is not None:
            return False
        if started is not None and self.recovered_at is not None and started < self.recovered_at:
            return False
        self.down_since = self._clock.seconds()
        self.outages += 1
        self.log.error(
            "{service} is unavailable: {reason} (retrying with backoff)",
            service=self.name,
            reason=self.last_error,
        )
        return True

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        self.recovered_at = self._clock.seconds()
        downtime = self._clock.seconds() - self.down_since
        self.down_since = None
        self.log.info(
            "{service} is available again after {downtime:.1f} s",
            service=self.name,
            downtime=downtime,
        )

    def snapshot(self) -> dict[str, object]:
        return {
            "state": "ok" if self.up else "down",
            "down_since": self.down_since,
            "last_error": None if self.up else self.last_error,
        }


def _one_line(reason: object) -> str:
    value = getattr(reason, "value", reason)  # a Failure carries the exception
    text = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else str(value)
    return " ".join(text.split())[:300]


class Backoff:
    """Exponential retry delays, reset by a success."""

    def __init__(self, first: float = 1.0, limit: float = 30.0) -> None:
        self._first = first
        self._limit = limit
        self._next = first

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._limit)
        return delay

    def reset(self) -> None:
        self._next = self._first
