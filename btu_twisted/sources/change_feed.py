"""The change feed: edits committed in MariaDB are planned within seconds.

The BTU app sends ``create_task_schedule`` from ``before_save``, while its
transaction is still open, and commits only after our reply (COMPAT.md 8.1):
read at once, the row is the *old* one.  So a socket request is followed by
two more plannings a little later, and every ``interval`` seconds the feed
asks MariaDB which schedules (and tasks) moved their ``modified`` since its
last look.  The feed also catches ``frappe.db.set_value``, data imports and
SQL that bumps ``modified``, with no request at all; a change of the site's
``cron_time_zone`` re-plans everything.

``modified`` is written by the Frappe process when it saves, not when it
commits, so a row can appear with a ``modified`` older than rows already
seen.  Each look therefore reaches ``overlap`` back from the newest value seen
and skips (name, modified) pairs it has already handled.

Those queries run only when something was written: each look first asks
InnoDB whether the site's BTU tables moved, then reads their digest, and reads
the changed rows only when the digest moved (``table_times.py``).  A change of
the set of names (a plain SQL ``DELETE`` bumps no ``modified``) starts a full
refresh, which unplans what is gone.  One site looks every 2 s: one cheap
statement.  A bench of many sites spreads its looks (:func:`interval_for`, a
random offset per site) so that the daemon makes about ``LOOKS_PER_SEC``
looks a second, each site at least every ``MAX_POLL_SECS``: an edit with no
request is then seen within a minute, a socket request still within seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.clock import DelayedCall, as_clock
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.sources.mariadb import Database
from btu_twisted.sources.table_times import Digest, TableTimes

POLL_SECS = 2.0
#: However many sites, each looks at least this often (a plain SQL edit within a minute).
MAX_POLL_SECS = 45.0
#: About this many looks a second for the whole daemon, once a bench has many sites:
#: with a few connections for hundreds of sites each look opens one (about 1.5 ms of
#: CPU in all), so 10 a second is the 2 % of a core a hosting bench allows at idle.
LOOKS_PER_SEC = 10.0
#: While UPDATE_TIME is NULL a move cannot be seen: read the digest at least this often.
FALLBACK_SECS = 40.0
# How far back each look reaches from the newest `modified` seen: longer than
# any save-to-commit delay of a Frappe request.
OVERLAP = timedelta(seconds=120)
# After a socket request, plan the schedule again at these delays: the BTU
# app commits about half a second after our reply.
FOLLOW_UPS = (1.5, 4.0)


def interval_for(sites: int) -> float:
    """Seconds between two looks at each site of a daemon serving ``sites``."""
    return min(MAX_POLL_SECS, max(POLL_SECS, sites / LOOKS_PER_SEC))


class ChangeFeed(Service):
    log = Logger()
    name = "changes"

    def __init__(
        self,
        clock: IReactorTime,
        db: Database,
        fifo: ScheduleFifo,
        on_zone_changed: Callable[[], object],
        interval: float = POLL_SECS,
        overlap: timedelta = OVERLAP,
        follow_ups: Iterable[float] = FOLLOW_UPS,
        *,
        on_names_changed: Callable[[], object] | None = None,
        stagger: float | None = None,
        fallback: float = FALLBACK_SECS,
    ) -> None:
        """``on_names_changed``: schedules were added or deleted (default:
        ``on_zone_changed``, a full refresh); ``stagger``: when the second look
        comes (default: at random within ``interval``, so a bench's sites do
        not all look in the same second)."""
        self._clock = as_clock(clock)
        self._db = db
        self._fifo = fifo
        self._on_zone_changed = on_zone_changed
        self._on_names_changed = on_names_changed or on_zone_changed
        self._interval = interval
        self._stagger = stagger
        self._fallback = fallback
        self._overlap = overlap
        self._follow_ups = tuple(follow_ups)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._starting: DelayedCall | None = None
        self._looking = False
        self._times: TableTimes | None = None
        self._digest: Digest | None = None
        self._digest_at: float | None = None
        self._recheck = False
        #: Looks, and looks that read the changed rows (benchmarks, tests).
        self.looks = 0
        self.reads = 0
        self._marks: dict[str, datetime | None] = {"schedule": None, "task": None}
        self._seen: dict[tuple[str, str], datetime] = {}
        self._zone: tuple[str | None] | None = None  # None: not looked yet
        self._pending: set[DelayedCall] = set()
        self.changes_seen = 0

    @property
    def interval(self) -> float:
        """Seconds between looks: a daemon of many sites sets it as their number
        changes, and a running loop takes it from its next look on."""
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = seconds
        if self._loop.running:
            self._loop.interval = seconds

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._tick()
        stagger = (random.uniform(0.1, self.interval) if self._stagger is None
                   else self._stagger)
        self._starting = self._clock.callLater(stagger, self._start_loop)

    def _start_loop(self) -> None:
        self._starting = None
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._loop.running:
            self._loop.stop()
        if self._starting is not None and self._starting.active():
            self._starting.cancel()
        self._starting = None
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()

    def requested(self, name: str) -> bool:
        """A socket request named ``name``: plan it now and again after the commit.
        False when the FIFO is full (then no follow-up either)."""
        if not self._fifo.add(name):
            return False
        if self.running:
            for delay in self._follow_ups:
                self._later(delay, name)
        return True

    def _later(self, delay: float, name: str) -> None:
        call: DelayedCall

        def follow_up() -> None:
            self._pending.discard(call)
            self._fifo.add(name)

        call = self._clock.callLater(delay, follow_up)
        self._pending.add(call)

    def _tick(self) -> Deferred[int | None] | None:
        # Never fails, so the LoopingCall never stops; an outage is logged
        # once by the Database's Dependency.  A look still under way (a slow
        # database) is not joined by another.
        if self._looking:
            return None
        self._looking = True
        d: Deferred[int | None] = Deferred.fromCoroutine(self.look())
        d.addErrback(self._failed)

        def done(result: int | None) -> int | None:
            self._looking = False
            return result

        return d.addBoth(done)

    def _failed(self, failure: Failure) -> None:
        if self._db.health.up:
            self.log.failure("reading changed schedules failed", failure)

    async def look(self) -> int:
        """One look at MariaDB; returns how many schedules were queued.

        The digest is read when a table's UPDATE_TIME moved, at the next look
        too when a time was of the second the look was made in (UPDATE_TIME
        counts whole seconds: a write later in that second would not move
        it), and every ``fallback`` seconds while a time is NULL.
        """
        now = self._clock.seconds()
        blind = self._times is not None and None in self._times and (
            self._digest_at is None or now - self._digest_at >= self._fallback)
        previous_times = self._times
        look = await self._db.table_times(
            previous_times, self._digest is None or self._recheck or blind)
        self.looks += 1
        self._times = look.times
        digest = look.digest
        self._recheck = look.recent
        if digest is None:
            return 0
        self._digest_at = now
        previous = self._digest
        if previous == digest:
            return 0
        try:
            queued = await self._read_changes()
        except Exception:
            self._recheck = True  # the digest is kept as it was: the next look reads again
            raise
        self._digest = digest
        if previous is not None and previous.names != digest.names:
            self.log.info("schedules were added or deleted; reading every schedule again")
            self._on_names_changed()
        return queued

    async def _read_changes(self) -> int:
        """The rows whose ``modified`` moved, queued; the zone compared."""
        self.reads += 1
        since = {
            kind: None if mark is None else mark - self._overlap
            for kind, mark in self._marks.items()
        }
        changes = await self._db.changes(since, self._overlap)
        queued = self._take("schedule", changes.schedules) + self._take("task", changes.tasks)
        if self._zone is not None and self._zone[0] != changes.zone:
            self.log.info(
                "cron_time_zone changed from {old} to {new}; planning every schedule again",
                old=self._zone[0], new=changes.zone,
            )
            self._on_zone_changed()
        self._zone = (changes.zone,)
        self._forget_old()
        if queued:
            self.changes_seen += queued
            self.log.debug("{count} changed schedules queued for planning", count=queued)
        return queued

    def _take(self, kind: str, rows: list[tuple[str, datetime]]) -> int:
        queued = 0
        for name, modified in rows:
            mark = self._marks[kind]
            if mark is None or modified > mark:
                self._marks[kind] = modified
            key = (kind, name)
            if self._seen.get(key) == modified:
                continue
            self._seen[key] = modified
            self._fifo.add(name)
            queued += 1
        return queued

    def _forget_old(self) -> None:
        """Pairs older than every future look's reach cannot come back."""
        for key, modified in list(self._seen.items()):
            mark = self._marks[key[0]]
            if mark is not None and modified < mark - self._overlap:
                del self._seen[key]
