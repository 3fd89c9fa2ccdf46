"""Run history: the latest runs of each schedule, as CLAIM writes them.

One Redis list per schedule, ``<prefix>history:<name>``, newest first, trimmed
to ``run_history_length`` entries by the same script call that claims the run,
so the history can never disagree with what was enqueued.  An entry is one
text, ``scheduled<TAB>decided_at<TAB>job_id<TAB>outcome``: Lua builds it with a
concatenation (cjson per run would cost more than the run's own HSET), and
none of its parts holds a tab (unix seconds, rq's ISO time, a job id we made,
a fixed word).  Importable without Twisted: ``btu history`` reads it too.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Entries kept per schedule unless ``run_history_length`` says otherwise.
DEFAULT_LENGTH = 100

ENQUEUED = "enqueued"
SKIPPED_OVERLAP = "skipped_overlap"
SKIPPED_MISFIRE = "skipped_misfire"
SKIPPED_UNBUILDABLE = "skipped_unbuildable"
DROPPED = "dropped"
OUTCOMES = (ENQUEUED, SKIPPED_OVERLAP, SKIPPED_MISFIRE, SKIPPED_UNBUILDABLE, DROPPED)


@dataclass(frozen=True)
class Run:
    """One entry: when the run was due, when it was decided, its job (if enqueued)."""

    scheduled: int
    decided_at: str  # rq's ISO 8601 UTC, e.g. 2026-11-28T23:59:00.000123Z
    job_id: str | None
    outcome: str

    @property
    def enqueued_at(self) -> str | None:
        return self.decided_at if self.outcome == ENQUEUED else None

    def as_json(self, status: str | None = None) -> dict[str, object]:
        """What ``btu history --json`` prints (DESIGN.md "Run history")."""
        return {
            "scheduled": self.scheduled,
            "enqueued_at": self.enqueued_at,
            "decided_at": self.decided_at,
            "job_id": self.job_id,
            "outcome": self.outcome,
            "status": status,
        }


def encode_run(scheduled: int, decided_at: str, job_id: str | None, outcome: str) -> str:
    """The entry text, as CLAIM writes it (the tests and fakes use this)."""
    return f"{scheduled}\t{decided_at}\t{job_id or ''}\t{outcome}"


def parse_run(text: str | bytes) -> Run | None:
    """The entry, or None for one this version cannot read (written by hand, or newer)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    parts = text.split("\t")
    if len(parts) < 4:
        return None
    try:
        scheduled = int(parts[0])
    except ValueError:
        return None
    return Run(scheduled, parts[1], parts[2] or None, parts[3])


__all__ = [
    "DEFAULT_LENGTH", "DROPPED", "ENQUEUED", "OUTCOMES", "Run", "SKIPPED_MISFIRE",
    "SKIPPED_OVERLAP", "SKIPPED_UNBUILDABLE", "encode_run", "parse_run",
]
