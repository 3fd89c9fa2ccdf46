"""The timer's claim rounds: at the due second the prepared claims go to
Redis in batches, several in flight, and what their results set off
(replans, job ids, counts, log lines) is held until the burst's claims are
done, so that none of it competes with them for the reactor or for Redis.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from btu_twisted.clock import Clock, reactor_time
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.seams import TimerStore, as_deferred
from btu_twisted.store.history import SKIPPED_MISFIRE
from btu_twisted.store.schedule_store import (
    BLOCKED,
    BLOCKED_RETRY_SECS,
    CLAIMED,
    OVERLAPPED,
    WITHDRAWN,
    Claim,
)
from btu_twisted.timing.due import PreparedClaims
from btu_twisted.timing.gc_hold import gc_pause, gc_resume
from btu_twisted.timing.misfire import Misfires
from btu_twisted.timing.retries import Retries
from btu_twisted.timing.run_log import Enqueued, RunLog, iso
from btu_twisted.timing.stats import TimerStats
from btu_twisted.timing.tuning import (
    BUILD_WAIT,
    CLAIM_BATCH,
    CLAIMS_IN_FLIGHT,
    FIRST_BATCH,
    HOLD_SECS,
    LOOKAHEAD,
    ROW_SLACK,
)


class ClaimRound:
    """One round of claims at a time (the timer's step awaits it); holds what
    the rounds of a burst set off until the burst is claimed, HOLD_SECS at
    most, so that a schedule due every second is still replanned in time."""

    # Its lines are the timer's, as they were before it had parts.
    log = Logger(namespace="btu_twisted.timing.timer.Timer")

    def __init__(
        self,
        clock: Clock,
        store: TimerStore,
        fifo: ScheduleFifo,
        prepared: PreparedClaims,
        retries: Retries,
        misfires: Misfires,
        runs: RunLog,
        stats: TimerStats,
        running: Callable[[], bool],
        building_due: Callable[[float], bool],
        arm: Callable[[float], None],
        fold_history: Callable[[], None],
        on_enqueued: Callable[[Claim, float], None],
        on_failure: Callable[[str], None],
        on_job_ids: Callable[[list[tuple[str, str]]], None],
    ) -> None:
        self._clock = clock
        self._store = store
        self._fifo = fifo
        #: The timer's lookahead: a prepared job's row read longer ago than it and
        #: ROW_SLACK is read again before the claim.
        self.lookahead = LOOKAHEAD
        self._prepared = prepared
        self._retries = retries
        self._misfires = misfires
        self._runs = runs
        self.stats = stats
        self._running = running
        self._building_due = building_due
        self._arm = arm
        self._fold_history = fold_history
        self._on_enqueued = on_enqueued
        self._on_failure = on_failure
        self._on_job_ids = on_job_ids
        self._built: Deferred[bool] | None = None   # a claim round waiting for builds
        # What claim rounds set off, held until the burst's claims are done.
        self._held_since: float | None = None
        self._replans: list[str] = []
        self._enqueued: list[tuple[Claim, float]] = []  # with lateness
        self.overlapping: set[str] = set()     # schedules whose last run was held back
        #: Told of each run settled without a job (skipped, dropped): schedule health.
        self.on_skipped: Callable[[str, list[int]], None] = lambda schedule, times: None

    @property
    def waiting(self) -> bool:
        """A round waits for due jobs still being built."""
        return self._built is not None

    async def claim_due(self) -> None:
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
        # Loaded with rq's Job by the builders already (jobs/fields.py load_rq).
        from rq.utils import utcformat

        try:
            while True:
                while failure is None and self._running() and len(in_flight) < CLAIMS_IN_FLIGHT:
                    batch = self._next_batch(self._clock.seconds(), size)
                    if not batch:
                        break
                    size = CLAIM_BATCH
                    enqueued_at = utcformat(datetime.now(UTC))
                    in_flight.append((batch, as_deferred(self._store.claim(batch, enqueued_at))))
                    if len(in_flight) < CLAIMS_IN_FLIGHT:
                        # Let the reactor write this call out (Redis starts on
                        # it) before the next one is put together.
                        await deferLater(reactor_time(self._clock), 0, lambda: None)
                if in_flight:
                    batch, reply = in_flight.popleft()
                    try:
                        results = await reply
                    except Exception as e:
                        # The calls after it may still go through: settle them,
                        # then fail this round (backoff); the rest is retried.
                        failure = failure or e
                        self._prepared.unclaim(batch)
                        continue
                    self._prepared.claiming.difference_update(c.member for c in batch)
                    now = self._clock.seconds()
                    held_since = self._settle(batch, results, now)
                    if now - held_since >= HOLD_SECS:
                        # A burst too big to claim in HOLD_SECS: the schedules
                        # claimed so far must not miss their next runs.
                        self.release_held(now)
                    continue
                if failure is not None:
                    raise failure
                if not await self._wait_for_builds():
                    return
        finally:
            gc_resume()
            for batch, reply in in_flight:  # only when cancelled or a bug
                reply.addErrback(lambda _: None)
                self._prepared.unclaim(batch)
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
        prepared = self._prepared
        for claim in prepared.take(now, size):
            if claim.job_id and now - prepared.read_at(claim.member, now) > self.lookahead + ROW_SLACK:
                prepared.drop(claim.member)
                self._fifo.extend([claim.schedule])
                continue
            batch.append(self._within_grace(claim, now))
        prepared.claiming.update(c.member for c in batch)
        return batch

    def _within_grace(self, claim: Claim, now: float) -> Claim:
        """The claim to make for a due job: a job prepared in time whose claim
        comes too late (Redis was away) is skipped, as misfire_grace_secs says,
        not enqueued late."""
        if not claim.job_id or not self._misfires.misfired(claim.schedule, claim.when, now):
            return claim
        skip = Claim(
            member=claim.member, schedule=claim.schedule, when=claim.when,
            outcome=SKIPPED_MISFIRE,
        )
        self._prepared.replace(skip)
        return skip

    async def _wait_for_builds(self) -> bool:
        """Wait for the next slice of due jobs being built; False if there is
        none, or it takes longer than BUILD_WAIT (a slow site must not hold the
        timer) or than what is left of HOLD_SECS."""
        now = self._clock.seconds()
        wait = BUILD_WAIT
        if self._held_since is not None:
            wait = min(wait, self._held_since + HOLD_SECS - now)
        if not self._running() or wait <= 0 or not self._building_due(now):
            return False
        waiting: Deferred[bool] = Deferred()
        self._built = waiting
        timeout = self._clock.callLater(wait, self.wake, False)
        built = await waiting
        if timeout.active():
            timeout.cancel()
        return built

    def wake(self, built: bool) -> None:
        """End the wait of a claim round waiting for builds (True: some are done)."""
        if self._built is not None:
            waiting, self._built = self._built, None
            waiting.callback(built)

    def _settle(self, batch: list[Claim], results: list[int], now: float) -> float:
        """Record a claim batch's results.  What they set off (metrics, job
        ids, log lines, replans) is held for the end of the round: the next
        batches' replies are waiting to be read.  Returns since when they are
        held."""
        if self._held_since is None:
            self._held_since = now
        held_since = self._held_since
        enqueued = self._enqueued
        for claim, result in zip(batch, results, strict=False):
            self._prepared.drop(claim.member)
            if result == BLOCKED:
                # Untouched by the store, which logged why: claim it again later.
                self._retries.block(claim.member, now + BLOCKED_RETRY_SECS)
                continue
            if result == CLAIMED and claim.job_id:
                enqueued.append((claim, now - claim.when))
                if claim.overlap and claim.schedule in self.overlapping:
                    self.overlapping.discard(claim.schedule)
                    self.log.info(
                        "{schedule}: previous job done, runs are enqueued again",
                        schedule=claim.schedule,
                    )
            elif result == OVERLAPPED:
                self.stats.skipped += 1
                self.on_skipped(claim.schedule, [claim.when])
                self._on_failure("overlap_skipped")
                if claim.schedule not in self.overlapping:
                    # Once per stretch of held-back runs, not once per run.
                    self.overlapping.add(claim.schedule)
                    self.log.info(
                        "run of {schedule} at {when} skipped: its previous job is still "
                        "queued or started (overlap = \"skip\"); further skips not logged",
                        schedule=claim.schedule, when=iso(claim.when),
                    )
            elif result == CLAIMED:
                self.stats.skipped += 1
                self.on_skipped(claim.schedule, [claim.when])
            elif result == WITHDRAWN:
                # A socket cancel or a planning removed or replaced the member
                # between its build and its claim: ours, not another daemon's.
                self.stats.withdrawn += 1
            else:
                self.stats.lost += 1
            # LOST too: the winner normally plans the next run, but it may have
            # been killed right after its claim, or the winner may be us (an
            # earlier attempt of this claim ran but its reply was lost).  The
            # store never brings back a run already enqueued, so planning
            # again is always safe (WITHDRAWN: the planner decides again).
            self._replans.append(claim.schedule)
        return held_since

    def _end_round(self) -> None:
        """A round of claims ended: let go of what it set off, unless the
        burst's due jobs are still being built (then the next round does, or
        the end of the builds; HOLD_SECS at most)."""
        now = self._clock.seconds()
        self._runs.flush_skipped()
        if (
            not self._running()
            or not self._building_due(now)
            or (self._held_since is not None and now - self._held_since >= HOLD_SECS)
        ):
            self.release_held(now)
        elif self._held_since is not None:
            # Builds that never finish (a site hanging) must not hold them longer.
            self._arm(self._held_since + HOLD_SECS - now)

    def release_held(self, now: float) -> None:
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
