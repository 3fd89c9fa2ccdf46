"""In-memory stand-ins for the daemon's outside services, for Clock-driven tests.

* :class:`FakeStore` behaves like :class:`btu_twisted.store.schedule_store.ScheduleStore` over
  real Redis: the same sorted set, member index and last-enqueued hash, with
  the PLAN / CLAIM / PRUNE / CANCEL rules of the Lua scripts re-stated in Python.
* :class:`FakeDatabase` behaves like :class:`btu_twisted.sources.mariadb.Database`: exact-name
  lookups, the full refresh's chunks of (name, enabled, fingerprint) in name
  order, a ``check``.
* :class:`FlakyBuilder` wraps the real :class:`FunctionBuilder` and can fail
  (transiently or for good) or hold a build until the test fires it.

Both services can be switched ``down`` (every call fails with ConnectionError and
feeds the ``health`` Dependency, as the Redis gateway and the adbapi layer do),
``hold`` calls until :meth:`release`, or answer after a ``latency`` on the
test's Clock (``latency=0.0`` answers on the next Clock turn at the same
instant, as real Redis and adbapi always answer asynchronously; ``None``, the
default, answers synchronously).  :func:`run_until` moves a Clock the way a
reactor does, running each delayed call at its own time.  Every call is
counted and timed so tests can assert batching, retry timing and overlap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from btu_twisted.health import Dependency
from btu_twisted.jobs.builders import BuildError, BuiltJob, FunctionBuilder
from btu_twisted.records import ScheduleRow, row_fingerprint
from btu_twisted.sources.mariadb import STATES_CHUNK, Changes
from btu_twisted.sources.table_times import Digest, Look
from btu_twisted.store.history import (
    DEFAULT_LENGTH,
    ENQUEUED,
    PAUSED,
    RESUMED,
    SKIPPED_OVERLAP,
    encode_run,
)
from btu_twisted.store.keys import Keys
from btu_twisted.store.pauses import PAUSED_RUN, Paused, rq_time
from btu_twisted.store.resp import decode
from btu_twisted.store.schedule_store import (
    CLAIMED,
    JOB_PREFIX,
    LAST_ENQUEUED,
    LOST,
    MEMBER_INDEX,
    OVERLAPPED,
    PER_JOB_FIELDS,
    QUEUE_PREFIX,
    RECENT_SECS,
    RQ_QUEUES,
    SCHEDULE_SET,
    STALE,
    WITHDRAWN,
    Blocked,
    BlockedClaims,
    Claim,
    Window,
    member_for,
)

T = TypeVar("T")

LAST_JOB = Keys().last_job
PAUSED_KEY = Keys().paused

#: A realistic "now" for tests (2027-01-15T08:00:00Z, minute-aligned); a fresh
#: Clock starts at 0.
EPOCH = 1_800_000_000


def make_row(
    name: str,
    cron: str | None = "* * * * *",
    *,
    enabled: bool = True,
    task: str = "BTU-TASK-1",
    function: str | None = "tests.jobfuncs.record",
    arguments: str | None = "{'greeting': 'hello'}",
    overrides: str | None = None,
    queue: str | None = "default",
    zone: str | None = None,
    duration: int | None = 60,
    desc_short: str | None = "Test task",
    task_docstatus: int | None = 1,
) -> ScheduleRow:
    """A ScheduleRow with sensible defaults: enabled, every minute, a real function."""
    return ScheduleRow(
        name=name,
        task=task,
        enabled=enabled,
        cron_string=cron,
        queue_name=queue,
        argument_overrides=overrides,
        task_description=desc_short,
        schedule_description=None,
        cron_time_zone=zone,
        function_string=function,
        task_arguments=arguments,
        max_task_duration=duration,
        task_queue_name=None,
        desc_short=desc_short,
        task_docstatus=task_docstatus,
    )


def run_until(clock: Clock, when: float, max_calls: int = 100_000) -> None:
    """Move ``clock`` to ``when`` running each delayed call at its own time.

    ``Clock.advance(n)`` runs every call due within ``n`` seconds with the
    clock already at the end; a reactor runs each at its time, which is what
    the timer's "not before T" promises are about.  Fails on a busy loop.
    """
    for _ in range(max_calls):
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= when]
        if not due:
            break
        clock.rightNow = max(clock.rightNow, min(due))
        clock.advance(0)
    else:
        raise AssertionError(f"more than {max_calls} delayed calls before {when}: busy loop?")
    clock.rightNow = max(clock.rightNow, when)
    clock.advance(0)


@dataclass
class Call:
    """One call made to a fake: which operation, at what Clock time, with what."""

    op: str
    at: float
    detail: Any = None


class _FakeService:
    """Shared switches: down, hold, latency, lost replies; counters and history."""

    service_name = "fake"

    def __init__(self, clock: IReactorTime, latency: float | None = None) -> None:
        self._clock = clock
        self.health = Dependency(self.service_name, clock)
        self.down = False
        #: Operations whose calls wait until ``release()``.
        self.hold: set[str] = set()
        self.held: list[tuple[str, Callable[[], None]]] = []
        #: Seconds on the Clock before each answer (None: answer synchronously).
        self.latency = latency
        #: Operations whose next reply is lost *after* the operation took effect.
        self.lose_reply: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.history: list[Call] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()

    def calls_of(self, op: str) -> list[Call]:
        return [c for c in self.history if c.op == op]

    def release(self, op: str | None = None) -> int:
        """Let held calls (of ``op``, or all) run now; returns how many ran."""
        ready = [h for h in self.held if op is None or h[0] == op]
        self.held = [h for h in self.held if h not in ready]
        for _, finish in ready:
            finish()
        return len(ready)

    def _call(self, op: str, compute: Callable[[], T], detail: Any = None) -> Deferred[T]:
        self.calls[op] += 1
        self.history.append(Call(op, self._clock.seconds(), detail))
        self.in_flight[op] += 1
        self.max_in_flight[op] = max(self.max_in_flight[op], self.in_flight[op])
        d: Deferred[T] = Deferred()

        def finish() -> None:
            self.in_flight[op] -= 1
            if self.down:
                error = ConnectionError(f"{self.service_name} is down (test)")
                self.health.failed(error)
                d.errback(error)
                return
            try:
                result = compute()
            except Exception as e:  # a bug in the caller's arguments
                d.errback(e)
                return
            if op in self.lose_reply:
                self.lose_reply.discard(op)
                error = ConnectionError(f"{self.service_name}: reply to {op} lost (test)")
                self.health.failed(error)
                d.errback(error)
                return
            self.health.succeeded()
            d.callback(result)

        if op in self.hold:
            self.held.append((op, finish))
        elif self.latency is not None:
            self._clock.callLater(self.latency, finish)
        else:
            finish()
        return d


@dataclass(frozen=True)
class EnqueuedRun:
    """One job the fake CLAIM wrote: its id, run, queue and exact hash."""

    job_id: str
    schedule: str
    when: int
    origin: str
    fields: dict[str, Any]


def check_wire(claim: Claim) -> None:
    """A claim framed ahead of time carries exactly the keys and arguments the
    store would send for it (CLAIM's layout), so the fake may read the claim's
    fields while Redis reads the wire."""
    if claim.wire is None:
        return
    wire = claim.wire

    def as_bytes(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    fields = {k: v for k, v in (claim.fields or {}).items() if k != "enqueued_at"}
    own = {k: v for k, v in fields.items() if k in PER_JOB_FIELDS}
    shared = [as_bytes(x) for k, v in fields.items() if k not in own for x in (k, v)]
    head = [str(v).encode()
            for v in (claim.member, claim.schedule, claim.when, claim.job_id, claim.mode)]
    if decode(wire.keys.data) != [(JOB_PREFIX + claim.job_id).encode(),
                                  (QUEUE_PREFIX + claim.origin).encode()]:
        raise AssertionError(f"wire keys of {claim.member}: {decode(wire.keys.data)}")
    if decode(wire.head.data) != head or wire.names != tuple(own):
        raise AssertionError(f"wire head or field names of {claim.member}")
    values = [as_bytes(v) for v in own.values()]
    if decode(wire.values.data) != values or wire.values.count != len(values):
        raise AssertionError(f"wire values of {claim.member}")
    if decode(wire.shared.data) != shared or wire.shared.count != len(shared):
        raise AssertionError(f"wire shared fields of {claim.member}")


def _number(value: int | str, default: float | None = None) -> float | None:
    """Lua's ``tonumber``: the number a last run holds, else ``default``."""
    try:
        return float(value)
    except ValueError:
        return default


def _name_of(member: str) -> str | None:
    """What the Lua pattern ``^(.*)|[^|]*$`` captures: all before the last "|"."""
    name, bar, _ = member.rpartition("|")
    return name if bar else None


class FakeStore(_FakeService):
    """ScheduleStore with the semantics of store.py's Lua scripts, in memory."""

    service_name = "Redis"

    def __init__(self, clock: IReactorTime, latency: float | None = None) -> None:
        super().__init__(clock, latency)
        self.zset: dict[str, int] = {}           # btu_scheduler:task_execution_times
        self.index: dict[str, str] = {}          # btu_scheduler:schedule_members
        #: btu_scheduler:last_enqueued; a text that is no number is an unreadable last run.
        self.last_enqueued: dict[str, int | str] = {}
        self.last_job: dict[str, str] = {}       # btu_scheduler:last_job
        #: btu_scheduler:history:<name>, newest first (history.encode_run texts).
        self.run_history: dict[str, list[str]] = {}
        self.history_length = DEFAULT_LENGTH
        self.folds = 0
        self.jobs: dict[str, dict[str, Any]] = {}     # rq:job:<id> -> hash
        self.queues: dict[str, list[str]] = {}        # rq:queue:<origin> -> job ids
        self.rq_queues: set[str] = set()              # rq:queues
        #: Every job enqueued, in order, with what it was enqueued for.
        self.runs: list[EnqueuedRun] = []
        #: Every claim call's batch and Clock time.
        self.claim_batches: list[tuple[float, list[Claim]]] = []
        #: Keys holding another type than the scripts write (key -> Redis type
        #: name, e.g. ``{"rq:queue:default": "string"}``): claims needing an
        #: RQ key are BLOCKED, and a daemon key fails the whole call, as the
        #: real scripts' checks make them.
        self.wrong_type: dict[str, str] = {}
        self.blocked = BlockedClaims()
        #: The full refresh's marker key (btu_scheduler:planned).
        self.marked = False
        #: btu_scheduler:paused: schedule -> unix seconds paused (pause.lua).
        self.paused_since: dict[str, int] = {}
        #: Every close_lives call's names, in order.
        self.closed: list[list[str]] = []

    # -- test helpers (synchronous, never fail) ------------------------------
    def add(self, name: str, when: int) -> None:
        """Plan ``name`` at ``when`` as PLAN would (now far in the past)."""
        self._plan(-1, {name: when}, ())

    def add_raw(self, member: str, score: int) -> None:
        """A member not owned via the index (Rust daemon leftovers, garbage)."""
        self.zset[member] = score

    def remove(self, name: str) -> bool:
        """Cancel ``name`` at once, as CANCEL would."""
        return self._cancel(name)

    def member_of(self, name: str) -> str | None:
        return self.index.get(name)

    def enqueued(self, schedule: str | None = None) -> list[EnqueuedRun]:
        """Jobs enqueued, in order (optionally those of one schedule)."""
        return [r for r in self.runs if schedule is None or r.schedule == schedule]

    # -- the ScheduleStore API -------------------------------------------------
    def plan(
        self, now: float, plans: Mapping[str, int], unplans: Iterable[str] = ()
    ) -> Deferred[dict[str, int]]:
        plans = dict(plans)
        unplans = list(unplans)
        if not plans and not unplans:  # the real store makes no call at all
            return succeed({})
        return self._call(
            "plan", lambda: self._plan(int(now), plans, unplans), (dict(plans), list(unplans))
        )

    def fold_history(self) -> Deferred[int]:
        """Nothing to file: the fake's claims write ``run_history`` at once."""
        self.folds += 1
        return succeed(0)

    def claim(self, claims: Sequence[Claim], enqueued_at: str) -> Deferred[list[int]]:
        if not claims:
            return succeed([])
        claims = list(claims)
        self.claim_batches.append((self._clock.seconds(), claims))
        for c in claims:
            check_wire(c)

        def claim() -> list[int]:
            results = self._claim(claims, enqueued_at)
            self.blocked.record(claims, results)
            return results

        return self._call("claim", claim, len(claims))

    def prune(
        self,
        enabled: Iterable[str],
        existing: Iterable[str] | None = None,
        seen: Callable[[str, str], object] | None = None,
    ) -> Deferred[list[str]]:
        keep = set(enabled)
        exists = None if existing is None else set(existing)

        def prune() -> list[str]:
            removed = self._prune(keep, exists, seen)
            self.blocked.forget(keep)
            return removed

        return self._call("prune", prune)

    def cancel(self, schedule: str) -> Deferred[bool]:
        return self._call("cancel", lambda: self._cancel(schedule), schedule)

    def pause(self, schedule: str, now: float) -> Deferred[bool]:
        return self._call("pause", lambda: self._pause(schedule, now), schedule)

    def resume(self, schedule: str, now: float) -> Deferred[bool]:
        return self._call("resume", lambda: self._resume(schedule, now), schedule)

    def is_paused(self, schedule: str) -> Deferred[bool]:
        return self._call("is_paused", lambda: schedule in self.paused_since, schedule)

    def paused(self, limit: int = 1000) -> Deferred[Paused]:
        def read() -> Paused:
            since = dict(sorted(self.paused_since.items())[:limit])
            return Paused(len(self.paused_since), since)

        return self._call("paused", read, limit)

    def close_lives(self, schedules: Sequence[str]) -> Deferred[int]:
        names = list(schedules)
        if not names:  # the real store makes no call at all
            return succeed(0)
        self.closed.append(names)
        return self._call("close_lives", lambda: self._close_lives(names), names)

    def earliest(self, limit: int) -> Deferred[list[tuple[str, int]]]:
        return self._call("earliest", lambda: self._ordered()[:limit], limit)

    def window(self, horizon: float, limit: int) -> Deferred[Window]:
        def read() -> Window:
            ordered = self._ordered()
            near = [(m, w) for m, w in ordered if w <= horizon][:limit]
            beyond = next(((m, w) for m, w in ordered if w > horizon), None)
            return Window(len(ordered), near, beyond)

        return self._call("window", read, (horizon, limit))

    def discard(self, members: Sequence[str]) -> Deferred[None]:
        members = list(members)
        if not members:
            return succeed(None)
        return self._call("discard", lambda: self._discard(members), members)

    def count(self) -> Deferred[int]:
        return self._call("count", lambda: len(self.zset))

    def mark_planned(self) -> Deferred[None]:
        def mark() -> None:
            self.marked = True

        return self._call("mark_planned", mark)

    def keys_present(self) -> Deferred[bool]:
        return self._call("keys_present", lambda: self.marked)

    def flush(self) -> None:
        """FLUSHDB: every key of ours is gone."""
        self.paused_since.clear()
        self.zset.clear()
        self.index.clear()
        self.last_enqueued.clear()
        self.marked = False

    # -- the scripts -----------------------------------------------------------
    def _ordered(self) -> list[tuple[str, int]]:
        # ZRANGE order: by score, equal scores by member.
        return sorted(self.zset.items(), key=lambda item: (item[1], item[0]))

    def _plan(self, now: int, plans: Mapping[str, int], unplans: Iterable[str]) -> dict[str, int]:
        self._check_types((SCHEDULE_SET, "zset"), (MEMBER_INDEX, "hash"), (LAST_ENQUEUED, "hash"),
                          (PAUSED_KEY, "hash"))
        rejected: dict[str, int] = {}
        for name, when in plans.items():
            when = int(when)
            if name in self.paused_since:  # PLAN: a paused schedule loses its member
                self._cancel(name)
                rejected[name] = PAUSED_RUN
                continue
            # PLAN: an unreadable last run does not stop planning (CLAIM reports it).
            done = _number(self.last_enqueued.get(name, -1), -1)
            if when <= done:
                rejected[name] = done
                continue
            member = member_for(name, when)
            old = self.index.get(name)
            old_score = self.zset.get(old) if old is not None and old != member else None
            # A member already due belongs to the timer: keep it.
            if old_score is not None and old_score <= now:
                continue
            if old is not None and old != member:
                self.zset.pop(old, None)
            self.zset[member] = when
            self.index[name] = member
        for name in unplans:
            old = self.index.pop(name, None)
            if old is not None:
                self.zset.pop(old, None)
        return rejected

    def _claim(self, claims: list[Claim], enqueued_at: str) -> list[int]:
        """CLAIM's decisions, in the script's order (tests/store_cases.py holds both to it)."""
        self._check_types((SCHEDULE_SET, "zset"), (LAST_ENQUEUED, "hash"), (LAST_JOB, "hash"))
        out: list[int] = []
        for c in claims:
            done = self.last_enqueued.get(c.schedule)
            if c.member not in self.zset:
                # Taken by a claim (its time is the last run), or withdrawn.
                done_at = _number(done) if done is not None else None
                out.append(LOST if done_at is not None and int(c.when) <= done_at
                           else WITHDRAWN)
                continue
            if done is not None and _number(done) is None:
                out.append(Blocked(f'{LAST_ENQUEUED} field {c.schedule} holds '
                                   f'"{str(done)[:40]}", not a unix time'))
                continue
            if c.job_id:
                bad = (self._wrong(RQ_QUEUES, "set")
                       or self._wrong(QUEUE_PREFIX + c.origin, "list"))
                if bad:
                    out.append(Blocked(bad))
                    continue
            if int(c.when) <= _number(done if done is not None else -1, -1):
                bad = self._wrong(JOB_PREFIX + c.job_id, "hash") if c.job_id else None
                if bad:
                    out.append(Blocked(bad))
                    continue
                del self.zset[c.member]
                out.append(STALE)
                continue
            if c.job_id and c.overlap and self._busy(c.schedule):
                del self.zset[c.member]
                self.last_enqueued[c.schedule] = int(c.when)
                self._record(c, enqueued_at, None, SKIPPED_OVERLAP)
                out.append(OVERLAPPED)
                continue
            bad = self._wrong(JOB_PREFIX + c.job_id, "hash") if c.job_id else None
            if bad:
                out.append(Blocked(bad))
                continue
            # The index keeps naming the claimed member until a replan (as CLAIM).
            del self.zset[c.member]
            self.last_enqueued[c.schedule] = int(c.when)
            self._record(c, enqueued_at, c.job_id or None,
                         ENQUEUED if c.job_id else (c.outcome or "skipped"))
            if c.job_id and c.overlap:
                self.last_job[c.schedule] = c.job_id
            if c.job_id:
                fields = dict(c.fields or {})
                fields["enqueued_at"] = enqueued_at
                self.jobs[c.job_id] = fields
                key = QUEUE_PREFIX + c.origin
                self.queues.setdefault(key, []).append(c.job_id)
                self.rq_queues.add(key)
                self.runs.append(
                    EnqueuedRun(c.job_id, c.schedule, int(c.when), c.origin, fields)
                )
            out.append(CLAIMED)
        return out

    def _busy(self, schedule: str) -> bool:
        """CLAIM's overlap check: the previous job still queued or started."""
        job = self.jobs.get(self.last_job.get(schedule, ""))
        return job is not None and job.get("status") in ("queued", "started")

    def _record(self, c: Claim, at: str, job_id: str | None, outcome: str) -> None:
        if self.history_length > 0:
            runs = self.run_history.setdefault(c.schedule, [])
            runs.insert(0, encode_run(int(c.when), at, job_id, outcome))
            del runs[self.history_length:]

    def _wrong(self, key: str, want: str) -> str | None:
        """The real scripts' reason for a key of the wrong type, if it is one."""
        held = self.wrong_type.get(key)
        return f"{key} holds a {held}, not a {want}" if held is not None else None

    def _check_types(self, *keys: tuple[str, str]) -> None:
        """A daemon key of the wrong type fails the whole call before any write."""
        for key, want in keys:
            bad = self._wrong(key, want)
            if bad:
                raise RuntimeError(f"WRONGTYPE {bad}")

    def _prune(
        self,
        keep: set[str],
        exists: set[str] | None = None,
        seen: Callable[[str, str], object] | None = None,
    ) -> list[str]:
        removed: list[str] = []
        # PRUNE_INDEX, then UNPLAN_IF_OWNED for names no longer enabled.
        for name, member in list(self.index.items()):
            if member not in self.zset:
                del self.index[name]
                removed.append(name)
            elif name not in keep:
                del self.index[name]
                del self.zset[member]
                removed.append(name)
            elif seen is not None:
                seen(name, member)
        # PRUNE_MEMBERS: unreadable members and those their schedule does not own.
        for member in list(self.zset):
            name = _name_of(member)
            if name is None or self.index.get(name) != member:
                del self.zset[member]
                if name is not None:
                    removed.append(name)
        if exists is not None:
            now = self._clock.seconds()
            for name, value in list(self.last_enqueued.items()):
                when = _number(value)
                recent = when is not None and abs(when - now) <= RECENT_SECS
                if name not in keep and name not in exists and not recent:
                    del self.last_enqueued[name]
                    self.last_job.pop(name, None)
                    self.run_history.pop(name, None)
        return sorted({n for n in removed if n})

    def _pause(self, schedule: str, now: float) -> bool:
        """PAUSE: the pause once, the member gone, a "paused" history entry."""
        if schedule in self.paused_since:
            return False
        self.paused_since[schedule] = int(now)
        self._cancel(schedule)
        self._note(schedule, now, PAUSED)
        return True

    def _resume(self, schedule: str, now: float) -> bool:
        if self.paused_since.pop(schedule, None) is None:
            return False
        self._note(schedule, now, RESUMED)
        return True

    def _note(self, schedule: str, now: float, outcome: str) -> None:
        if self.history_length > 0:
            runs = self.run_history.setdefault(schedule, [])
            runs.insert(0, encode_run(int(now), rq_time(now), None, outcome))
            del runs[self.history_length:]

    def _close_lives(self, names: list[str]) -> int:
        """CLOSE_LIVES: history, pause and last job go; the last run stays."""
        closed = 0
        for name in names:
            had = self.run_history.pop(name, None) is not None
            had = self.paused_since.pop(name, None) is not None or had
            self.last_job.pop(name, None)
            closed += had
        return closed

    def _cancel(self, schedule: str) -> bool:
        """CANCEL: the member the index says the schedule owns, nothing else."""
        owned = self.index.pop(schedule, None)
        return owned is not None and self.zset.pop(owned, None) is not None

    def _discard(self, members: list[str]) -> None:
        for m in members:
            self.zset.pop(m, None)


class FakeDatabase(_FakeService):
    """Database with rows in a dict; names are matched exactly."""

    service_name = "MariaDB"

    def __init__(
        self,
        clock: IReactorTime,
        rows: Iterable[ScheduleRow] = (),
        latency: float | None = None,
    ) -> None:
        super().__init__(clock, latency)
        self.rows: dict[str, ScheduleRow] = {r.name: r for r in rows}
        #: The change feed's view: schedule name -> its (or its task's) modified.
        self.modified: dict[str, Any] = {}
        self.task_modified: dict[str, Any] = {}
        self.zone: str | None = None
        #: redis_job_id as written back.
        self.job_ids: dict[str, str] = {}
        #: UPDATE_TIME reads NULL for every table while set (MariaDB restarted).
        self.null_times = False
        self._writes = 0  # job-id writes move the schedule table's time, as ours do

    def table_times(self, previous: Any, digest_anyway: bool) -> Deferred[Look]:
        """As the real look: a table's "time" moves whenever its rows change (here a
        picture of them stands for it), and the digest comes when they moved;
        ``recent`` is never set (the fake's times are not seconds)."""

        def read() -> Look:
            names = sorted(set(self.rows) | set(self.modified))
            times = (None, None, None) if self.null_times else (
                repr((sorted(self.modified.items()), names, self._writes)),
                repr(sorted(self.task_modified.items())), repr(self.zone))
            if not digest_anyway and previous is not None and previous == times:
                return Look(times, None, False)
            digest = Digest((len(names), hash(tuple(names))),
                            (hash(tuple(sorted(self.modified.items()))),
                             hash(tuple(sorted(self.task_modified.items())))), self.zone)
            return Look(times, digest, False)

        return self._call("table_times", read, digest_anyway)

    def put(self, *rows: ScheduleRow) -> None:
        for row in rows:
            self.rows[row.name] = row

    def update(self, name: str, **changes: Any) -> None:
        self.rows[name] = replace(self.rows[name], **changes)

    def delete(self, name: str) -> None:
        del self.rows[name]
        self.modified.pop(name, None)

    def read_schedules(self, names: Sequence[str]) -> Deferred[dict[str, ScheduleRow]]:
        names = list(names)
        return self._call(
            "read_schedules",
            lambda: {n: self.rows[n] for n in dict.fromkeys(names) if n in self.rows},
            names,
        )

    def check(self) -> Deferred[int]:
        return self._call("check", lambda: 42)

    def schedule_states(self, after: str, limit: int = STATES_CHUNK) -> Deferred[list[Any]]:
        """As the real query: names after ``after`` in order, with the
        fingerprint of the values the planner's rows carry."""

        def read() -> list[Any]:
            names = sorted(n for n in self.rows if n > after)[:limit]
            return [(n, self.rows[n].enabled, row_fingerprint(self.rows[n])) for n in names]

        return self._call("schedule_states", read, after)

    def changes(self, since: Mapping[str, Any], overlap: Any) -> Deferred[Changes]:
        """Rows of ``modified`` (name -> datetime) and ``task_modified`` at or after ``since``."""

        def read() -> Changes:
            found = {}
            for kind, stamps in (("schedule", self.modified), ("task", self.task_modified)):
                mark = since.get(kind)
                if mark is None:
                    latest = max(stamps.values(), default=None)
                    if latest is None:
                        found[kind] = []
                        continue
                    mark = latest - overlap
                found[kind] = [(n, m) for n, m in stamps.items() if m >= mark]
            return Changes(found["schedule"], found["task"], self.zone)

        return self._call("changes", read, dict(since))

    def write_job_ids(self, job_ids: Mapping[str, str]) -> Deferred[None]:
        batch = dict(job_ids)

        def write() -> None:
            self.job_ids.update(batch)
            self._writes += 1

        return self._call("write_job_ids", write, batch)


@dataclass
class BuildCall:
    schedule: str
    when: int
    at: float


@dataclass
class FlakyBuilder:
    """The real FunctionBuilder, with failures and held builds on demand."""

    clock: IReactorTime
    prefix: str = ""
    #: Schedules whose builds fail with a transient / permanent BuildError.
    transient: set[str] = field(default_factory=set)
    permanent: set[str] = field(default_factory=set)
    #: Schedules whose builds wait until ``fire()`` (``hold_all``: every one).
    held: set[str] = field(default_factory=set)
    hold_all: bool = False
    builds: list[BuildCall] = field(default_factory=list)
    pending: list[tuple[ScheduleRow, int, Deferred[BuiltJob]]] = field(default_factory=list)

    #: Builds may be held (not fired at once), and no outside service is asked.
    immediate = False
    health = None

    def __post_init__(self) -> None:
        self._inner = FunctionBuilder(self.prefix)

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        self.builds.append(BuildCall(row.name, when, self.clock.seconds()))
        if row.name in self.permanent:
            return fail(BuildError(row.name, "task is broken (test)", transient=False))
        if row.name in self.transient:
            return fail(BuildError(row.name, "site unavailable (test)", transient=True))
        if self.hold_all or row.name in self.held:
            d: Deferred[BuiltJob] = Deferred()
            self.pending.append((row, when, d))
            return d
        return self._inner.build(row, when)

    def builds_of(self, schedule: str) -> list[BuildCall]:
        return [b for b in self.builds if b.schedule == schedule]

    def fire(self) -> int:
        """Finish every held build with the real builder's result."""
        pending, self.pending = self.pending, []
        for row, when, d in pending:
            self._inner.build(row, when).chainDeferred(d)
        return len(pending)

    def close(self) -> Deferred[None]:
        return succeed(None)
