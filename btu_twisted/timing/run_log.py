"""What the timer says about the runs it enqueued or skipped.

A few runs get a line each, as an operator wants to see them.  Many at once (a
burst of 10,000 runs due at one second, or runs missed while the daemon was
down) get one summary line per round, with a few example names: one line per
run used to cost more than enqueueing the run, and buried everything else in
the journal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from twisted.logger import Logger

#: Rounds with more runs than this are summed up in one line.
DETAIL = 20
#: A run enqueued more than this many seconds after its time is late (warning).
LATE_SECS = 1.0
#: Names shown in a summary line of more than DETAIL schedules.
EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class Enqueued:
    schedule: str
    when: int
    lateness: float
    job_id: str
    origin: str


@dataclass(frozen=True, slots=True)
class Skipped:
    schedule: str
    when: int
    lateness: float


class RunLog:
    """Collects one round's runs; :meth:`flush` logs them."""

    log = Logger(namespace="btu_twisted.timing.timer")

    def __init__(self, grace: float | None) -> None:
        self._grace = grace
        self.enqueued: list[Enqueued] = []
        self.skipped: list[Skipped] = []

    def flush(self) -> None:
        enqueued, self.enqueued = self.enqueued, []
        if enqueued:
            self._log_enqueued(enqueued)
        self.flush_skipped()

    def flush_skipped(self) -> None:
        skipped, self.skipped = self.skipped, []
        if skipped:
            self._log_skipped(skipped)

    def _log_enqueued(self, runs: list[Enqueued]) -> None:
        late = [r for r in runs if r.lateness > LATE_SECS]
        on_time = [r for r in runs if r.lateness <= LATE_SECS]
        if len(late) == 1:
            r = late[0]
            self.log.warn(
                "run of {schedule} at {when} was late by {late:.0f} s; "
                "enqueued it once now as job {job_id} on {origin}",
                schedule=r.schedule, when=iso(r.when), late=r.lateness,
                job_id=r.job_id, origin=r.origin,
            )
        elif late:
            self.log.warn(
                "{count:,} runs of {schedules:,} schedules enqueued up to {late:.1f} s late"
                " (due {first} to {last}; {examples})",
                **_summary(late),
            )
        if len(runs) <= DETAIL:
            for r in on_time:
                self.log.info(
                    "enqueued {schedule} run at {when} as job {job_id} on {origin}",
                    schedule=r.schedule, when=iso(r.when), job_id=r.job_id, origin=r.origin,
                )
        elif on_time:
            self.log.info(
                "enqueued {count:,} runs of {schedules:,} schedules due {first} to {last},"
                " up to {late:.2f} s after their time ({examples})",
                **_summary(on_time),
            )

    def _log_skipped(self, runs: list[Skipped]) -> None:
        if len(runs) == 1:
            r = runs[0]
            self.log.warn(
                "run of {schedule} at {when} skipped: missed by {late:.0f} s, "
                "more than misfire_grace_secs ({grace})",
                schedule=r.schedule, when=iso(r.when), late=r.lateness, grace=self._grace,
            )
            return
        self.log.warn(
            "{count:,} runs of {schedules:,} schedules skipped: missed by up to {late:.0f} s,"
            " more than misfire_grace_secs ({grace}) (due {first} to {last}; {examples})",
            grace=self._grace, **_summary(runs),
        )


def _summary(runs: list[Enqueued] | list[Skipped]) -> dict[str, object]:
    """A few schedules are all named; of many, EXAMPLES."""
    names = list(dict.fromkeys(r.schedule for r in runs))
    shown_count = len(names) if len(names) <= DETAIL else EXAMPLES
    shown = ", ".join(names[:shown_count])
    more = len(names) - shown_count
    return {
        "count": len(runs),
        "schedules": len(names),
        "late": max(r.lateness for r in runs),
        "first": iso(min(r.when for r in runs)),
        "last": iso(max(r.when for r in runs)),
        "examples": f"{shown} and {more:,} more" if more > 0 else shown,
    }


def iso(when: int) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
