"""Schedule health as one part of a site's daemon: the job follower and who it tells.

The follower (timing/job_follower.py) is told of each run by the timer; it
tells the webhook (ops/health_webhook.py) of each change of state, and the
metrics (ops/health_metrics.py) and the status page read its records.  Off
with ``schedule_health = false``: then nothing is followed and nothing here
costs anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from btu_twisted.clock import as_clock
from btu_twisted.config import Config
from btu_twisted.daemon.parts import Part
from btu_twisted.seams import RowReader
from btu_twisted.store.claims import Claim
from btu_twisted.store.gateway import RedisCommands
from btu_twisted.store.health_record import LEVELS, thresholds_of
from btu_twisted.store.health_store import HealthStore
from btu_twisted.store.keys import Keys
from btu_twisted.store.pauses import Paused
from btu_twisted.timing.coalesced import CoalescedRuns
from btu_twisted.timing.job_follower import JobFollower

__all__ = ["PausedNames", "ScheduleHealth"]


class PausedNames:
    """The paused schedules as the follower asks for them (synchronously): read at
    start, then again when asked and the last read is ``interval`` seconds old, the
    answer serving the next ask.  Asked only when a schedule's state is worked
    out, so a bench of idle sites reads nothing.  A failed read keeps the last
    names: Redis being away is said once, by its Dependency."""

    def __init__(self, clock: IReactorTime, read: Callable[[], Awaitable[Paused]],
                 interval: float) -> None:
        self.current: frozenset[str] = frozenset()
        self._clock = as_clock(clock)
        self._read = read
        self._interval = interval
        self._read_at: float | None = None
        self._reading = False

    def names(self) -> frozenset[str]:
        if self._read_at is not None and self._clock.seconds() - self._read_at >= self._interval:
            self.start()
        return self.current

    def start(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._read_at = self._clock.seconds()
        d = Deferred.fromCoroutine(self.refresh())
        d.addErrback(lambda _: None)

    def stop(self) -> None:
        """Nothing runs between reads."""

    async def refresh(self) -> None:
        try:
            self.current = frozenset((await self._read()).since)
        finally:
            self._reading = False


def _inactive_of(rows: RowReader) -> Callable[[Sequence[str]], Awaitable[dict[str, str | None]]]:
    """Why each unplanned schedule does not run: None when its row is gone; left
    out when it is active (a cron that cannot be planned: the planner says why)."""

    async def inactive(names: Sequence[str]) -> dict[str, str | None]:
        found = await rows.read_schedules(list(names))
        why: dict[str, str | None] = {}
        for name in names:
            row = found.get(name)
            if row is None:
                why[name] = None
            elif (reason := row.inactive_reason()) is not None:
                why[name] = reason
        return why

    return inactive


class ScheduleHealth:
    """The follower of one site, or nothing when ``schedule_health`` is off."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        redis: RedisCommands,
        site: str | None = None,
        metrics: object = None,
        paused: Callable[[], Container[str]] = frozenset,
        rows: RowReader | None = None,
        paused_from: Callable[[], Awaitable[Paused]] | None = None,
    ) -> None:
        """``metrics``: the site's ops.metrics.Metrics (its ``registry`` gets the
        schedules' series), or anything else for none.  ``paused``: the names of
        the paused schedules (shown as paused, never alarming); ``paused_from``
        reads them from the store instead, once a follow interval (a pause may
        be taken by another daemon of the prefix).  ``rows``: where the rows are
        read to count the runs a late run covered (None: not counted)."""
        self.follower: JobFollower | None = None
        self._webhook: Any = None
        self._pauses: PausedNames | None = None
        if not config.schedule_health:
            return
        if paused_from is not None:
            self._pauses = PausedNames(reactor, paused_from, config.health_follow_secs)
            paused = self._pauses.names
        self.follower = JobFollower(
            reactor, HealthStore(redis, Keys(config.redis_key_prefix)), thresholds_of(config),
            config.health_follow_secs, paused=paused,
            coalesced=None if rows is None else CoalescedRuns(rows, config.time_zone_string),
            inactive=None if rows is None else _inactive_of(rows))
        if config.health_webhook_url:
            from btu_twisted.ops.health_webhook import HealthWebhook

            self._webhook = HealthWebhook(reactor, config.health_webhook_url, site)
            self.follower.listeners.append(self._webhook.changed)
        registry = getattr(metrics, "registry", None)
        if registry is not None:
            from btu_twisted.ops.health_metrics import ScheduleSource, collector_of

            follower = self.follower
            collector_of(registry).sources.append(ScheduleSource(
                site, lambda: follower.records, lambda: follower.states,
                config.health_metrics_max_schedules))

    def and_enqueued(self, first: Callable[[Claim, float], None]
                     ) -> Callable[[Claim, float], None]:
        """The timer's ``on_enqueued``: ``first``, then the follower is told."""
        follower = self.follower
        if follower is None:
            return first

        def enqueued(claim: Claim, lateness: float) -> None:
            first(claim, lateness)
            follower.enqueued(claim, lateness)

        return enqueued

    def and_unplanned(self, first: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
        """The planner's ``on_unplanned``: ``first``, then the follower is told."""
        follower = self.follower
        if follower is None:
            return first

        def unplanned(names: list[str]) -> None:
            first(names)
            follower.unplanned(names)

        return unplanned

    def with_unwell(self, status: Callable[[], Mapping[str, object]]
                    ) -> Callable[[], Mapping[str, object]]:
        """What the status page shows: ``status``, and the unwell schedules first."""
        return lambda: {**status(), "unwell_schedules": self.unwell()}

    def skipped(self, schedule: str, times: list[int]) -> None:
        if self.follower is not None:
            self.follower.skipped(schedule, times)

    def part(self) -> Part | None:
        if self.follower is None:
            return None
        follower = self.follower

        pauses = self._pauses

        def start() -> None:
            follower.start()  # its records are read meanwhile: never holds the timer up
            if pauses is not None:
                pauses.start()

        return Part("schedule health", start, self._stop)

    async def _stop(self) -> None:
        if self._pauses is not None:
            self._pauses.stop()
        if self._webhook is not None:
            self._webhook.stop()
        if self.follower is not None:
            await self.follower.stop()

    def unwell(self, limit: int = 100) -> list[Mapping[str, object]]:
        """What the status page lists first: the unwell schedules with their error."""
        if self.follower is None:
            return []
        return [{"name": name, "state": health.state, "level": LEVELS[health.level],
                 "reason": health.reason, "consecutive_failures": record.consecutive_failures,
                 "last_error": record.last_error, "last_failure": record.last_failure}
                for name, health, record in self.follower.unwell(limit)]
