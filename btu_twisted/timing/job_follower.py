"""Following each enqueued job to its end, so that a schedule that stopped working shows.

The timer tells the follower every job it enqueued and every run it skipped;
every ``health_follow_secs`` one pass asks Redis where the unfinished jobs
stand (store/health_store.py: one read-only script call per 500 jobs, at most
PASS_LIMIT jobs a pass, the longest unasked first), folds what ended into
each schedule's record, writes the records that changed, and works out the
states of the schedules that changed or still have a job out (a job becomes
late or stuck while nothing happens).  Nothing is asked per job per second,
and a schedule with no job out costs nothing between its runs.

A change of state goes to the listeners (the webhook, a log line); the
records are in Redis for ``btu health`` and the status page.  A pass never
touches the timer's path: a slow or failed pass delays only the next pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import replace
from functools import partial
from itertools import islice
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.clock import Clock, reactor_time
from btu_twisted.store.claims import Claim
from btu_twisted.store.health_record import (
    NEVER_RUN,
    Health,
    HealthRecord,
    PendingJob,
    Thresholds,
    classify,
)
from btu_twisted.store.health_store import JobState
from btu_twisted.timing.coalesced import LATE_SECS

__all__ = ["MAX_PENDING", "PASS_LIMIT", "FollowerStore", "JobFollower", "StateListener"]

#: Jobs asked about per pass (10 script calls, ~10 ms of Redis in all).
PASS_LIMIT = 5000
#: Unfinished jobs followed at most; past it the oldest are let go (and say so).
MAX_PENDING = 500_000

_UNFINISHED = frozenset({"queued", "started", "deferred", "scheduled"})
_FAILED = frozenset({"failed", "stopped", "canceled"})

#: (schedule, state before, state now, its record)
StateListener = Callable[[str, Health, Health, HealthRecord], None]
#: Late runs (schedule -> its time, when it was enqueued) -> the times each covered.
Coalesced = Callable[[Mapping[str, tuple[int, float]]], Awaitable[dict[str, list[int]]]]
#: Schedules no longer planned -> why each does not run (None: it is gone).
Inactive = Callable[[Sequence[str]], Awaitable[dict[str, str | None]]]
#: Late runs looked at per pass, and waiting at most.
LATE_PER_PASS = 500
MAX_LATE = 10_000


class FollowerStore(Protocol):
    """What the follower needs of :class:`~btu_twisted.store.health_store.HealthStore`."""

    async def follow(self, jobs: Sequence[tuple[str, str]]) -> list[JobState | None]: ...

    async def save(self, records: Mapping[str, HealthRecord]) -> None: ...

    async def load(self) -> dict[str, HealthRecord]: ...

    async def forget(self, names: Sequence[str]) -> None: ...


class JobFollower:
    """Started and stopped by the daemon as one of its parts (daemon/parts.py)."""

    log = Logger()

    def __init__(
        self,
        clock: Clock,
        store: FollowerStore,
        thresholds: Thresholds,
        interval: float,
        paused: Callable[[], Container[str]] = frozenset,
        pass_limit: int = PASS_LIMIT,
        coalesced: Coalesced | None = None,
        inactive: Inactive | None = None,
    ) -> None:
        """``paused``: the schedules paused now (shown as paused, never alarming).
        ``coalesced``: what late runs covered (timing/coalesced.py); None: not asked.
        ``inactive``: why unplanned schedules do not run; None: not asked."""
        self._clock = clock
        self._store = store
        self.thresholds = thresholds
        self._interval = interval
        self._paused = paused
        self._limit = pass_limit
        self.records: dict[str, HealthRecord] = {}
        self.states: dict[str, Health] = {}
        self._pending: dict[str, str] = {}  # job id -> schedule, the longest unasked first
        self._seen: dict[str, str] = {}  # job id -> its status at the last pass
        self._coalesced = coalesced
        self._late: dict[str, tuple[int, float]] = {}  # late runs to look at
        self._inactive = inactive
        self._unplanned: dict[str, None] = {}  # schedules to look at, in order
        self._gone: set[str] = set()  # records to delete
        self._dirty: set[str] = set()
        self._loop: LoopingCall | None = None
        self._pass: Deferred[None] | None = None
        #: What the timer reported while the records were still being read.
        self._early: list[Callable[[], None]] | None = []
        self._loading: Deferred[None] | None = None
        self.listeners: list[StateListener] = []
        #: Called with the records that changed, after each pass (metrics).
        self.observers: list[Callable[[Mapping[str, HealthRecord]], None]] = []

    # -- what the timer reports ---------------------------------------------------
    def enqueued(self, claim: Claim, lateness: float) -> None:
        if self._early is not None:
            self._early.append(partial(self.enqueued, claim, lateness))
            return
        now = self._clock.seconds()
        record = self.records.get(claim.schedule, HealthRecord())
        self.records[claim.schedule] = replace(
            record, last_scheduled=claim.when, last_enqueued=now, inactive=None,
            job=PendingJob(claim.job_id, claim.when, now))
        self._pending[claim.job_id] = claim.schedule
        self._dirty.add(claim.schedule)
        if self._coalesced is not None and lateness >= LATE_SECS and len(self._late) < MAX_LATE:
            self._late[claim.schedule] = (claim.when, now)
        if len(self._pending) > MAX_PENDING:
            dropped = next(iter(self._pending))
            del self._pending[dropped]
            self._seen.pop(dropped, None)
            self.log.warn("following more than {count:,} unfinished jobs: job {job} no longer "
                          "followed", count=MAX_PENDING, job=dropped)
        self._wake()

    def unplanned(self, names: Sequence[str]) -> None:
        """The planner found these disabled, deleted or their task cancelled: a
        deleted one's record goes, the others show why and alarm no more (a
        schedule deleted while failing must not keep ``btu health`` critical)."""
        if self._early is not None:
            self._early.append(partial(self.unplanned, names))
            return
        if self._inactive is not None:
            for name in names:
                if name in self.records and len(self._unplanned) < MAX_LATE:
                    self._unplanned[name] = None
            self._wake()

    def skipped(self, schedule: str, times: list[int]) -> None:
        """Runs that will not run: skipped (overlap, misfire) or coalesced into one."""
        if self._early is not None:
            self._early.append(partial(self.skipped, schedule, times))
            return
        record = self.records.get(schedule, HealthRecord())
        self.records[schedule] = record.with_missed(times)
        self._dirty.add(schedule)
        self._wake()

    # -- start, stop ----------------------------------------------------------------
    def start(self) -> Deferred[None]:
        """Carry on from the records a previous daemon left (its jobs out are
        followed), read in the background: a bench's 100,000 take a second or
        two, which must not hold up the timer's start; what the timer reports
        meanwhile is applied once they are in.  Fires when they are."""
        self._loading = Deferred.fromCoroutine(self._load())
        return self._loading

    async def _load(self) -> None:
        try:
            loaded = await self._store.load()
        except Exception as e:
            self.log.warn("schedule health records not read ({error}): starting afresh",
                          error=e)
            loaded = {}
        for name, record in loaded.items():
            self.records.setdefault(name, record)
            if record.job is not None:
                self._pending.setdefault(record.job.job_id, name)
        early, self._early = self._early or [], None
        for call in early:
            call()
        now = self._clock.seconds()
        paused = self._paused()
        for name, record in self.records.items():
            self.states[name] = classify(record, now, self.thresholds, name in paused)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor_time(self._clock)
        self._wake()

    def _idle(self) -> bool:
        return not (self._pending or self._late or self._unplanned or self._dirty or self._gone)

    def _wake(self) -> None:
        # Passes only while something is out or unsaved: 500 idle sites' timers woke
        # the reactor 167 times a second for nothing.
        if self._loop is not None and not self._loop.running and not self._idle():
            self._loop.start(self._interval, now=False)

    async def stop(self) -> None:
        if self._loading is not None:
            await self._loading
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None  # never started again
        if self._pass is not None:
            await self._pass
        try:
            await self._save()
        except Exception as e:
            # Only what changed since the last pass is lost; the jobs are
            # followed again from the saved records at the next start.
            self.log.warn("schedule health not saved at stop: {error}", error=e)

    def _tick(self) -> None:
        if self._pass is not None:
            return  # the previous pass is still out (Redis slow): skip this one
        if self._idle():
            if self._loop is not None:
                self._loop.stop()  # nothing out, nothing to save: _wake starts it again
            return
        self._pass = Deferred.fromCoroutine(self.follow_once())

        def done(_: object) -> None:
            self._pass = None

        self._pass.addErrback(lambda f: self.log.warn("following jobs failed: {error}",
                                                      error=f.value)).addBoth(done)

    # -- one pass ---------------------------------------------------------------------
    async def follow_once(self) -> None:
        ids = list(islice(self._pending, self._limit))
        if ids:
            found = await self._store.follow([(job, self._seen.get(job, "?")) for job in ids])
            now = self._clock.seconds()
            for job_id, state in zip(ids, found, strict=False):
                schedule = self._pending.pop(job_id, None)
                if schedule is None:
                    continue
                if state is None or not self._apply(schedule, job_id, state, now):
                    self._pending[job_id] = schedule  # asked again after the others
                    if state is not None:
                        self._seen[job_id] = state.status
                else:
                    self._seen.pop(job_id, None)
        if self._late and self._coalesced is not None:
            late = dict(islice(self._late.items(), LATE_PER_PASS))
            for name in late:
                del self._late[name]
            for name, times in (await self._coalesced(late)).items():
                self.skipped(name, times)
        if self._unplanned and self._inactive is not None:
            await self._look_at_unplanned(self._inactive)
        self._evaluate(self._clock.seconds())
        await self._save()

    async def _look_at_unplanned(self, inactive: Inactive) -> None:
        names = list(islice(self._unplanned, LATE_PER_PASS))
        for name in names:
            del self._unplanned[name]
        for name, why in (await inactive(names)).items():
            record = self.records.get(name)
            if record is None:
                continue
            if why is None:
                del self.records[name]
                self.states.pop(name, None)
                self._dirty.discard(name)
                self._gone.add(name)
            elif record.inactive != why:
                self.records[name] = replace(record, inactive=why)
                self._dirty.add(name)

    def _apply(self, schedule: str, job_id: str, job: JobState, now: float) -> bool:
        """Fold one job's state into its schedule's record; True when the job has ended."""
        record = self.records.get(schedule)
        if record is None:
            return True  # its schedule is gone: no longer followed
        latest = record.job is not None and record.job.job_id == job_id
        if job.status in _UNFINISHED:
            if job.status == "started" and latest and record.job is not None \
                    and record.job.started is None:
                started = job.started or now
                self.records[schedule] = replace(
                    record, last_started=started, job=replace(
                        record.job, started=started, timeout=job.timeout),
                    queue_secs=_wait(job, record.job.enqueued, started))
                self._dirty.add(schedule)
            return False
        ended = job.ended or now
        run_secs = ended - job.started if job.started is not None else None
        record = replace(
            record,
            job=None if latest else record.job,
            last_started=job.started or record.last_started,
            queue_secs=_wait(job, None, job.started) if job.started else record.queue_secs,
            run_secs=run_secs if run_secs is not None else record.run_secs,
        )
        if job.status in _FAILED:
            record = replace(record, last_failure=ended, consecutive_failures=(
                record.consecutive_failures + 1), last_error=job.error or job.status)
        else:
            # "finished", or a hash already gone: rq deletes a job at once only
            # after a success (result_ttl = 0); a failure is kept failure_ttl.
            record = replace(record, last_success=ended, consecutive_failures=0, missed=0,
                             missed_times=())
        self.records[schedule] = record
        self._dirty.add(schedule)
        return True

    def _evaluate(self, now: float) -> None:
        """The states of the schedules that changed or have a job out; listeners told
        of each change."""
        names = self._dirty | set(self._pending.values())
        if not names:
            return
        paused = self._paused()
        for name in names:
            record = self.records.get(name)
            if record is None:
                continue
            health = classify(record, now, self.thresholds, name in paused)
            before = self.states.get(name, Health(NEVER_RUN, 0))
            self.states[name] = health
            if (health.state, health.level) != (before.state, before.level):
                self._changed(name, before, health, record)

    def _changed(self, name: str, before: Health, now: Health, record: HealthRecord) -> None:
        if now.level:
            self.log.warn("schedule {name} is {state} ({reason}){error}", name=name,
                          state=now.state, reason=now.reason,
                          error=f": {record.last_error}" if record.last_error and
                          record.consecutive_failures else "")
        elif before.level:
            self.log.info("schedule {name} is {state} again (was {before})", name=name,
                          state=now.state, before=before.state)
        for listener in self.listeners:
            try:
                listener(name, before, now, record)
            except Exception:
                self.log.failure("a schedule health listener failed")

    async def _save(self) -> None:
        if self._gone:
            gone, self._gone = self._gone, set()
            try:
                await self._store.forget(sorted(gone))
            except Exception:
                self._gone |= gone
                raise
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        changed = {name: self.records[name] for name in dirty if name in self.records}
        try:
            await self._store.save(changed)
        except Exception:
            self._dirty |= dirty  # written with the next pass
            raise
        for observer in self.observers:
            observer(changed)

    # -- what the status page and the metrics read ----------------------------------------
    def unwell(self, limit: int = 100) -> list[tuple[str, Health, HealthRecord]]:
        """The schedules in a warning or critical state, the worst first."""
        bad = [(name, health, self.records[name]) for name, health in self.states.items()
               if health.level and name in self.records]
        bad.sort(key=lambda item: (-item[1].level, item[0]))
        return bad[:limit]


def _wait(job: JobState, enqueued: float | None, started: float | None) -> float | None:
    """Seconds the job waited on its queue (rq's own enqueued_at when it has one)."""
    base = job.enqueued if job.enqueued is not None else enqueued
    if base is None or started is None:
        return None
    return max(0.0, started - base)
