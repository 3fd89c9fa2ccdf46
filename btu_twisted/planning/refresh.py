"""Full refresh: whatever happened to Redis, it heals within one period.

At start and every ``full_refresh_internal_secs`` the enabled schedules that
need planning go onto the FIFO (the bulk lane), and members of schedules that
are no longer enabled (or stale duplicates) are removed.  Which ones need
planning: those the planner has not planned from the row as it is now, or
whose member is not the one it planned (plan_memory.py) — at start all of
them, later only what changed, however many schedules there are.  Rows are
read a chunk at a time and Redis a page at a time, so neither the reactor
nor Redis is held up by the size of the whole.  A refresh that fails
(MariaDB or Redis down) is retried with backoff rather than a whole period
later, so a daemon started during an outage plans everything soon after it
ends.

Redis may also come back empty (no persistence, FLUSHDB, failover to an empty
replica): every refresh sets a marker key, and every ``watch_interval``
seconds a cheap EXISTS checks it; when it is gone, a refresh starts at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.clock import Clock, DelayedCall, reactor_time
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff
from btu_twisted.planning.memory import PlanMemory
from btu_twisted.seams import RefreshStore
from btu_twisted.sources.mariadb import STATES_CHUNK

if TYPE_CHECKING:
    from btu_twisted.sources.combined import ScheduleSources
    from btu_twisted.sources.mariadb import Database

WATCH_SECS = 2.0


class FullRefresh(Service):
    log = Logger()
    name = "refresh"

    def __init__(
        self,
        clock: Clock,
        interval: float,
        fifo: ScheduleFifo,
        db: Database | ScheduleSources,
        store: RefreshStore,
        on_refreshed: Callable[[float, float, int], None] = lambda at, duration, members: None,
        watch_interval: float = WATCH_SECS,
        memory: PlanMemory | None = None,
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._fifo = fifo
        self._db = db
        self._store = store
        self._on_refreshed = on_refreshed
        self._backoff = Backoff(first=1.0, limit=min(60.0, interval))
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor_time(clock)
        self._watch_interval = watch_interval
        self._watch = LoopingCall(self.check_keys)
        self._watch.clock = reactor_time(clock)
        self.keys_lost = 0
        self._retry: DelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self._again: Deferred[None] | None = None
        # The planner's; without it every enabled schedule is queued each time.
        self._memory = memory if memory is not None else PlanMemory()
        self.last: dict[str, object] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._loop.start(self._interval, now=True)
        self._watch.start(self._watch_interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for loop in (self._loop, self._watch):
            if loop.running:
                loop.stop()
        return None

    def trigger(self) -> Deferred[None]:
        """Look at every schedule again now, or, when a refresh is in flight,
        as soon as it ends: it may have compared rows read before whatever
        prompted this (a new ``cron_time_zone``)."""
        if self._in_flight is None:
            return self._start_refresh()
        if self._again is None:
            again: Deferred[None] = Deferred()
            self._again = again

            def then(result: object) -> object:
                self._again = None
                if self.running:
                    self._start_refresh().chainDeferred(again)
                else:
                    again.callback(None)
                return result

            self._in_flight.addBoth(then)
        joined: Deferred[None] = Deferred()
        self._again.addBoth(_fire_then_pass, joined)
        return joined

    def check_keys(self) -> Deferred[None] | None:
        """Replan everything if Redis lost our keys; a bench's daemon calls this for a
        site whose marker its one bench-wide look (key_watch) found gone."""
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
        # Every member the planner remembers planning is gone: forgotten, each
        # name is queued as its chunk of rows is read and the planner starts
        # at once, instead of every name waiting, in a set and then a sorted
        # list, for the whole read and the prune to find its member missing.
        self._memory.clear()
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
        self._in_flight.addBoth(_fire_then_pass, joined)
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
        """Queue the enabled schedules that need planning and prune the rest;
        returns how many are enabled."""
        started = self._clock.seconds()
        await self._store.mark_planned()
        memory = self._memory
        enabled: set[str] = set()
        # The schedules there are besides the enabled ones, for the store to
        # keep their last runs: not a second set of every name (store.prune).
        disabled: set[str] = set()
        # Enabled rows the planner planned as they are now: they are queued
        # too unless the member index holds the very member it planned.
        unchanged: set[str] = set()
        refused = queued = 0
        after = ""
        while True:
            chunk = await self._db.schedule_states(after)
            changed = []
            for name, on, fp in chunk:
                if not on:
                    disabled.add(name)
                else:
                    enabled.add(name)
                    if memory.matches(name, fp):
                        unchanged.add(name)
                    else:
                        changed.append(name)
            queued += len(changed)
            refused += self._fifo.extend(changed, bulk=True)
            if len(chunk) < STATES_CHUNK:
                break
            after = chunk[-1][0]

        def seen(name: str, member: str) -> None:
            if name in unchanged and memory.holds(name, member):
                unchanged.discard(name)

        # The last runs of deleted schedules go too (those of disabled ones
        # stay: they still guard the runs if the schedule is enabled again).
        removed = await self._store.prune(enabled, disabled, seen=seen)
        queued += len(unchanged)
        refused += self._fifo.extend(sorted(unchanged), bulk=True)
        await _close_paused(self._store, enabled, disabled, started)
        # A name removed here may have been enabled (and planned) just after
        # our SELECT; planning it again costs one read and settles it.
        self._fifo.extend(removed, bulk=True)
        memory.forget(removed)
        memory.retain(enabled)
        duration = self._clock.seconds() - started
        self._on_refreshed(started, duration, await self._store.count())
        self.last = {
            "at": started,
            "duration": duration,
            "schedules": len(enabled),
            "queued": queued,
            "removed": len(removed),
            "refused": refused,
        }
        self.log.info(
            # "Removed" also counts the index entry a claim leaves until its
            # replan (store.py), not only members of schedules gone or changed.
            "full refresh: {count} enabled schedules, {queued} queued for planning, "
            "{removed} stale members or index entries pruned",
            count=len(enabled),
            queued=queued,
            removed=len(removed),
        )
        return len(enabled)


async def _close_paused(
    store: RefreshStore, enabled: set[str], disabled: set[str], started: float
) -> None:
    """Pauses of schedules deleted unseen (by SQL, no cancel, no request): their lives end,
    as the planner ends them when it reads a row gone.  A pause taken since this
    refresh's read began may be a new row's: it stays."""
    paused = await store.paused()
    gone = sorted(name for name, since in paused.since.items()
                  if name not in enabled and name not in disabled and since < started)
    if gone:
        await store.close_lives(gone)
        FullRefresh.log.info("pauses of deleted schedules cleared: {schedules}",
                             schedules=", ".join(gone[:20]) + (" ..." if len(gone) > 20 else ""))


def _fire_then_pass(result: object, joined: Deferred[None]) -> object:
    """Fire ``joined`` when the refresh it waits on ends, leaving that
    refresh's own result to its other callbacks."""
    joined.callback(None)
    return result
