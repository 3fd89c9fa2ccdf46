"""The looks a bench's daemon makes once for all its sites.

:class:`KeyWatch`, that Redis still holds every site's keys.  Alone, a site's full refresh checks every 2 s that the marker key it sets is
still in Redis, and plans everything again when it is gone (Redis restarted
empty, flushed, failed over to an empty replica).  On a bench of 500 sites
that was 250 EXISTS a second, about half of the idle daemon's CPU.  The sites
share one Redis, so one EXISTS naming every site's marker says whether any is
gone; only then does each site's refresh make its own check, and the sites
that lost their keys plan everything again, exactly as a site alone does.

:class:`DueWatch`, when each site's next run is due.  Alone, a site's timer reads its own window of the schedule set every
``scheduler_polling_interval`` even when it knows of nothing due: the safety
net for a member it was not told of (planned by another daemon of the same
site, which then died).  On a bench of 500 sites that was 8 window EVALs a
second, each a reactor wake-up of its own, the largest share of the idle
daemon's work once the other per-site timers were shared.  The sites share
one Redis, so one EVAL (``lua/soonest_many.lua``) reads every site's earliest
score at that same interval, and only a timer whose own last look knew of
nothing that early is woken (:meth:`Timer.seen_soonest`); the timers' own
polls become a once-a-day backstop (:data:`TIMER_POLL_OFF`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.planning.refresh import WATCH_SECS, FullRefresh
from btu_twisted.store.gateway import RedisCommands
from btu_twisted.store.schedule_store import ScheduleStore
from btu_twisted.store.scripts import SOONEST_MANY
from btu_twisted.timing.timer import Timer

__all__ = ["SITE_WATCH_OFF", "TIMER_POLL_OFF", "DueWatch", "KeyWatch"]

#: A site's own watch while a KeyWatch looks for it: once a day, as a backstop.
SITE_WATCH_OFF = 86400.0
#: A site's own timer poll while a DueWatch looks for it: once a day, as a backstop.
TIMER_POLL_OFF = 86400.0
#: Keys per command: a bench's thousand sites in one round trip, a bigger one in a few.
CHUNK = 1000


class Site(Protocol):
    """A site's service, as far as the looks go."""

    @property
    def running(self) -> int: ...

    @property
    def refresh(self) -> FullRefresh: ...

    @property
    def timer(self) -> Timer: ...

    @property
    def store(self) -> ScheduleStore: ...


class _BenchLook:
    """A look every ``interval`` at the sites served; LoopingCall waits for each
    look's Deferred, so never two are out at once."""

    log = Logger()

    def __init__(self, clock: Any, redis: RedisCommands,
                 sites: Callable[[], Iterable[Site]], interval: float) -> None:
        self._redis = redis
        self._sites = sites
        self._interval = interval
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> Deferred[Any]:
        # Redis away: its Dependency has logged the outage; the next look finds out.
        return Deferred.fromCoroutine(self.look()).addErrback(
            lambda failure: self.log.debug("{look} failed: {f}", look=type(self).__name__,
                                           f=failure.value))

    async def look(self) -> Any:
        raise NotImplementedError


class KeyWatch(_BenchLook):
    def __init__(self, clock: Any, redis: RedisCommands,
                 sites: Callable[[], Iterable[Site]], interval: float = WATCH_SECS) -> None:
        super().__init__(clock, redis, sites, interval)
        #: Looks that found a marker gone (tests, status).
        self.losses = 0

    async def look(self) -> int:
        """How many markers are gone; each site's refresh then checks its own."""
        sites = [site for site in self._sites() if site.running and site.refresh.running]
        present = 0
        for start in range(0, len(sites), CHUNK):
            keys = [site.store.keys.planned_marker for site in sites[start:start + CHUNK]]
            present += int(await self._redis.command("EXISTS", *keys))
        gone = len(sites) - present
        if gone:
            self.losses += 1
            for site in sites:
                # The site's own check: skips a refresh in flight, logs, counts, re-plans.
                site.refresh.check_keys()
        return gone


class DueWatch(_BenchLook):
    def __init__(self, clock: Any, redis: RedisCommands,
                 sites: Callable[[], Iterable[Site]], interval: float) -> None:
        super().__init__(clock, redis, sites, interval)
        #: Timers woken by a look (tests, benchmarks).
        self.woken = 0

    async def look(self) -> None:
        """Each timer told of its site's earliest member; a chunk Redis did not
        answer ends the look (each timer finds out at its own next step)."""
        sites = [site for site in self._sites() if site.running and site.timer.running]
        for start in range(0, len(sites), CHUNK):
            chunk = sites[start:start + CHUNK]
            scores = await self._redis.eval(
                SOONEST_MANY, [site.store.keys.schedule_set for site in chunk], [])
            for site, score in zip(chunk, scores, strict=False):
                if score not in ("", b"", None) and site.timer.seen_soonest(float(score)):
                    self.woken += 1
