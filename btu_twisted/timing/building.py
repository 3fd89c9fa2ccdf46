"""The timer's builds: read the rows of the runs about to be due and build
their jobs, a chunk at a time, before they are claimed.

A run whose committed row no longer produces it is dropped, one found too late
is skipped, and one whose job cannot be built is retried (a transient error)
or skipped (a permanent one); each way its member is settled with the claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.clock import Clock, reactor_time
from btu_twisted.jobs.builders import BuildError, BuiltJob
from btu_twisted.records import ScheduleRow
from btu_twisted.seams import JobBuilder, RowReader, TimerStore
from btu_twisted.store.history import DROPPED, SKIPPED_MISFIRE, SKIPPED_UNBUILDABLE
from btu_twisted.store.schedule_store import Claim, framed, split_member
from btu_twisted.timing.due import PreparedClaims
from btu_twisted.timing.gc_hold import gc_pause, gc_resume
from btu_twisted.timing.misfire import Misfires
from btu_twisted.timing.refusals import refusal_of
from btu_twisted.timing.retries import Retries
from btu_twisted.timing.run_log import iso
from btu_twisted.timing.tuning import BUILD_CHUNK, BUILD_CONCURRENCY, BUILD_SLICE, SLICE_SECS


class JobPreparer:
    """Builds ahead of the claims, so that a site's HTTP latency or a slow
    builder never delays a claim: a prepared job waits in PreparedClaims for
    its second, and a run not built in time is claimed as soon as it is."""

    # Its lines are the timer's, as they were before it had parts.
    log = Logger(namespace="btu_twisted.timing.timer.Timer")

    def __init__(
        self,
        clock: Clock,
        store: TimerStore,
        db: RowReader,
        builder: JobBuilder,
        prepared: PreparedClaims,
        retries: Retries,
        misfires: Misfires,
        running: Callable[[], bool],
        on_slice_built: Callable[[], None],
        on_failure: Callable[[str], None],
        default_zone: str,
        default_overlap: bool,
    ) -> None:
        self._clock = clock
        self._store = store
        self._db = db
        self._builder = builder
        self._prepared = prepared
        self._retries = retries
        self._misfires = misfires
        self._running = running
        self._slice_built = on_slice_built
        self._on_failure = on_failure
        self._default_zone = default_zone
        self._default_overlap = default_overlap
        self.building: dict[str, int] = {}     # member -> due time
        self._building_at: Counter[int] = Counter()  # due time -> builds in flight
        self.unbuildable: dict[str, str] = {}  # schedule -> permanent reason already logged
        self._build_slots = DeferredSemaphore(BUILD_CONCURRENCY)
        self._read_error: str | None = None  # the row read failure last warned of

    def start(self, todo: list[tuple[str, int]]) -> Deferred[None]:
        for member, when in todo:
            self.building[member] = when
            self._building_at[when] += 1
        d = Deferred.fromCoroutine(self._build_all(todo))
        d.addErrback(lambda f: self.log.failure("preparing jobs failed", f))
        return d

    def done_building(self, members: Iterable[str]) -> None:
        for member in members:
            when = self.building.pop(member, None)
            if when is None:
                continue
            self._building_at[when] -= 1
            if self._building_at[when] <= 0:
                del self._building_at[when]

    def building_due(self, now: float) -> bool:
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
        if not chunks:
            return
        reading: Deferred[dict[str, ScheduleRow]] | None = self._read_rows(chunks[0])
        # A burst's builds allocate enough to set off full collections of the
        # whole heap (40-60 ms each, two or three per 10,000 jobs).
        pause = len(wanted) > BUILD_SLICE
        if pause:
            gc_pause()
        try:
            for k, chunk in enumerate(chunks):
                assert reading is not None  # read ahead for every chunk but the first
                try:
                    rows = await reading
                except Exception as e:
                    reading = None
                    for later in chunks[k:]:
                        for member, _, _ in later:
                            self._retries.schedule(member)
                    self._rows_unavailable(e)
                    return
                reading = None
                self._read_error = None
                if not self._running():
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
        immediate = self._builder.immediate
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
            self.done_building(member for member, _, _ in chunk[start:end])
            self._slice_built()
            start = end
            if start < len(chunk) or not last:
                # Let the reactor send claims and read replies in between.
                await deferLater(reactor_time(self._clock), 0, lambda: None)

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

    async def _prepare(
        self, member: str, name: str, when: int, row: ScheduleRow | None, read_at: float
    ) -> None:
        buildable = self._buildable(member, name, when, row)
        if buildable is None:
            return
        try:
            built = await self._builder.build(buildable, when)
        except Exception as e:
            self._not_built(member, name, when, e)
            return
        self._got_job(member, name, when, buildable, built, read_at)

    def _prepare_now(
        self, member: str, name: str, when: int, row: ScheduleRow | None, read_at: float
    ) -> None:
        """:meth:`_prepare` for a builder whose Deferred has fired when
        ``build`` returns: no build slot, no coroutine (they were a third of a
        burst job's build time)."""
        buildable = self._buildable(member, name, when, row)
        if buildable is None:
            return
        outcome: list[BuiltJob | Failure] = []
        self._builder.build(buildable, when).addBoth(outcome.append)
        [result] = outcome
        if isinstance(result, Failure):
            assert result.value is not None  # a Failure has its exception; Twisted types it optional
            self._not_built(member, name, when, result.value)
        else:
            self._got_job(member, name, when, buildable, result, read_at)

    def _buildable(
        self, member: str, name: str, when: int, row: ScheduleRow | None
    ) -> ScheduleRow | None:
        """The row to build this run's job from; None when it is not to be
        built, its member then settled (or left)."""
        if not self._running():
            # Stopped while the rows were read (or a build slot awaited): the
            # builder is closed next, and a fetch begun now would outlive it.
            # The member stays in Redis for the next start.
            return None
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
            return None
        if self._misfires.misfired(name, when, self._clock.seconds()):
            # Too late already: don't build (or call the site) for nothing.
            self._settle_without_job(member, name, when, SKIPPED_MISFIRE)
            return None
        return row

    def _not_built(self, member: str, name: str, when: int, e: BaseException) -> None:
        if not self._running():
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
        if self._retries.forget(member, name) or self.unbuildable.pop(name, ""):
            self.log.info("schedule {schedule} can be enqueued again", schedule=name)
        # Framed for Redis now, so that claiming it at the due second costs
        # no encoding.
        self._prepared.ready(framed(Claim(
            member=member, schedule=name, when=when,
            job_id=built.job_id, origin=built.origin, fields=built.fields,
            overlap=self._overlap_skips(row),
        )), read_at)

    def _build_failed(self, member: str, name: str, when: int, error: BuildError) -> None:
        reason = str(error)
        self._on_failure("build_transient" if error.transient else "build_permanent")
        if not error.transient:
            # Logged when the schedule breaks or its reason changes, not at
            # every run: a per-second schedule would flood the journal.
            # A site refusing the daemon (401/403) is one error line of the
            # site's own, not one per schedule.
            repeated = self.unbuildable.get(name) == reason or error.site_refused
            emit = self.log.debug if repeated else self.log.error
            self.unbuildable[name] = reason
            emit(
                "run of {schedule} at {when} skipped: {reason}",
                schedule=name, when=iso(when), reason=reason,
            )
            self._settle_without_job(member, name, when, SKIPPED_UNBUILDABLE)
            return
        self._retries.schedule(member)
        if name not in self._retries.delayed:
            self._retries.delayed[name] = reason
            self.log.warn(
                "run of {schedule} at {when} delayed, retrying with backoff: {reason}",
                schedule=name, when=iso(when), reason=reason,
            )

    def _settle_without_job(self, member: str, name: str, when: int, outcome: str) -> None:
        """Claim this run with no job (skipped or dropped), ending any delay;
        the run history records ``outcome``."""
        self._retries.forget(member, name)
        self._prepared.ready(Claim(member=member, schedule=name, when=when, outcome=outcome))

    def _overlap_skips(self, row: ScheduleRow) -> bool:
        """True when a run of ``row`` waits for its previous job to finish."""
        if row.source == "mariadb":
            return self._default_overlap
        return row.overlap == "skip"
