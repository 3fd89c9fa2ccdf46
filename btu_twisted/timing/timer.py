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

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from rq.utils import utcformat
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.timing.alarm import Alarm
from btu_twisted.jobs.builders import BuildError, BuiltJob, JobBuilder
from btu_twisted.timing.due import DueClaims
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff
from btu_twisted.store.history import DROPPED, SKIPPED_MISFIRE, SKIPPED_UNBUILDABLE
from btu_twisted.records import RowReader, ScheduleRow
from btu_twisted.timing.gc_hold import gc_pause, gc_resume
from btu_twisted.timing.refusals import refusal_of
from btu_twisted.timing.run_log import Enqueued, RunLog, Skipped, iso
from btu_twisted.store.schedule_store import (
    BLOCKED,
    BLOCKED_RETRY_SECS,
    CLAIMED,
    OVERLAPPED,
    Claim,
    ScheduleStore,
    framed,
    split_member,
)
from btu_twisted.timing.tuning import (
    BUILD_CHUNK,
    BUILD_CONCURRENCY,
    BUILD_SLICE,
    BUILD_WAIT,
    CLAIM_BATCH,
    CLAIMS_IN_FLIGHT,
    FETCH_LIMIT,
    FIRST_BATCH,
    HOLD_SECS,
    LOOKAHEAD,
    ROW_FRESHNESS,
    SLICE_SECS,
)


@dataclass
class TimerStats:
    enqueued: int = 0
    skipped: int = 0
    lost: int = 0
    last_enqueue: float | None = None
    last_schedule: str | None = None
    # From the timer's latest look at the sorted set (exact below FETCH_LIMIT).
    members_seen: int = 0
    next_due: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        self.lateness: deque[float] = deque(maxlen=1000)


class Timer(Service):
    log = Logger()
    name = "timer"

    def __init__(
        self,
        clock: IReactorTime,
        store: ScheduleStore,
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
    ) -> None:
        """``alarm``: shared by the timers of a daemon serving several sites
        (sites.py); None gives this timer one of its own."""
        self._clock = clock
        self._store = store
        # MariaDB rows have no overlap column: the ``overlap`` config key decides.
        self._default_overlap = default_overlap == "skip"
        self._db = db
        self._builder = builder
        self._fifo = fifo
        self._polling = polling_interval
        self._grace = misfire_grace
        self._on_enqueued = on_enqueued
        self._on_failure = on_failure
        self._lookahead = lookahead
        self._default_zone = default_zone
        self._on_job_ids = on_job_ids
        self._prepared: dict[str, Claim] = {}
        self._read_at: dict[str, float] = {}  # member -> when its row was read
        # Prepared claims by due time (stale entries are skipped when taken).
        self._due = DueClaims()
        self._claiming: set[str] = set()
        self._building: dict[str, int] = {}     # member -> due time
        self._building_at: Counter[int] = Counter()  # due time -> builds in flight
        self._built: Deferred[bool] | None = None   # a claim round waiting for builds
        # What claim rounds set off, held until the burst's claims are done.
        self._held_since: float | None = None
        self._replans: list[str] = []
        self._enqueued: list[tuple[Claim, float]] = []  # with lateness
        self._runs = RunLog(misfire_grace)
        self._retry_at: dict[str, float] = {}
        self._retry_wait: dict[str, float] = {}
        self._delayed: dict[str, str] = {}      # schedule -> reason already logged
        self._unbuildable: dict[str, str] = {}  # schedule -> permanent reason already logged
        self._overlapping: set[str] = set()     # schedules whose last run was held back
        self._build_slots = DeferredSemaphore(BUILD_CONCURRENCY)
        self._backoff = Backoff()
        self._step_failures = 0              # timer steps failed in a row
        self._step_failures_logged = False   # this streak's traceback is logged
        self._wake = (alarm or Alarm(clock)).waker(self._tick)
        self._ticking: Deferred[None] | None = None
        self._again = False
        self._truncated = False
        self._folding: Deferred[None] | None = None  # filing the run history
        self._read_error: str | None = None  # the row read failure last warned of
        self._fold_again = False
        self.stats = TimerStats()

    # -- service ---------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._arm(0)
        # What a daemon stopped mid-burst left in the run history inbox.
        self._fold_history()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._wake.cancel()
        self._wake_round(False)
        pending = [d for d in (self._ticking, self._folding) if d is not None]
        if not pending:
            return None
        return DeferredList(pending).addCallback(lambda _: None)

    def planned(self, when: float) -> None:
        """The planner added a member at ``when``: wake earlier if needed."""
        self._arm(when - self._lookahead - self._clock.seconds())

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
            failure = Failure()
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
        self._report_step(failure, next_delay)
        self._arm(next_delay)

    def _report_step(self, failure: Failure | None, next_delay: float) -> None:
        """Log a streak of failed steps without flooding the journal.

        A Redis outage the health tracker has seen is its to report (one line
        each way).  Otherwise the first failure of a streak is unexpected and
        gets its traceback; the same failure repeated at every backoff retry
        says nothing new, so later ones get one short line each only when the
        count reaches a power of two (2, 4, 8, ...: about ten lines a day with
        30 s retries), and one line says when steps succeed again.
        """
        if failure is None:
            if self._step_failures and self._step_failures_logged:
                self.log.info(
                    "timer steps succeed again after {count} failures",
                    count=self._step_failures,
                )
            self._step_failures = 0
            self._step_failures_logged = False
            return
        self._step_failures += 1
        health = self._store.health
        if health is not None and not health.up:
            return
        count = self._step_failures
        if not self._step_failures_logged:
            self._step_failures_logged = True
            self.log.failure("timer step failed", failure)
        elif count & (count - 1) == 0:
            self.log.error(
                "timer step failed again ({count} in a row, next try in {delay:.0f} s): "
                "{error_type}: {error}",
                count=count, delay=next_delay,
                error_type=failure.type.__name__, error=failure.getErrorMessage(),
            )

    # -- one step ----------------------------------------------------------
    async def _step(self) -> float:
        """Claim what is due, prepare what is close; returns seconds until the next step."""
        await self._claim_due()
        window = await self._store.window(self._clock.seconds() + self._lookahead, FETCH_LIMIT)
        # Read the clock after the round trip: a wake-up computed from before
        # it would be late by however long Redis took.
        now = self._clock.seconds()
        self.stats.members_seen = window.count
        self.stats.next_due = window.near[0] if window.near else window.beyond
        truncated = len(window.near) >= FETCH_LIMIT
        self._forget_vanished(window.near, truncated)
        next_at = now + float(self._polling)
        if window.beyond is not None:
            next_at = min(next_at, window.beyond[1] - self._lookahead)
        todo: list[tuple[str, int]] = []
        for member, when in window.near:
            if member in self._prepared:
                next_at = min(next_at, when)
            elif member not in self._building:
                retry = self._retry_at.get(member, 0.0)
                if retry > now:
                    next_at = min(next_at, retry)
                else:
                    todo.append((member, when))
        # More were due than we looked at: look again once these are built
        # (not in a busy loop).
        self._truncated = truncated
        if todo:
            self._start_builds(todo)
        soonest = self._soonest()
        if soonest is not None and soonest <= self._clock.seconds():
            return 0.0
        return next_at - self._clock.seconds()

    def _forget_vanished(self, near: list[tuple[str, int]], truncated: bool) -> None:
        """Drop prepared jobs whose member is gone (cancelled, replanned, claimed elsewhere).

        Prepared members were all due by an earlier, smaller horizon, so a
        complete window lists every one still there.
        """
        alive = {m for m, _ in near}
        last_seen = near[-1][1] if near else 0
        for member, claim in list(self._prepared.items()):
            if member not in alive and (not truncated or claim.when < last_seen):
                del self._prepared[member]
                self._read_at.pop(member, None)
        # Runs waiting for a retry were due too: gone from a complete window,
        # their schedule was cancelled or replanned, and the wait is forgotten.
        if not truncated:
            for member in [m for m in self._retry_at if m not in alive]:
                self._retry_at.pop(member, None)
                self._retry_wait.pop(member, None)

    def forget(self, names: list[str]) -> None:
        """The planner found these schedules gone or inactive: drop what we remember of them.

        Only a claimed next run ends a stretch of held-back runs; a schedule
        deleted or disabled meanwhile has none, and would stay in
        ``_overlapping`` for good (enabled again, its first held-back run
        would not be logged either).
        """
        for name in names:
            self._delayed.pop(name, None)
            self._unbuildable.pop(name, None)
        self._overlapping.difference_update(names)

    # -- building ----------------------------------------------------------
    def _start_builds(self, todo: list[tuple[str, int]]) -> None:
        for member, when in todo:
            self._building[member] = when
            self._building_at[when] += 1
        d = Deferred.fromCoroutine(self._build_all(todo))
        d.addErrback(lambda f: self.log.failure("preparing jobs failed", f))
        d.addBoth(lambda _: self._after_builds(todo))

    def _after_builds(self, todo: list[tuple[str, int]]) -> None:
        self._done_building(m for m, _ in todo)
        self._runs.flush_skipped()
        if not self._claiming:
            self._release_held(self._clock.seconds())
        soonest = self._soonest()
        if self._truncated:
            self._truncated = False
            self._arm(0)
        elif soonest is not None:
            self._arm(soonest - self._clock.seconds())
        elif self._retry_at:
            self._arm(min(self._retry_at.values()) - self._clock.seconds())

    def _done_building(self, members: object) -> None:
        for member in members:  # type: ignore[attr-defined]
            when = self._building.pop(member, None)
            if when is None:
                continue
            self._building_at[when] -= 1
            if self._building_at[when] <= 0:
                del self._building_at[when]

    def _building_due(self, now: float) -> bool:
        """Some run due by ``now`` is still being built."""
        return any(when <= now for when in self._building_at)

    async def _build_all(self, todo: list[tuple[str, int]]) -> None:
        parsed = [(m, split_member(m), when) for m, when in todo]
        unreadable = [m for m, p, _ in parsed if p is None]
        if unreadable:
            self.log.warn("removing unreadable members {members}", members=unreadable)
            await self._store.discard(unreadable)
        wanted = [(m, p[0], when) for m, p, when in parsed if p is not None]
        # Earliest first, a chunk at a time: the first jobs are ready (and
        # claimed, once due) while later chunks are still being read and built.
        wanted.sort(key=lambda item: (item[2], item[0]))
        chunks = [wanted[i:i + BUILD_CHUNK] for i in range(0, len(wanted), BUILD_CHUNK)]
        reading = self._read_rows(chunks[0]) if chunks else None
        # A burst's builds allocate enough to set off full collections of the
        # whole heap (40-60 ms each, two or three per 10,000 jobs).
        pause = len(wanted) > BUILD_SLICE
        if pause:
            gc_pause()
        try:
            for k, chunk in enumerate(chunks):
                try:
                    rows = await reading  # type: ignore[misc]
                except Exception as e:
                    reading = None
                    for later in chunks[k:]:
                        for member, _, _ in later:
                            self._schedule_retry(member)
                    self._rows_unavailable(e)
                    return
                reading = None
                self._read_error = None
                if not self.running:
                    return  # the members stay in Redis for the next start
                if k + 1 < len(chunks):
                    reading = self._read_rows(chunks[k + 1])
                await self._build_chunk(chunk, rows, self._clock.seconds(), reading is None)
        finally:
            if pause:
                gc_resume()
            if reading is not None:
                # Read ahead for a loop that ended early: nobody awaits it.
                reading.addErrback(lambda _: None)

    async def _build_chunk(
        self, chunk: list[tuple[str, str, int]], rows: dict[str, ScheduleRow], read_at: float,
        last: bool,
    ) -> None:
        immediate = getattr(self._builder, "immediate", False)
        start = 0
        while start < len(chunk):
            if immediate:
                # A slice ends after SLICE_SECS: a claim due meanwhile waits
                # for the reactor no longer than that, however slow the host.
                began = self._clock.seconds()
                end = start
                while end < len(chunk) and end - start < BUILD_SLICE:
                    member, name, when = chunk[end]
                    self._prepare_now(member, name, when, rows.get(name), read_at)
                    end += 1
                    if (end - start) % 10 == 0 and self._clock.seconds() - began >= SLICE_SECS:
                        break
            else:
                end = min(start + BUILD_SLICE, len(chunk))
                builds = [
                    self._build_slots.run(self._prepare, member, name, when, rows.get(name),
                                          read_at)
                    for member, name, when in chunk[start:end]
                ]
                for d in builds:
                    await d
            self._done_building(member for member, _, _ in chunk[start:end])
            self._slice_built()
            start = end
            if start < len(chunk) or not last:
                # Let the reactor send claims and read replies in between.
                await deferLater(self._clock, 0, lambda: None)

    def _rows_unavailable(self, error: Exception) -> None:
        """One warning per kind of unexpected read failure (a SQL error: a column
        the BTU app no longer has, say); an outage is the database health's
        one line, so only debug here."""
        health = getattr(self._db, "health", None)
        text = f"{type(error).__name__}: {error}"
        if (health is not None and not health.up) or text == self._read_error:
            self.log.debug("rows for due runs unavailable: {error}", error=text)
            return
        self._read_error = text
        self.log.warn(
            "rows for due runs could not be read (retried until they can): {error}", error=text)

    def _read_rows(self, chunk: list[tuple[str, str, int]]) -> Deferred[dict[str, ScheduleRow]]:
        return ensureDeferred(self._db.read_schedules([name for _, name, _ in chunk]))

    def _slice_built(self) -> None:
        """Jobs became ready: wake a claim round waiting for them, or arm for them."""
        if self._built is not None:
            self._wake_round(True)
            return
        soonest = self._soonest()
        if soonest is not None:
            self._arm(soonest - self._clock.seconds())
    async def _prepare(
        self, member: str, name: str, when: int, row: ScheduleRow | None, read_at: float
    ) -> None:
        if not self._may_build(member, name, when, row):
            return
        try:
            built = await self._builder.build(row, when)  # type: ignore[arg-type]
        except Exception as e:
            self._not_built(member, name, when, e)
            return
        self._got_job(member, name, when, row, built, read_at)  # type: ignore[arg-type]

    def _prepare_now(
        self, member: str, name: str, when: int, row: ScheduleRow | None, read_at: float
    ) -> None:
        """:meth:`_prepare` for a builder whose Deferred has fired when
        ``build`` returns: no build slot, no coroutine (they were a third of a
        burst job's build time)."""
        if not self._may_build(member, name, when, row):
            return
        outcome: list[object] = []
        self._builder.build(row, when).addBoth(outcome.append)  # type: ignore[arg-type]
        [result] = outcome
        if isinstance(result, Failure):
            self._not_built(member, name, when, result.value)  # type: ignore[arg-type]
        else:
            self._got_job(member, name, when, row, result, read_at)  # type: ignore[arg-type]

    def _may_build(self, member: str, name: str, when: int, row: ScheduleRow | None) -> bool:
        """Whether to build this run's job; if not, its member is settled (or left)."""
        if not self.running:
            # Stopped while the rows were read (or a build slot awaited): the
            # builder is closed next, and a fetch begun now would outlive it.
            # The member stays in Redis for the next start.
            return False
        refusal = refusal_of(row, self._default_zone, when)
        if refusal is not None:
            # The committed row no longer produces this run (edited, disabled,
            # deleted, task cancelled): it must not be enqueued.  The claim
            # below removes the member; replanning reads the row again.
            self.log.info(
                "run of {schedule} at {when} dropped: {reason}",
                schedule=name, when=iso(when), reason=refusal,
            )
            self._settle_without_job(member, name, when, DROPPED)
            self._on_failure("schedule_gone")
            return False
        if self._misfired(name, when, self._clock.seconds()):
            # Too late already: don't build (or call the site) for nothing.
            self._settle_without_job(member, name, when, SKIPPED_MISFIRE)
            return False
        return True

    def _not_built(self, member: str, name: str, when: int, e: BaseException) -> None:
        if not self.running:
            # Stopping: the builder's close() cancelled this fetch.  The
            # member is still in Redis; the next start builds it again.
            self.log.debug("build of {schedule} abandoned: stopping", schedule=name)
            return
        if isinstance(e, BuildError):
            self._build_failed(member, name, when, e)
            return
        # A cancelled site request, or a builder bug: this run's failure,
        # counted and retried, never an unhandled error of the whole round.
        reason = f"unexpected {type(e).__name__} while building the job: {e}"
        self._build_failed(member, name, when, BuildError(name, reason, transient=True))

    def _got_job(
        self, member: str, name: str, when: int, row: ScheduleRow, built: BuiltJob,
        read_at: float,
    ) -> None:
        if self._forget_retry(member, name) or self._unbuildable.pop(name, None):
            self.log.info("schedule {schedule} can be enqueued again", schedule=name)
        # Framed for Redis now, so that claiming it at the due second costs
        # no encoding.
        self._ready(framed(Claim(
            member=member, schedule=name, when=when,
            job_id=built.job_id, origin=built.origin, fields=built.fields,
            overlap=self._overlap_skips(row),
        )))
        self._read_at[member] = read_at

    def _ready(self, claim: Claim) -> None:
        self._prepared[claim.member] = claim
        self._due.add(claim)

    def _wanted(self, claim: Claim) -> bool:
        """Still prepared (not superseded, settled or dropped), not being claimed."""
        return self._prepared.get(claim.member) is claim and claim.member not in self._claiming

    def _soonest(self) -> int | None:
        """Due time of the earliest prepared claim not being claimed."""
        return self._due.soonest(self._wanted)

    def _within_grace(self, claim: Claim, now: float) -> Claim:
        """The claim to make for a due job: a job prepared in time whose claim
        comes too late (Redis was away) is skipped, as misfire_grace_secs says,
        not enqueued late."""
        if not claim.job_id or not self._misfired(claim.schedule, claim.when, now):
            return claim
        skip = Claim(
            member=claim.member, schedule=claim.schedule, when=claim.when,
            outcome=SKIPPED_MISFIRE,
        )
        self._prepared[claim.member] = skip
        return skip

    def _misfired(self, name: str, when: int, now: float) -> bool:
        """True (counted, and logged with the round) when misfire_grace_secs
        says to skip this run."""
        late = now - when
        if self._grace is None or late <= self._grace:
            return False
        self._runs.skipped.append(Skipped(name, when, late))
        self._on_failure("misfire_skipped")
        return True

    def _build_failed(self, member: str, name: str, when: int, error: BuildError) -> None:
        reason = str(error)
        self._on_failure("build_transient" if error.transient else "build_permanent")
        if not error.transient:
            # Logged when the schedule breaks or its reason changes, not at
            # every run: a per-second schedule would flood the journal.
            # A site refusing the daemon (401/403) is one error line of the
            # site's own, not one per schedule.
            repeated = self._unbuildable.get(name) == reason or error.site_refused
            emit = self.log.debug if repeated else self.log.error
            self._unbuildable[name] = reason
            emit(
                "run of {schedule} at {when} skipped: {reason}",
                schedule=name, when=iso(when), reason=reason,
            )
            self._settle_without_job(member, name, when, SKIPPED_UNBUILDABLE)
            return
        self._schedule_retry(member)
        if name not in self._delayed:
            self._delayed[name] = reason
            self.log.warn(
                "run of {schedule} at {when} delayed, retrying with backoff: {reason}",
                schedule=name, when=iso(when), reason=reason,
            )

    def _schedule_retry(self, member: str) -> None:
        """Retry this run after 1, 2, 4, ... seconds, at most 30."""
        wait = min(30.0, 2 * self._retry_wait.get(member, 0.5))
        self._retry_wait[member] = wait
        self._retry_at[member] = self._clock.seconds() + wait

    def _forget_retry(self, member: str, name: str) -> bool:
        """The run is settled; True if its schedule had a delay logged."""
        self._retry_at.pop(member, None)
        self._retry_wait.pop(member, None)
        return self._delayed.pop(name, None) is not None

    def _settle_without_job(self, member: str, name: str, when: int, outcome: str) -> None:
        """Claim this run with no job (skipped or dropped), ending any delay;
        the run history records ``outcome``."""
        self._forget_retry(member, name)
        self._ready(Claim(member=member, schedule=name, when=when, outcome=outcome))

    def _overlap_skips(self, row: ScheduleRow) -> bool:
        """True when a run of ``row`` waits for its previous job to finish."""
        if row.source == "mariadb":
            return self._default_overlap
        return row.overlap == "skip"

    # -- claiming ------------------------------------------------------------
    async def _claim_due(self) -> None:
        """Claim every due prepared job, CLAIMS_IN_FLIGHT batches at a time.

        Redis runs one call while the next ones wait in its socket, so it is
        never idle between batches; the replies are settled in order.  Jobs
        still being built for runs already due are waited for (a little), so
        that a burst's chunks are claimed as they come.
        """
        in_flight: deque[tuple[list[Claim], Deferred[list[int]]]] = deque()
        failure: BaseException | None = None
        # No cyclic garbage collection in the middle of a round: with a burst's
        # jobs prepared, one full collection took 40-80 ms.  It runs after.
        gc_pause()
        size = FIRST_BATCH
        try:
            while True:
                while failure is None and self.running and len(in_flight) < CLAIMS_IN_FLIGHT:
                    batch = self._next_batch(self._clock.seconds(), size)
                    if not batch:
                        break
                    size = CLAIM_BATCH
                    enqueued_at = utcformat(datetime.now(timezone.utc))
                    in_flight.append((batch, ensureDeferred(self._store.claim(batch, enqueued_at))))
                    if len(in_flight) < CLAIMS_IN_FLIGHT:
                        # Let the reactor write this call out (Redis starts on
                        # it) before the next one is put together.
                        await deferLater(self._clock, 0, lambda: None)
                if in_flight:
                    batch, reply = in_flight.popleft()
                    try:
                        results = await reply
                    except Exception as e:
                        # The calls after it may still go through: settle them,
                        # then fail this round (backoff); the rest is retried.
                        failure = failure or e
                        self._unclaim(batch)
                        continue
                    self._claiming.difference_update(c.member for c in batch)
                    now = self._clock.seconds()
                    self._settle(batch, results, now)
                    if now - self._held_since >= HOLD_SECS:  # type: ignore[operator]
                        # A burst too big to claim in HOLD_SECS: the schedules
                        # claimed so far must not miss their next runs.
                        self._release_held(now)
                    continue
                if failure is not None:
                    raise failure
                if not await self._wait_for_builds():
                    return
        finally:
            gc_resume()
            for batch, reply in in_flight:  # only when cancelled or a bug
                reply.addErrback(lambda _: None)
                self._unclaim(batch)
            self._end_round()

    def _next_batch(self, now: float, size: int) -> list[Claim]:
        """Up to ``size`` due claims, earliest first.

        A claim whose row was read too long ago is dropped to be built again
        from a fresh read (the row may have been edited meanwhile, and its
        claim was held up).  Its schedule is also planned again: if an earlier
        claim attempt did go through (its reply lost), the member is gone and
        no claim result will ever ask for the next run.  Replanning is always
        safe: a member already due is left to us, an enqueued run never comes
        back.
        """
        batch: list[Claim] = []
        for claim in self._due.take(now, size, self._wanted):
            member = claim.member
            if claim.job_id and now - self._read_at.get(member, now) > ROW_FRESHNESS:
                del self._prepared[member]
                self._read_at.pop(member, None)
                self._fifo.extend([claim.schedule])
                continue
            batch.append(self._within_grace(claim, now))
        self._claiming.update(c.member for c in batch)
        return batch

    def _unclaim(self, batch: list[Claim]) -> None:
        """A claim call failed: its claims stay prepared, to be tried again."""
        for claim in batch:
            self._claiming.discard(claim.member)
            if self._prepared.get(claim.member) is claim:
                self._due.add(claim)

    async def _wait_for_builds(self) -> bool:
        """Wait for the next slice of due jobs being built; False if there is
        none, or it takes longer than BUILD_WAIT (a slow site must not hold the
        timer) or than what is left of HOLD_SECS."""
        now = self._clock.seconds()
        wait = BUILD_WAIT
        if self._held_since is not None:
            wait = min(wait, self._held_since + HOLD_SECS - now)
        if not self.running or wait <= 0 or not self._building_due(now):
            return False
        waiting: Deferred[bool] = Deferred()
        self._built = waiting
        timeout = self._clock.callLater(wait, self._wake_round, False)
        built = await waiting
        if timeout.active():
            timeout.cancel()
        return built

    def _wake_round(self, built: bool) -> None:
        """End the wait of a claim round waiting for builds (True: some are done)."""
        if self._built is not None:
            waiting, self._built = self._built, None
            waiting.callback(built)

    def _settle(self, batch: list[Claim], results: list[int], now: float) -> None:
        """Record a claim batch's results.  What they set off (metrics, job
        ids, log lines, replans) is held for the end of the round: the next
        batches' replies are waiting to be read."""
        if self._held_since is None:
            self._held_since = now
        enqueued = self._enqueued
        for claim, result in zip(batch, results):
            self._prepared.pop(claim.member, None)
            self._read_at.pop(claim.member, None)
            if result == BLOCKED:
                # Untouched by the store, which logged why: claim it again later.
                self._retry_at[claim.member] = now + BLOCKED_RETRY_SECS
                continue
            if result == CLAIMED and claim.job_id:
                enqueued.append((claim, now - claim.when))
                if claim.overlap and claim.schedule in self._overlapping:
                    self._overlapping.discard(claim.schedule)
                    self.log.info(
                        "{schedule}: previous job done, runs are enqueued again",
                        schedule=claim.schedule,
                    )
            elif result == OVERLAPPED:
                self.stats.skipped += 1
                self._on_failure("overlap_skipped")
                if claim.schedule not in self._overlapping:
                    # Once per stretch of held-back runs, not once per run.
                    self._overlapping.add(claim.schedule)
                    self.log.info(
                        "run of {schedule} at {when} skipped: its previous job is still "
                        "queued or started (overlap = \"skip\"); further skips not logged",
                        schedule=claim.schedule, when=iso(claim.when),
                    )
            elif result == CLAIMED:
                self.stats.skipped += 1
            else:
                self.stats.lost += 1
            # LOST too: the winner normally plans the next run, but it may have
            # been killed right after its claim, or the winner may be us (an
            # earlier attempt of this claim ran but its reply was lost).  The
            # store never brings back a run already enqueued, so planning
            # again is always safe.
            self._replans.append(claim.schedule)

    def _end_round(self) -> None:
        """A round of claims ended: let go of what it set off, unless the
        burst's due jobs are still being built (then the next round does, or
        the end of the builds; HOLD_SECS at most)."""
        now = self._clock.seconds()
        self._runs.flush_skipped()
        if (
            not self.running
            or not self._building_due(now)
            or (self._held_since is not None and now - self._held_since >= HOLD_SECS)
        ):
            self._release_held(now)
        elif self._held_since is not None:
            # Builds that never finish (a site hanging) must not hold them longer.
            self._arm(self._held_since + HOLD_SECS - now)

    def _release_held(self, now: float) -> None:
        """Count and log the enqueued runs, record their job ids, replan the
        claimed schedules."""
        self._held_since = None
        enqueued, self._enqueued = self._enqueued, []
        replans, self._replans = self._replans, []
        for claim, lateness in enqueued:
            self.stats.lateness.append(lateness)
            self._on_enqueued(claim, lateness)
            self._runs.enqueued.append(
                Enqueued(claim.schedule, claim.when, lateness, claim.job_id, claim.origin))
        if enqueued:
            self.stats.enqueued += len(enqueued)
            self.stats.last_enqueue = now
            self.stats.last_schedule = enqueued[-1][0].schedule
            self._on_job_ids([(c.schedule, c.job_id) for c, _ in enqueued])
        if replans:
            self._fifo.extend(replans)
            self._fold_history()
        self._runs.flush()

    def _fold_history(self) -> None:
        """File the run history entries claimed so far under their schedules
        (history.py), one fold at a time.  A failed fold loses nothing: the
        entries wait in Redis for the next one."""
        if self._folding is not None:
            self._fold_again = True
            return
        if not self.running or not hasattr(self._store, "fold_history"):
            return
        folding = ensureDeferred(self._store.fold_history())
        folding.addErrback(lambda failure: self.log.debug(
            "run history not filed yet: {error}", error=failure.value))
        if folding.called:
            return
        self._folding = folding

        def done(_: object) -> None:
            self._folding = None
            if self._fold_again:
                self._fold_again = False
                self._fold_history()

        folding.addCallback(done)
