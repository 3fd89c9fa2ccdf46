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
"""

from __future__ import annotations

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

POLL_SECS = 2.0
# How far back each look reaches from the newest `modified` seen: longer than
# any save-to-commit delay of a Frappe request.
OVERLAP = timedelta(seconds=120)
# After a socket request, plan the schedule again at these delays: the BTU
# app commits about half a second after our reply.
FOLLOW_UPS = (1.5, 4.0)


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
    ) -> None:
        self._clock = as_clock(clock)
        self._db = db
        self._fifo = fifo
        self._on_zone_changed = on_zone_changed
        self._interval = interval
        self._overlap = overlap
        self._follow_ups = tuple(follow_ups)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._marks: dict[str, datetime | None] = {"schedule": None, "task": None}
        self._seen: dict[tuple[str, str], datetime] = {}
        self._zone: tuple[str | None] | None = None  # None: not looked yet
        self._pending: set[DelayedCall] = set()
        self.changes_seen = 0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._loop.running:
            self._loop.stop()
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

    def _tick(self) -> Deferred[int | None]:
        # Never fails, so the LoopingCall never stops; an outage is logged
        # once by the Database's Dependency.
        d: Deferred[int | None] = Deferred.fromCoroutine(self.look())
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        if self._db.health.up:
            self.log.failure("reading changed schedules failed", failure)

    async def look(self) -> int:
        """One look at MariaDB; returns how many schedules were queued."""
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
