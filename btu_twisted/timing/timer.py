"""The timer: due members become RQ jobs, each (schedule, time) exactly once.

It sleeps until the earliest member is close (a wake-up on an
:class:`~btu_twisted.timing.alarm.Alarm`, brought forward when the planner adds an
earlier one; the timers of a many-site daemon share one alarm), reads the rows
and builds the jobs a little *before* they are due — which also hides the
site's HTTP latency — and at the due instant claims and enqueues them, many per
script call.  Building before
claiming means a crash at any instant loses nothing (the member is still
there) and doubles nothing (the claim is atomic); several daemons all build,
one claim wins and the others drop their copies.

Many runs due at once (10,000 at one second) flow as a pipeline: rows are read
and jobs built a chunk at a time, each job's claim arguments framed for Redis
as it is built; at the due second the prepared claims go out in batches,
several in flight, while later chunks are still being built.  What a round of
claims sets off — replanning the schedules, writing their job ids to MariaDB,
the log lines — waits until the burst's claims are done, so none of it competes
with them for the reactor or for Redis.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.clock import Clock, DelayedCall
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff
from btu_twisted.jobs.fields import load_rq
from btu_twisted.seams import JobBuilder, RowReader, TimerStore
from btu_twisted.store.schedule_store import Claim
from btu_twisted.timing.alarm import Alarm
from btu_twisted.timing.building import JobPreparer
from btu_twisted.timing.claiming import ClaimRound
from btu_twisted.timing.due import PreparedClaims
from btu_twisted.timing.filing import HistoryFiler
from btu_twisted.timing.misfire import Misfires
from btu_twisted.timing.retries import Retries
from btu_twisted.timing.run_log import RunLog
from btu_twisted.timing.stats import TimerStats
from btu_twisted.timing.step_report import StepReport
from btu_twisted.timing.tuning import (
    BUILD_CHUNK,
    BUILD_WAIT,
    CLAIM_BATCH,
    CLAIMS_IN_FLIGHT,
    FETCH_LIMIT,
    FIRST_BATCH,
    HOLD_SECS,
    LOOKAHEAD,
)

# Imported from here by the tests and the benchmarks.
__all__ = [
    "BUILD_CHUNK", "BUILD_WAIT", "CLAIM_BATCH", "CLAIMS_IN_FLIGHT", "FETCH_LIMIT",
    "FIRST_BATCH", "HOLD_SECS", "LOOKAHEAD", "Timer", "TimerStats",
]


class Timer(Service):
    """The service that wakes, and joins the parts that do the work: the
    builds (JobPreparer), the claim rounds (ClaimRound), the retries, the
    run log and the history filing.  Its constructor, ``stats``,
    ``planned()`` and ``forget()`` are what the daemon uses."""

    log = Logger()
    name = "timer"

    def __init__(
        self,
        clock: Clock,
        store: TimerStore,
        db: RowReader,
        builder: JobBuilder,
        fifo: ScheduleFifo,
        polling_interval: float,
        misfire_grace: float | None = None,
        on_enqueued: Callable[[Claim, float], None] = lambda claim, lateness: None,
        on_failure: Callable[[str], None] = lambda reason: None,
        lookahead: float = LOOKAHEAD,
        default_zone: str = "UTC",
        on_job_ids: Callable[[list[tuple[str, str]]], None] = lambda pairs: None,
        default_overlap: str = "allow",
        alarm: Alarm | None = None,
        on_skipped: Callable[[str, list[int]], None] | None = None,
    ) -> None:
        """``alarm``: shared by the timers of a daemon serving several sites
        (sites.py); None gives this timer one of its own.  ``on_skipped``: told
        of the runs settled without a job (schedule health)."""
        self._clock = clock
        self._store = store
        self._polling = polling_interval
        self._on_failure = on_failure
        self._prepared = PreparedClaims()
        self._retries = Retries(clock)
        self._runs = RunLog(misfire_grace)
        misfires = Misfires(misfire_grace, self._runs, on_failure)
        self._history = HistoryFiler(store, self._is_running)
        self.stats = TimerStats()
        self._building = JobPreparer(
            clock, store, db, builder, self._prepared, self._retries, misfires,
            running=self._is_running,
            on_slice_built=self._slice_built,
            on_failure=on_failure,
            default_zone=default_zone,
            # MariaDB rows have no overlap column: the ``overlap`` config key decides.
            default_overlap=default_overlap == "skip",
        )
        self._claims = ClaimRound(
            clock, store, fifo, self._prepared, self._retries, misfires, self._runs,
            self.stats,
            running=self._is_running,
            building_due=self._building.building_due,
            arm=self._arm,
            fold_history=self._history.fold,
            on_enqueued=on_enqueued,
            on_failure=on_failure,
            on_job_ids=on_job_ids,
        )
        if on_skipped is not None:
            self._claims.on_skipped = on_skipped
        self.lookahead = lookahead
        self._backoff = Backoff()
        self._step_report = StepReport(store)
        self._wake = (alarm or Alarm(clock)).waker(self._tick)
        self._ticking: Deferred[None] | None = None
        self._again = False
        self._truncated = False
        self._preload: DelayedCall | None = None

    def _is_running(self) -> bool:
        """Asked by the parts before each step of a burst: a stopping timer
        leaves the rest in Redis for the next start."""
        return bool(self.running)

    @property
    def lookahead(self) -> float:
        """Seconds before a run is due that its row is read and its job built: a
        bench sets it by its number of sites (:func:`~btu_twisted.timing.tuning.lookahead_for`),
        and a new value applies from the next wake-up on."""
        return self._claims.lookahead

    @lookahead.setter
    def lookahead(self, seconds: float) -> None:
        # Kept by the claims, which take a row read that far ahead as still fresh.
        self._claims.lookahead = seconds

    # What the timer remembers of a schedule (tests look at these too).
    @property
    def _delayed(self) -> dict[str, str]:
        return self._retries.delayed

    @property
    def _overlapping(self) -> set[str]:
        return self._claims.overlapping

    # -- service ---------------------------------------------------------
    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._arm(0)
        # What a daemon stopped mid-burst left in the run history inbox.
        self._history.fold()
        # rq is left out of the start (jobs/fields.py): loaded on a later
        # reactor turn, once the socket answers, not by the first due run.
        self._preload = self._clock.callLater(0, load_rq)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._wake.cancel()
        self._claims.wake(False)
        if self._preload is not None and self._preload.active():
            self._preload.cancel()
        pending = [d for d in (self._ticking, self._history.folding) if d is not None]
        if not pending:
            return None
        return DeferredList(pending).addCallback(lambda _: None)

    def planned(self, when: float) -> None:
        """The planner added a member at ``when``: wake earlier if needed."""
        self._arm(when - self.lookahead - self._clock.seconds())

    def seen_soonest(self, when: float) -> bool:
        """A bench-wide look found this timer's earliest member due at ``when``
        (daemon/bench_looks.py): wake for it, as the timer's own poll would have,
        unless the timer's own last look knew of a member that early — it is
        then already armed for it, or waiting on purpose (a retry, a claim at
        the due instant).  True when woken."""
        known = self.stats.next_due
        if known is not None and when >= known[1]:
            return False
        self.planned(when)
        return True

    # -- wake-ups --------------------------------------------------------
    def _arm(self, delay: float) -> None:
        if not self.running:
            return
        # Only ever earlier: the alarm keeps a time already asked for if it is sooner.
        self._wake.at(self._clock.seconds() + max(0.0, delay))

    def _tick(self) -> None:
        if self._ticking is not None:
            self._again = True
            return
        d = Deferred.fromCoroutine(self._tick_safely())
        # A step that finished without waiting has already cleared _ticking;
        # keeping its fired Deferred would make every later wake-up a no-op.
        if not d.called:
            self._ticking = d

    async def _tick_safely(self) -> None:
        next_delay = float(self._polling)
        failure: Failure | None = None
        try:
            next_delay = await self._step()
        except Exception:
            failure = Failure()  # type: ignore[no-untyped-call]  # twisted's Failure is unannotated
            self._on_failure("timer_step")
            next_delay = self._backoff.next_delay()
        else:
            self._backoff.reset()
        finally:
            self._ticking = None
        next_delay = min(next_delay, float(self._polling))
        if self._again:
            self._again = False
            next_delay = 0.0
        self._step_report.report(failure, next_delay)
        self._arm(next_delay)

    # -- one step ----------------------------------------------------------
    async def _step(self) -> float:
        """Claim what is due, prepare what is close; returns seconds until the next step."""
        await self._claims.claim_due()
        window = await self._store.window(self._clock.seconds() + self.lookahead, FETCH_LIMIT)
        # Read the clock after the round trip: a wake-up computed from before
        # it would be late by however long Redis took.
        now = self._clock.seconds()
        self.stats.members_seen = window.count
        self.stats.near_seen = len(window.near)
        self.stats.seen_at = now
        self.stats.next_due = window.near[0] if window.near else window.beyond
        truncated = len(window.near) >= FETCH_LIMIT
        self._forget_vanished(window.near, truncated)
        next_at = now + float(self._polling)
        if window.beyond is not None:
            next_at = min(next_at, window.beyond[1] - self.lookahead)
        todo: list[tuple[str, int]] = []
        for member, when in window.near:
            if member in self._prepared:
                next_at = min(next_at, when)
            elif member not in self._building.building:
                retry = self._retries.due_at(member)
                if retry > now:
                    next_at = min(next_at, retry)
                else:
                    todo.append((member, when))
        # More were due than we looked at: look again once these are built
        # (not in a busy loop).
        self._truncated = truncated
        if todo:
            self._start_builds(todo)
        soonest = self._prepared.soonest()
        if soonest is not None and soonest <= self._clock.seconds():
            return 0.0
        return next_at - self._clock.seconds()

    def _forget_vanished(self, near: list[tuple[str, int]], truncated: bool) -> None:
        """Drop prepared jobs whose member is gone (cancelled, replanned, claimed elsewhere)."""
        alive = {m for m, _ in near}
        last_seen = near[-1][1] if near else 0
        self._prepared.forget_gone(alive, truncated, last_seen)
        # Runs waiting for a retry were due too: gone from a complete window,
        # their schedule was cancelled or replanned, and the wait is forgotten.
        if not truncated:
            self._retries.forget_gone(alive)

    def forget(self, names: list[str]) -> None:
        """The planner found these schedules gone or inactive: drop what we remember of them.

        Only a claimed next run ends a stretch of held-back runs; a schedule
        deleted or disabled meanwhile has none, and would stay in
        ``_overlapping`` for good (enabled again, its first held-back run
        would not be logged either).
        """
        for name in names:
            self._retries.delayed.pop(name, None)
            self._building.unbuildable.pop(name, None)
        self._claims.overlapping.difference_update(names)

    # -- building ----------------------------------------------------------
    def _start_builds(self, todo: list[tuple[str, int]]) -> None:
        d = self._building.start(todo)
        d.addBoth(lambda _: self._after_builds(todo))

    def _after_builds(self, todo: list[tuple[str, int]]) -> None:
        self._building.done_building(m for m, _ in todo)
        self._runs.flush_skipped()
        if not self._prepared.claiming:
            self._claims.release_held(self._clock.seconds())
        soonest = self._prepared.soonest()
        if self._truncated:
            self._truncated = False
            self._arm(0)
        elif soonest is not None:
            self._arm(soonest - self._clock.seconds())
        elif (retry := self._retries.soonest()) is not None:
            self._arm(retry - self._clock.seconds())

    def _slice_built(self) -> None:
        """Jobs became ready: wake a claim round waiting for them, or arm for them."""
        if self._claims.waiting:
            self._claims.wake(True)
            return
        soonest = self._prepared.soonest()
        if soonest is not None:
            self._arm(soonest - self._clock.seconds())
