"""The timer: due members become RQ jobs, each (schedule, time) exactly once.

It sleeps until the earliest member is close (a ``callLater``, re-armed when
the planner adds an earlier one), reads the rows and builds the jobs a little
*before* they are due — which also hides the site's HTTP latency — and at the
due instant claims and enqueues all of them in one script call.  Building
before claiming means a crash at any instant loses nothing (the member is
still there) and doubles nothing (the claim is atomic); several daemons all
build, one claim wins and the others drop their copies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from rq.utils import utcformat
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from btu_twisted.builders import BuildError, JobBuilder
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Backoff
from btu_twisted.planner import Unplannable, next_run_for
from btu_twisted.records import ScheduleRow
from btu_twisted.sql import Database
from btu_twisted.store import (
    BLOCKED, BLOCKED_RETRY_SECS, CLAIMED, Claim, ScheduleStore, split_member,
)

LOOKAHEAD = 2.0          # seconds before a run is due to read its row and build its job
FETCH_LIMIT = 20000      # due members looked at per wake-up
CLAIM_BATCH = 500        # members claimed per script call
BUILD_CONCURRENCY = 16   # builds in flight at once (HTTP calls to the site)
BATCH_LOG_DETAIL = 20    # claim batches larger than this log one summary line at info
# A prepared job whose row was read longer ago than this is built again from a
# fresh read before it is claimed (its claim was held up, e.g. Redis away).
ROW_FRESHNESS = LOOKAHEAD + 1.0


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
        db: Database,
        builder: JobBuilder,
        fifo: ScheduleFifo,
        polling_interval: float,
        misfire_grace: float | None = None,
        on_enqueued: Callable[[Claim, float], None] = lambda claim, lateness: None,
        on_failure: Callable[[str], None] = lambda reason: None,
        lookahead: float = LOOKAHEAD,
        default_zone: str = "UTC",
        on_job_ids: Callable[[list[tuple[str, str]]], None] = lambda pairs: None,
    ) -> None:
        self._clock = clock
        self._store = store
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
        self._building: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._retry_wait: dict[str, float] = {}
        self._delayed: dict[str, str] = {}      # schedule -> reason already logged
        self._unbuildable: dict[str, str] = {}  # schedule -> permanent reason already logged
        self._build_slots = DeferredSemaphore(BUILD_CONCURRENCY)
        self._backoff = Backoff()
        self._wake: IDelayedCall | None = None
        self._ticking: Deferred[None] | None = None
        self._again = False
        self._truncated = False
        self.stats = TimerStats()

    # -- service ---------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._arm(0)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
        return self._ticking

    def planned(self, when: float) -> None:
        """The planner added a member at ``when``: wake earlier if needed."""
        self._arm(when - self._lookahead - self._clock.seconds())

    # -- wake-ups --------------------------------------------------------
    def _arm(self, delay: float) -> None:
        if not self.running:
            return
        delay = max(0.0, delay)
        at = self._clock.seconds() + delay
        if self._wake is not None and self._wake.active():
            if self._wake.getTime() <= at:
                return
            self._wake.cancel()
        self._wake = self._clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._wake = None
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
        try:
            next_delay = await self._step()
            self._backoff.reset()
        except Exception:
            self._on_failure("timer_step")
            if self._store.health is None or self._store.health.up:
                self.log.failure("timer step failed")
            next_delay = self._backoff.next_delay()
        finally:
            self._ticking = None
        if self._again:
            self._again = False
            next_delay = 0.0
        self._arm(min(next_delay, float(self._polling)))

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
        if any(c.when <= self._clock.seconds() for c in self._prepared.values()):
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
        """The planner found these schedules gone or inactive: drop what we remember of them."""
        for name in names:
            self._delayed.pop(name, None)
            self._unbuildable.pop(name, None)

    # -- building ----------------------------------------------------------
    def _start_builds(self, todo: list[tuple[str, int]]) -> None:
        for member, _ in todo:
            self._building.add(member)
        d = Deferred.fromCoroutine(self._build_all(todo))
        d.addErrback(lambda f: self.log.failure("preparing jobs failed", f))
        d.addBoth(lambda _: self._after_builds(todo))

    def _after_builds(self, todo: list[tuple[str, int]]) -> None:
        for member, _ in todo:
            self._building.discard(member)
        soonest = min((c.when for c in self._prepared.values()), default=None)
        if self._truncated:
            self._truncated = False
            self._arm(0)
        elif soonest is not None:
            self._arm(soonest - self._clock.seconds())
        elif self._retry_at:
            self._arm(min(self._retry_at.values()) - self._clock.seconds())

    async def _build_all(self, todo: list[tuple[str, int]]) -> None:
        parsed = [(m, split_member(m), when) for m, when in todo]
        unreadable = [m for m, p, _ in parsed if p is None]
        if unreadable:
            self.log.warn("removing unreadable members {members}", members=unreadable)
            await self._store.discard(unreadable)
        wanted = [(m, p[0], when) for m, p, when in parsed if p is not None]
        try:
            rows = await self._db.read_schedules([name for _, name, _ in wanted])
        except Exception as e:
            for member, _, _ in wanted:
                self._schedule_retry(member)
            self.log.debug("rows for due runs unavailable: {error}", error=e)
            return
        read_at = self._clock.seconds()
        builds = [
            self._build_slots.run(self._prepare, member, name, when, rows.get(name), read_at)
            for member, name, when in wanted
        ]
        for d in builds:
            await d

    async def _prepare(
        self, member: str, name: str, when: int, row: ScheduleRow | None, read_at: float
    ) -> None:
        if not self.running:
            # Stopped while the rows were read (or a build slot awaited): the
            # builder is closed next, and a fetch begun now would outlive it.
            # The member stays in Redis for the next start.
            return
        now = self._clock.seconds()
        refusal = refusal_of(row, self._default_zone, when)
        if refusal is not None:
            # The committed row no longer produces this run (edited, disabled,
            # deleted, task cancelled): it must not be enqueued.  The claim
            # below removes the member; replanning reads the row again.
            self.log.info(
                "run of {schedule} at {when} dropped: {reason}",
                schedule=name, when=_iso(when), reason=refusal,
            )
            self._settle_without_job(member, name, when)
            self._on_failure("schedule_gone")
            return
        if self._misfired(name, when, now):
            # Too late already: don't build (or call the site) for nothing.
            self._settle_without_job(member, name, when)
            return
        try:
            built = await self._builder.build(row, when)  # type: ignore[arg-type]
        except Exception as e:
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
            return
        if self._forget_retry(member, name) or self._unbuildable.pop(name, None):
            self.log.info("schedule {schedule} can be enqueued again", schedule=name)
        self._prepared[member] = Claim(
            member=member, schedule=name, when=when,
            job_id=built.job_id, origin=built.origin, fields=built.fields,
        )
        self._read_at[member] = read_at

    def _within_grace(self, claim: Claim, now: float) -> Claim:
        """The claim to make for a due job: a job prepared in time whose claim
        comes too late (Redis was away) is skipped, as misfire_grace_secs says,
        not enqueued late."""
        if not claim.job_id or not self._misfired(claim.schedule, claim.when, now):
            return claim
        skip = Claim(member=claim.member, schedule=claim.schedule, when=claim.when)
        self._prepared[claim.member] = skip
        return skip

    def _misfired(self, name: str, when: int, now: float) -> bool:
        """True (logged and counted) when misfire_grace_secs says to skip this run."""
        late = now - when
        if self._grace is None or late <= self._grace:
            return False
        self.log.warn(
            "run of {schedule} at {when} skipped: missed by {late:.0f} s, "
            "more than misfire_grace_secs ({grace})",
            schedule=name, when=_iso(when), late=late, grace=self._grace,
        )
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
                schedule=name, when=_iso(when), reason=reason,
            )
            self._settle_without_job(member, name, when)
            return
        self._schedule_retry(member)
        if name not in self._delayed:
            self._delayed[name] = reason
            self.log.warn(
                "run of {schedule} at {when} delayed, retrying with backoff: {reason}",
                schedule=name, when=_iso(when), reason=reason,
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

    def _settle_without_job(self, member: str, name: str, when: int) -> None:
        """Claim this run with no job (skipped or dropped), ending any delay."""
        self._forget_retry(member, name)
        self._prepared[member] = Claim(member=member, schedule=name, when=when)

    # -- claiming ------------------------------------------------------------
    async def _claim_due(self) -> None:
        now = self._clock.seconds()
        due = [self._within_grace(c, now) for c in self._fresh_due(now)]
        if not due:
            return
        due.sort(key=lambda c: c.when)
        replan: list[str] = []
        try:
            for start in range(0, len(due), CLAIM_BATCH):
                batch = due[start:start + CLAIM_BATCH]
                enqueued_at = utcformat(datetime.now(timezone.utc))
                results = await self._store.claim(batch, enqueued_at)
                replan += self._settle(batch, results, self._clock.seconds())
        finally:
            # Replanning waits for the whole round, so the planner's SQL and
            # cron work does not run between two claim batches.
            self._fifo.extend(replan)

    def _fresh_due(self, now: float) -> list[Claim]:
        """Due claims whose row is recent; older ones are dropped to be built
        again from a fresh read (the row may have been edited meanwhile).

        A dropped claim's schedule is also planned again: if an earlier claim
        attempt did go through (its reply lost), the member is gone and no
        claim result will ever ask for the next run.  Replanning is always
        safe: a member already due is left to us, an enqueued run never
        comes back.
        """
        due: list[Claim] = []
        stale: list[str] = []
        for claim in list(self._prepared.values()):
            if claim.when > now:
                continue
            if claim.job_id and now - self._read_at.get(claim.member, now) > ROW_FRESHNESS:
                del self._prepared[claim.member]
                self._read_at.pop(claim.member, None)
                stale.append(claim.schedule)
                continue
            due.append(claim)
        self._fifo.extend(stale)
        return due

    def _settle(self, batch: list[Claim], results: list[int], now: float) -> list[str]:
        """Record a claim batch's results; returns the schedules to plan again."""
        enqueued: list[Claim] = []
        replan: list[str] = []
        for claim, result in zip(batch, results):
            self._prepared.pop(claim.member, None)
            self._read_at.pop(claim.member, None)
            if result == BLOCKED:
                # Untouched by the store, which logged why: claim it again later.
                self._retry_at[claim.member] = now + BLOCKED_RETRY_SECS
                continue
            if result == CLAIMED and claim.job_id:
                enqueued.append(claim)
            elif result == CLAIMED:
                self.stats.skipped += 1
            else:
                self.stats.lost += 1
            # LOST too: the winner normally plans the next run, but it may have
            # been killed right after its claim, or the winner may be us (an
            # earlier attempt of this claim ran but its reply was lost).  The
            # store never brings back a run already enqueued, so planning
            # again is always safe.
            replan.append(claim.schedule)
        for claim in enqueued:
            lateness = now - claim.when
            self.stats.lateness.append(lateness)
            self._on_enqueued(claim, lateness)
            self._log_enqueued(claim, lateness, detail=len(enqueued) <= BATCH_LOG_DETAIL)
        if enqueued:
            self._on_job_ids([(c.schedule, c.job_id) for c in enqueued])
            self.stats.enqueued += len(enqueued)
            self.stats.last_enqueue = now
            self.stats.last_schedule = enqueued[-1].schedule
        if len(enqueued) > BATCH_LOG_DETAIL:
            self.log.info(
                "enqueued {count} runs due {first} to {last} (each logged at debug level)",
                count=len(enqueued), first=_iso(enqueued[0].when), last=_iso(enqueued[-1].when),
            )
        return replan

    def _log_enqueued(self, claim: Claim, lateness: float, detail: bool) -> None:
        if lateness > 1:
            self.log.warn(
                "run of {schedule} at {when} was late by {late:.0f} s; "
                "enqueued it once now as job {job_id} on {origin}",
                schedule=claim.schedule, when=_iso(claim.when), late=lateness,
                job_id=claim.job_id, origin=claim.origin,
            )
            return
        emit = self.log.info if detail else self.log.debug
        emit(
            "enqueued {schedule} run at {when} as job {job_id} on {origin}",
            schedule=claim.schedule, when=_iso(claim.when),
            job_id=claim.job_id, origin=claim.origin,
        )

def refusal_of(row: ScheduleRow | None, default_zone: str, when: int) -> str | None:
    """Why the row as committed now must not run at ``when``; None when it may."""
    if row is None:
        return "the schedule is deleted"
    inactive = row.inactive_reason()
    if inactive is not None:
        return inactive
    try:
        produced = next_run_for(row, default_zone, when - 1)
    except Unplannable as e:
        return f"it cannot be planned: {e}"
    if produced != when:
        return "its cron string or time zone no longer runs at that time"
    return None


def _iso(when: int) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")
