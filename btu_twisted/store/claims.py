"""A claim of one due run: what CLAIM (lua/claim.lua) is sent for it, and what it answers.

Apart from :class:`~btu_twisted.store.schedule_store.ScheduleStore` because
the timer builds claims ahead of the due second (framing their arguments
costs nothing then), and the tests' fake store shares the result codes and
the logging of blocked claims.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from twisted.logger import Logger

from btu_twisted.store.history import DEFAULT_LENGTH
from btu_twisted.store.keys import JOB_PREFIX, QUEUE_PREFIX
from btu_twisted.store.resp import Encoded, encode, join

__all__ = [
    "BLOCKED", "BLOCKED_RETRY_SECS", "CLAIMED", "LOST", "OVERLAPPED", "PER_JOB_FIELDS", "STALE",
    "WITHDRAWN",
    "Blocked", "BlockedClaims", "Claim", "ClaimWire", "claim_arguments", "framed", "member_for",
    "split_member",
]


@dataclass(frozen=True)
class Claim:
    """One due member to claim, with its job's hash (None: claim without a job).

    ``overlap``: hold the job back while the schedule's previous one is still
    queued or started (``overlap = "skip"``).  ``outcome``: what the run
    history records for a claim without a job (history.py: skipped_misfire,
    dropped, ...).  ``wire``: its CLAIM keys and arguments framed ahead of
    time (:func:`framed`); a claim without is framed when it is sent.
    """

    member: str
    schedule: str
    when: int
    job_id: str = ""
    origin: str = ""
    fields: Mapping[str, bytes | str | int | float] | None = None
    overlap: bool = False
    outcome: str = ""
    wire: ClaimWire | None = field(default=None, compare=False, repr=False)

    @property
    def mode(self) -> str:
        """CLAIM's per-claim mode argument."""
        if self.job_id:
            return "skip" if self.overlap else ""
        return self.outcome


@dataclass(frozen=True, slots=True)
class ClaimWire:
    """A claim's part of a CLAIM call: its two keys; member, schedule, time,
    job id and mode; the names of its job's own fields (PER_JOB_FIELDS) and
    their values; its other fields, name and value, framed (``shared``): names
    and shared fields are sent once per call for all the jobs that have the
    same."""

    keys: Encoded
    head: Encoded
    names: tuple[str, ...]
    values: Encoded
    shared: Encoded


#: Job hash fields whose value is the job's own (rq's: when it was made, what
#: it calls with which arguments, its description and meta).  The rest are
#: mostly the same for all the jobs of a task and go once per CLAIM call.
PER_JOB_FIELDS = frozenset({"created_at", "data", "description", "meta"})
_NO_FIELDS = encode(())
# Framed shared fields, one copy per distinct text (a burst's jobs share a few).
_shared_texts: dict[bytes, Encoded] = {}


def framed(claim: Claim) -> Claim:
    """The claim with its keys and arguments framed for CLAIM, so that sending
    it at the due second costs no encoding.  The job's own ``enqueued_at``
    field, if its builder set one, gives way to the claim's."""
    own: list[str] = []
    values: list[object] = []
    pairs: list[object] = []
    for name, value in (claim.fields or {}).items():
        if name in PER_JOB_FIELDS:
            own.append(name)
            values.append(value)
        elif name != "enqueued_at":
            pairs += (name, value)
    shared = _NO_FIELDS
    if pairs:
        shared = encode(pairs)
        known = _shared_texts.get(shared.data)
        if known is not None:
            shared = known
        else:
            if len(_shared_texts) >= 1024:
                _shared_texts.clear()
            _shared_texts[shared.data] = shared
    wire = ClaimWire(
        keys=encode((
            JOB_PREFIX + claim.job_id, QUEUE_PREFIX + claim.origin,
        )),
        head=encode((claim.member, claim.schedule, claim.when, claim.job_id, claim.mode)),
        names=tuple(own),
        values=encode(values),
        shared=shared,
    )
    # Not dataclasses.replace: it costs a third of framing (~6 us a job).
    return Claim(
        claim.member, claim.schedule, claim.when, claim.job_id, claim.origin, claim.fields,
        claim.overlap, claim.outcome, wire,
    )


def claim_arguments(
    wires: Sequence[ClaimWire], enqueued_at: str, history_length: int = DEFAULT_LENGTH
) -> Encoded:
    """CLAIM's ARGV: the time, the count, the number of shapes, the history
    length, each distinct shape (own field names, shared fields) once, then per
    claim its head, the number of its shape (0: none) and its own values."""
    shapes: dict[tuple[tuple[str, ...], bytes], tuple[int, ClaimWire]] = {}
    of: list[int] = []
    for w in wires:
        if not w.names and not w.shared.count:
            of.append(0)
            continue
        key = (w.names, w.shared.data)
        found = shapes.get(key)
        if found is None:
            found = shapes[key] = (len(shapes) + 1, w)
        of.append(found[0])
    numbers = [encode((n,)) for n in range(len(shapes) + 1)]
    pieces = [encode((enqueued_at, len(wires), len(shapes), history_length))]
    for _, w in shapes.values():
        pieces += (encode((len(w.names), *w.names, w.shared.count // 2)), w.shared)
    for w, number in zip(wires, of, strict=True):
        pieces += (w.head, numbers[number], w.values)
    return join(pieces)




CLAIMED, LOST, STALE, BLOCKED, OVERLAPPED, WITHDRAWN = 1, 0, 2, 3, 4, 5
#: Seconds before a blocked claim is tried again: it waits for an operator to
#: fix a key, so there is no point in trying every second.
BLOCKED_RETRY_SECS = 10.0


class Blocked(int):
    """The BLOCKED result code, carrying why (which key holds what).

    An int, so that callers comparing result codes need no second channel for
    the one code that comes with a reason.
    """

    reason: str

    def __new__(cls, reason: str) -> Blocked:
        code = super().__new__(cls, BLOCKED)
        code.reason = reason
        return code


def member_for(schedule: str, when: int) -> str:
    return f"{schedule}|{when}"


def split_member(member: str) -> tuple[str, int] | None:
    """(schedule, unix) of a member, or None for a member we cannot read."""
    name, bar, when = member.rpartition("|")
    if not bar or not name:
        return None
    try:
        return name, int(when)
    except ValueError:
        return None


class BlockedClaims:
    """Logs blocked claims: one error line when a schedule becomes blocked (or
    its reason changes), not one per retry, and one line when it goes through
    again.  Shared with the tests' fake store so both log alike."""

    log = Logger()

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}  # schedule -> reason logged

    def record(self, claims: Sequence[Claim], results: Sequence[int]) -> None:
        for claim, result in zip(claims, results, strict=True):
            if isinstance(result, Blocked):
                if self.reasons.get(claim.schedule) == result.reason:
                    continue
                self.reasons[claim.schedule] = result.reason
                self.log.error(
                    "run of {schedule} at {when} not enqueued, kept and retried every "
                    "{retry:.0f} s until fixed: {reason}",
                    schedule=claim.schedule, reason=result.reason, retry=BLOCKED_RETRY_SECS,
                    when=datetime.fromtimestamp(claim.when, UTC).isoformat(),
                )
            elif self.reasons.pop(claim.schedule, None) is not None:
                self.log.info("claims of {schedule} go through again", schedule=claim.schedule)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop schedules not in ``keep`` (deleted while blocked)."""
        wanted = set(keep)
        for name in [n for n in self.reasons if n not in wanted]:
            del self.reasons[name]
