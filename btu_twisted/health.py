"""State of one outside service (MariaDB, Redis, the Frappe site): ok, down or refusing.

An outage must produce one clear log line when it starts and one when it ends,
not one per schedule per second; the same state feeds the ``status`` request
and the metrics gauges.

"Refusing" is a third state for a service that answers but will not do what
the daemon asks (the site answering 401/403 to a wrong or revoked token).  It
is not an outage — nothing is retried, every run in the meantime is dropped —
so it must not look like "ok" either: one error line when it starts, again
every ``repeat_secs`` while it lasts (runs keep being dropped), one info line
when the service accepts requests again.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from btu_twisted.clock import as_clock
from btu_twisted.records import iso_utc

#: How often a refusal that goes on is reported again.
REFUSAL_REPEAT_SECS = 3600.0

OK = "ok"
DOWN = "down"
REFUSING = "refusing"
STATES = (OK, DOWN, REFUSING)


class Dependency:
    """Remembers whether a service answered last time, and since when not."""

    log = Logger()

    def __init__(
        self, name: str, clock: IReactorTime, repeat_secs: float = REFUSAL_REPEAT_SECS
    ) -> None:
        self.name = name
        self._clock = as_clock(clock)
        self._repeat = repeat_secs
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.recovered_at: float | None = None
        self.outages = 0
        self.refusing_since: float | None = None
        self.refusals = 0
        self._refusal_reported_at = 0.0
        self._refused_unreported = 0

    @property
    def up(self) -> bool:
        """True while the service answers (even when it refuses what it is asked)."""
        return self.down_since is None

    @property
    def state(self) -> str:
        if self.down_since is not None:
            return DOWN
        if self.refusing_since is not None:
            return REFUSING
        return OK

    def failed(self, reason: object, started: float | None = None) -> bool:
        """Record a failure; True (and one log line) only when an outage starts.

        ``started`` is when the failed attempt began: an attempt begun before
        the end of the last outage (a connect still failing from it, reported
        after another attempt already succeeded) says nothing new and does not
        start another outage.  A service that stops answering while it was
        refusing is down now; it has not accepted anything, so no "accepts
        again" line.
        """
        self.last_error = _one_line(reason)
        if self.down_since is not None:
            return False
        if started is not None and self.recovered_at is not None and started < self.recovered_at:
            return False
        self.refusing_since = None
        self.down_since = self._clock.seconds()
        self.outages += 1
        self.log.error(
            "{service} is unavailable: {reason} (retrying with backoff)",
            service=self.name,
            reason=self.last_error,
        )
        return True

    def refused(self, reason: object) -> bool:
        """Record a refusal; True (and one error line) only when refusing starts.

        A refusal is an answer, so an outage in progress ends here.  While the
        refusals go on, one more error line every ``repeat_secs`` (at the
        first refusal after that long) says so and how many were refused
        since, so a journal read hours later still shows the runs are dropped.
        """
        self.last_error = _one_line(reason)
        if self.down_since is not None:
            self.succeeded()
        now = self._clock.seconds()
        if self.refusing_since is None:
            self.refusing_since = now
            self.refusals += 1
            self._refusal_reported_at = now
            self._refused_unreported = 0
            self.log.error(
                "{service} is refusing the daemon's requests: {reason} "
                "(runs are dropped until it accepts them)",
                service=self.name,
                reason=self.last_error,
            )
            return True
        self._refused_unreported += 1
        if now - self._refusal_reported_at >= self._repeat:
            self.log.error(
                "{service} is still refusing the daemon's requests after {refusing_secs:.0f} s "
                "({count} refused since the last report): {reason}",
                service=self.name,
                refusing_secs=now - self.refusing_since,
                count=self._refused_unreported,
                reason=self.last_error,
            )
            self._refusal_reported_at = now
            self._refused_unreported = 0
        return False

    def succeeded(self) -> None:
        if self.refusing_since is not None:
            refusing = self._clock.seconds() - self.refusing_since
            self.refusing_since = None
            self.log.info(
                "{service} accepts the daemon's requests again after {refusing_secs:.1f} s "
                "of refusals",
                service=self.name,
                refusing_secs=refusing,
            )
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
        """The state for ``status``: times as ISO 8601 UTC, the reason while not ok."""
        state = self.state
        return {
            "state": state,
            "down_since": iso_utc(self.down_since),
            "refusing_since": iso_utc(self.refusing_since),
            "last_error": None if state == OK else self.last_error,
            "outages": self.outages,
            "refusals": self.refusals,
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
