"""Full refresh: whatever happened to Redis, it heals within one period.

At start and every ``full_refresh_internal_secs`` the names of all enabled
schedules go onto the FIFO, and members of schedules that are no longer
enabled (or stale duplicates) are removed.  A refresh that fails (MariaDB or
Redis down) is retried with backoff rather than a whole period later, so a
daemon started during an outage plans everything soon after it ends.

Redis may also come back empty (no persistence, FLUSHDB, failover to an empty
replica): every refresh sets a marker key, and every ``watch_interval``
seconds a cheap EXISTS checks it; when it is gone, a refresh starts at once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff
from btu_twisted.sql import Database
from btu_twisted.store import ScheduleStore

WATCH_SECS = 2.0


class FullRefresh(Service):
    log = Logger()
    name = "refresh"

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        fifo: ScheduleFifo,
        db: Database,
        store: ScheduleStore,
        on_refreshed: Callable[[float, float, int], None] = lambda at, duration, members: None,
        watch_interval: float = WATCH_SECS,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._fifo = fifo
        self._db = db
        self._store = store
        self._on_refreshed = on_refreshed
        self._backoff = Backoff(first=1.0, limit=min(60.0, interval))
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._watch_interval = watch_interval
        self._watch = LoopingCall(self._check_keys)
        self._watch.clock = clock
        self.keys_lost = 0
        self._retry: IDelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self.last: dict[str, object] = {}

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)
        self._watch.start(self._watch_interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for loop in (self._loop, self._watch):
            if loop.running:
                loop.stop()
        return None

    def trigger(self) -> Deferred[None]:
        """Plan everything again now (or join the refresh in flight)."""
        return self._start_refresh()

    def _check_keys(self) -> Deferred[None] | None:
        if self._in_flight is not None:
            return None
        d = Deferred.fromCoroutine(self._keys_lost())
        # Redis away: its Dependency has logged the outage; the next look
        # after it returns finds out whether the keys survived.
        d.addErrback(lambda failure: self.log.debug("key check failed: {f}", f=failure.value))
        return d

    async def _keys_lost(self) -> None:
        if await self._store.keys_present():
            return
        self.keys_lost += 1
        emit = self.log.warn if self.last else self.log.debug
        emit(
            "Redis has lost the scheduler's keys (restarted without persistence, flushed "
            "or failed over); planning every enabled schedule again"
        )
        if self._retry is not None and self._retry.active():
            self._retry.cancel()  # this refresh is the retry
        self._retry = None
        await self._start_refresh()

    def _tick(self) -> Deferred[None]:
        # Returning the Deferred keeps ticks from overlapping; it never fails,
        # so the LoopingCall never stops.
        return self._start_refresh()

    def _start_refresh(self) -> Deferred[None]:
        """One refresh at a time: a tick or retry during a refresh joins it."""
        if self._in_flight is None:
            d = Deferred.fromCoroutine(self._refresh_logged())
            if not d.called:
                self._in_flight = d
                d.addBoth(self._finished)
            return d
        joined: Deferred[None] = Deferred()
        self._in_flight.addBoth(lambda result: (joined.callback(None), result)[1])
        return joined

    def _finished(self, result: object) -> object:
        self._in_flight = None
        return result

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception:
            if self._db.health.up and self._store_up():
                self.log.failure("full refresh failed")
            delay = self._backoff.next_delay()
            if self.running and (self._retry is None or not self._retry.active()):
                self._retry = self._clock.callLater(delay, self._retry_now)
        else:
            self._backoff.reset()

    def _retry_now(self) -> None:
        self._retry = None
        if self.running:
            self._start_refresh()

    def _store_up(self) -> bool:
        health = self._store.health
        return health is None or health.up

    async def refresh(self) -> int:
        """Queue every enabled schedule and prune the rest; returns the count."""
        started = self._clock.seconds()
        await self._store.mark_planned()
        names = await self._db.enabled_names()
        existing = await self._db.all_names()
        refused = self._fifo.extend(names, bulk=True)
        # The last runs of deleted schedules go too (those of disabled ones
        # stay: they still guard the runs if the schedule is enabled again).
        removed = await self._store.prune(names, existing)
        # A name removed here may have been enabled (and planned) just after
        # our SELECT; planning it again costs one read and settles it.
        self._fifo.extend(removed, bulk=True)
        duration = self._clock.seconds() - started
        self._on_refreshed(started, duration, await self._store.count())
        self.last = {
            "at": started,
            "duration": duration,
            "schedules": len(names),
            "removed": len(removed),
            "refused": refused,
        }
        self.log.info(
            "full refresh: {count} enabled schedules queued for planning, "
            "{removed} stale members removed",
            count=len(names),
            removed=len(removed),
        )
        return len(names)
