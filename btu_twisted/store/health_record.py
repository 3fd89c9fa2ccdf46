"""A schedule's health: what its runs did, as the daemon saw them end, and the state it is in.

The daemon follows each job it enqueued to its end (timing/job_follower.py)
and keeps one record per schedule in the hash ``<prefix>health`` (field: the
schedule's name, value: the record as JSON), so that ``btu health``, the
status page and the metrics read the same thing, with or without a daemon
running.  The state is not stored: it depends on the time (a job becomes
late or stuck while nothing happens), so each reader works it out with
:func:`classify` from the record, the thresholds in the config, and now.

Importable without Twisted or a Redis client: ``btu health`` uses it.
"""

from __future__ import annotations

import json
from collections.abc import Container
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from btu_twisted.config_fields import Config

__all__ = [
    "CRITICAL", "FAILING", "INACTIVE", "LATE", "LEVELS", "MISSED", "MISSED_KEPT", "NEVER_RUN", "OK",
    "PAUSED", "STUCK", "WARNING", "Health", "HealthRecord", "PendingJob", "Thresholds",
    "classify", "decode", "encode", "error_line", "states_of",
]

OK = "ok"
FAILING = "failing"
LATE = "late"
STUCK = "stuck"
MISSED = "missed"
PAUSED = "paused"
NEVER_RUN = "never_run"
INACTIVE = "inactive"

#: Levels, as Nagios plugins exit: 0 ok, 1 warning, 2 critical.
WARNING = 1
CRITICAL = 2
LEVELS = {0: "ok", WARNING: "warning", CRITICAL: "critical"}

#: Scheduled times of missed runs kept in a record (the count goes on).
MISSED_KEPT = 10
#: rq's own default job timeout, for a job hash without one.
RQ_DEFAULT_TIMEOUT = 180.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a schedule is unwell (config keys ``health_*``)."""

    failing_warning: int = 1
    failing_critical: int = 3
    late_secs: float = 60.0
    stuck_grace_secs: float = 20.0


@dataclass(frozen=True, slots=True)
class PendingJob:
    """The schedule's latest job while it has not ended."""

    job_id: str
    scheduled: int
    enqueued: float
    started: float | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """Unix seconds throughout; None: never."""

    last_scheduled: int | None = None
    last_enqueued: float | None = None
    last_started: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    queue_secs: float | None = None  # how long the last job that started waited on its queue
    run_secs: float | None = None  # how long the last job that ended ran
    missed: int = 0  # runs skipped or coalesced since the last success
    missed_times: tuple[int, ...] = ()  # the latest MISSED_KEPT of them
    job: PendingJob | None = None
    inactive: str | None = None  # why it no longer runs (disabled, its task cancelled)

    def with_missed(self, times: list[int]) -> HealthRecord:
        kept = (*self.missed_times, *times)[-MISSED_KEPT:]
        return replace(self, missed=self.missed + len(times), missed_times=kept)


@dataclass(frozen=True, slots=True)
class Health:
    """A state, its level and a short reason for a person."""

    state: str
    level: int
    reason: str = ""


_NAMES = frozenset(f.name for f in fields(HealthRecord))


def encode(record: HealthRecord) -> str:
    """The record's JSON (unset values left out: 100,000 records add up)."""
    out: dict[str, Any] = {}
    for key, value in asdict(record).items():
        if value is None or value == () or value == 0 and key in ("consecutive_failures",
                                                                  "missed"):
            continue
        if key == "job":
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return json.dumps(out, separators=(",", ":"))


def decode(text: str | bytes) -> HealthRecord | None:
    """The record, or None for a value this version cannot read (written by hand)."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            return None
        values = {k: v for k, v in raw.items() if k in _NAMES}
        job = values.pop("job", None)
        if "missed_times" in values:
            values["missed_times"] = tuple(int(t) for t in values["missed_times"])
        record = HealthRecord(**values)
        if isinstance(job, dict):
            record = replace(record, job=PendingJob(**job))
        return record
    except (ValueError, TypeError):
        return None


def error_line(text: str, limit: int = 300) -> str:
    """The line of a traceback that says what went wrong: its last non-empty line
    (``ValueError: boom``), which rq's ``exc_info`` ends with; cut to ``limit``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


def classify(record: HealthRecord | None, now: float, thresholds: Thresholds,
             paused: bool = False) -> Health:
    """The schedule's state now: the worst that applies, critical before warning."""
    if paused:
        return Health(PAUSED, 0, "paused")
    if record is None or record.last_enqueued is None:
        return Health(NEVER_RUN, 0, "no run enqueued yet")
    if record.inactive is not None:
        return Health(INACTIVE, 0, record.inactive)
    job, t = record.job, thresholds
    # rq's timeout -1 is "never": such a job is never stuck, however long it runs.
    if job is not None and job.started is not None and not (job.timeout or 0) < 0:
        limit = job.timeout or RQ_DEFAULT_TIMEOUT
        if now - job.started > limit + t.stuck_grace_secs:
            return Health(STUCK, CRITICAL, f"job {job.job_id} started {now - job.started:.0f} s"
                          f" ago, past its timeout of {limit:g} s: its worker may have died")
    failures = record.consecutive_failures
    if failures >= t.failing_critical:
        return Health(FAILING, CRITICAL, f"{failures} failures in a row")
    if job is not None and job.started is None and now - job.enqueued > t.late_secs:
        return Health(LATE, WARNING, f"job {job.job_id} waiting on its queue for "
                      f"{now - job.enqueued:.0f} s: is a worker listening?")
    if failures >= t.failing_warning:
        return Health(FAILING, WARNING, f"{failures} failure{'s' if failures > 1 else ''}"
                      " in a row")
    if record.queue_secs is not None and record.queue_secs > t.late_secs:
        return Health(LATE, WARNING, f"last job waited {record.queue_secs:.0f} s on its queue")
    if record.missed:
        return Health(MISSED, WARNING, f"{record.missed} run{'s' if record.missed > 1 else ''}"
                      " skipped or coalesced since the last success")
    return Health(OK, 0)


def states_of(records: dict[str, HealthRecord | None], now: float, thresholds: Thresholds,
              paused: Container[str] = frozenset()) -> dict[str, Health]:
    """:func:`classify` for each schedule; ``paused``: the names paused by ``btu pause``."""
    return {name: classify(record, now, thresholds, name in paused)
            for name, record in records.items()}


def thresholds_of(config: Config) -> Thresholds:
    """The config's thresholds, as the daemon and ``btu health`` both read them."""
    return Thresholds(
        failing_warning=config.health_failing_warning,
        failing_critical=config.health_failing_critical,
        late_secs=config.health_late_secs,
        stuck_grace_secs=config.health_stuck_grace_secs,
    )
