"""The planner: turns schedule names from the FIFO into their next run in Redis.

It is a single cooperative consumer: it sleeps on the FIFO while there is
nothing to do, reads a whole batch of rows in one query, computes next runs in
the schedule's zone and writes the batch in one script call.  Each step waits
on I/O, so the reactor keeps serving the socket between batches.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from btu_twisted import cron
from btu_twisted.clock import Clock, reactor_time
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff, Dependency
from btu_twisted.planning.memory import PlanMemory, row_fingerprint
from btu_twisted.records import ScheduleRow
from btu_twisted.seams import PlannerStore, RowReader
from btu_twisted.sources.mariadb import BATCH_SIZE
from btu_twisted.store.pauses import PAUSED_RUN

# A last enqueued run further ahead of now than this can only come from a
# clock that ran ahead (runs are enqueued when due, never early).
AHEAD_LIMIT = 300
# Once the FIFO drains after planning at least this many names (start, a full
# refresh, a big burst's replans), free heap memory is handed back (heap.py).
DRAINED_AFTER = 1000
# Inactive schedules are logged when their state changes, remembered for at
# most this many names (deleted ones would otherwise be remembered forever).
_REMEMBERED = 10_000


class Unplannable(Exception):
    """The row exists but cannot be planned; the message says why."""


def next_run_for(row: ScheduleRow, default_zone: str, after: float) -> int:
    """The row's next run after ``after``, or Unplannable with the reason.

    Any failure is this row's alone: it must not send the whole batch back
    to the FIFO to fail again forever.
    """
    if not row.cron_string or not row.cron_string.strip():
        raise Unplannable("it has no cron string")
    zone = row.cron_time_zone or default_zone
    try:
        return cron.next_run(row.cron_string, cron.get_zone(zone), after)
    except cron.CronError as e:
        raise Unplannable(str(e)) from None
    except Exception as e:
        raise Unplannable(f"unexpected {type(e).__name__} computing its next run: {e}") from None


class Planner(Service):
    """Consumes the FIFO; one batch in flight at a time."""

    log = Logger()
    name = "planner"

    def __init__(
        self,
        clock: Clock,
        fifo: ScheduleFifo,
        db: RowReader,
        store: PlannerStore,
        default_zone: str,
        on_planned: Callable[[int], None] = lambda when: None,
        batch_size: int = BATCH_SIZE,
        dependencies: Sequence[Dependency] = (),
        on_unplanned: Callable[[list[str]], None] = lambda names: None,
        on_failure: Callable[[str], None] = lambda reason: None,
        on_drained: Callable[[], object] = lambda: None,
    ) -> None:
        self._clock = clock
        self._fifo = fifo
        self._db = db
        self._store = store
        self._default_zone = default_zone
        self._on_planned = on_planned
        self._batch_size = batch_size
        # During an outage the Dependency has logged it once already.
        self._dependencies = dependencies
        self._backoff = Backoff()
        self._loop: Deferred[None] | None = None
        self._waiting: Deferred[str] | Deferred[None] | None = None
        # Broken schedules are logged when they break or their reason changes,
        # not again at every refresh.
        self._broken: dict[str, str] = {}
        self._inactive: OrderedDict[str, str] = OrderedDict()
        self._on_unplanned = on_unplanned
        self._on_failure = on_failure
        self._on_drained = on_drained
        self._since_drained = 0
        # Schedules whose last enqueued run lies far in the future (a clock
        # that ran ahead): name -> that run; shown in status until cleared.
        self.ahead: dict[str, int] = {}
        self.planned_total = 0
        self.batches = 0
        # What each schedule was planned from: the full refresh reads it to
        # queue only the schedules that changed.
        self.memory = PlanMemory()
        # Next runs computed this second, by (cron string, zone): a next run
        # depends on nothing else but the second it is computed after, and
        # croniter takes 30-80 us per call, i.e. seconds for a refresh of
        # 100,000 schedules that share a few hundred strings.
        self._runs: dict[tuple[str | None, str], int | str] = {}
        self._runs_second: int | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._loop = Deferred.fromCoroutine(self._run())

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        if self._waiting is not None:
            self._waiting.cancel()
        loop, self._loop = self._loop, None
        return loop

    async def _run(self) -> None:
        while self.running:
            getting = self._waiting = self._fifo.get()
            try:
                first = await getting
            except CancelledError:
                return
            finally:
                self._waiting = None
            if not self._fifo:
                # Woken by the first name of what is usually a burst (a
                # refresh, a claim round): let the rest arrive in this reactor
                # turn so they share one query instead of costing two.
                turn = self._waiting = deferLater(reactor_time(self._clock), 0, lambda: None)
                try:
                    await turn
                except CancelledError:
                    self._fifo.add(first)
                    return
                finally:
                    self._waiting = None
            names = [first] + self._fifo.take(self._batch_size - 1)
            try:
                await self.plan(names)
            except Exception as e:
                # Put the batch back; the outage itself is logged once by the
                # service's Dependency, anything else here once per batch.
                self._fifo.extend(names)
                if all(dep.up for dep in self._dependencies):
                    self.log.failure("planning {count} schedules failed", count=len(names))
                else:
                    self.log.debug("planning deferred: {error}", error=e)
                pause = self._waiting = deferLater(
                    reactor_time(self._clock), self._backoff.next_delay(), lambda: None)
                try:
                    await pause
                except CancelledError:
                    return
                finally:
                    self._waiting = None
            else:
                self._backoff.reset()
                self._since_drained += len(names)
                if not self._fifo and self._since_drained >= DRAINED_AFTER:
                    self._since_drained = 0
                    self._on_drained()

    async def plan(self, names: Sequence[str]) -> dict[str, int]:
        """Plan ``names`` now; returns what was planned (name -> unix time)."""
        rows = await self._db.read_schedules(names)
        now = self._clock.seconds()
        plans: dict[str, int] = {}
        unplans: list[str] = []
        for name in names:
            when = self._next_or_none(name, rows.get(name), now)
            if when is None:
                unplans.append(name)
            else:
                plans[name] = when
        rejected = await self._store.plan(now, plans, unplans)
        # Paused (btu pause): plan.lua removed their members; nothing to replan.
        paused = [name for name, done in rejected.items() if done == PAUSED_RUN]
        for name in paused:
            plans.pop(name, None)
            del rejected[name]
        if rejected:
            # Those times were already enqueued (another daemon, or a refresh
            # that raced an enqueue): plan after the last enqueued run instead.
            again = {}
            for name, done in rejected.items():
                when = None
                if not self._ran_ahead(name, done, now):
                    when = self._next_or_none(name, rows.get(name), max(now, done))
                if when is None:
                    plans.pop(name, None)
                else:
                    again[name] = plans[name] = when
            still = await self._store.plan(now, again)
            for name in still:
                plans.pop(name, None)
                if still[name] == PAUSED_RUN:
                    paused.append(name)
        for name in plans:
            self.ahead.pop(name, None)
            self.memory.record(name, row_fingerprint(rows[name]), plans[name])
        self.memory.forget(name for name in names if name not in plans)
        if unplans or paused:
            for name in unplans:
                self.ahead.pop(name, None)
            self._on_unplanned([*unplans, *paused])
        await self._close_lives([name for name in names if name not in rows])
        self.batches += 1
        self.planned_total += len(plans)
        if plans:
            self._on_planned(min(plans.values()))
        return plans

    async def _close_lives(self, gone: list[str]) -> None:
        """Rows read as deleted: their history and pause end with them, so a
        schedule created later under the same name (Frappe reuses names)
        starts with neither."""
        if gone and await self._store.close_lives(gone):
            self.log.info(
                "deleted schedules {schedules}: their run history and pause are cleared",
                schedules=", ".join(sorted(gone)[:20]) + (" ..." if len(gone) > 20 else ""),
            )

    def _ran_ahead(self, name: str, done: int, now: float) -> bool:
        """True (logged once, counted) when the last run lies far in the future."""
        if done <= now + AHEAD_LIMIT:
            return False
        if self.ahead.get(name) != done:
            self.ahead[name] = done
            self._on_failure("last_run_ahead")
            self.log.error(
                "schedule {schedule} is not planned: its last enqueued run is {done}, "
                "{ahead:.0f} s ahead of now (a clock that ran ahead?); clear it with "
                "'btu clear-last-run {schedule}'",
                schedule=name, done=_iso(done), ahead=done - now,
            )
        return True

    def _next_or_none(self, name: str, row: ScheduleRow | None, after: float) -> int | None:
        inactive = "it does not exist" if row is None else row.inactive_reason()
        if inactive is not None:
            self._broken.pop(name, None)
            if self._inactive.get(name) != inactive:
                self.log.info(
                    "schedule {schedule} has no run planned: {reason}",
                    schedule=name, reason=inactive,
                )
            self._inactive[name] = inactive
            self._inactive.move_to_end(name)
            while len(self._inactive) > _REMEMBERED:
                self._inactive.popitem(last=False)
            return None
        self._inactive.pop(name, None)
        assert row is not None
        when = self._next_run(row, after)
        if isinstance(when, str):
            reason = when
            if self._broken.get(name) != reason:
                self._broken[name] = reason
                self.log.error(
                    "schedule {schedule} cannot be planned: {reason}", schedule=name, reason=reason
                )
            return None
        self._broken.pop(name, None)
        return when

    def _next_run(self, row: ScheduleRow, after: float) -> int | str:
        """The row's next run after ``after``, or why there is none; remembered
        for the rest of this second (cron.next_run reads only its second)."""
        second = math.floor(after)
        if second != self._runs_second:
            self._runs.clear()
            self._runs_second = second
        key = (row.cron_string, row.cron_time_zone or self._default_zone)
        found = self._runs.get(key)
        if found is None:
            try:
                found = next_run_for(row, self._default_zone, after)
            except Unplannable as e:
                found = str(e)
            self._runs[key] = found
        return found



def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
