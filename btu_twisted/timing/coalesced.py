"""Which scheduled times a late run covered: a run enqueued late (the daemon was
down, Redis away) fires once, and the next run is planned after now, so the
times its cron produced in between never run.  Schedule health counts them as
missed (the misfire and overlap skips are told by the timer itself).

Only late runs are looked at (a second or more), a bounded number per pass of
the job follower, with one read of their rows: a daemon back from an outage
must not re-read every schedule at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from btu_twisted.planning.planner import Unplannable, next_run_for
from btu_twisted.seams import RowReader

__all__ = ["LATE_SECS", "MAX_COVERED", "CoalescedRuns"]

#: Runs enqueued at least this late are checked for times they covered.
LATE_SECS = 1.0
#: Times counted per late run at most (a per-second schedule down for a day).
MAX_COVERED = 10_000


class CoalescedRuns:
    def __init__(self, rows: RowReader, default_zone: str) -> None:
        self._rows = rows
        self._zone = default_zone

    async def __call__(self, late: Mapping[str, tuple[int, float]]) -> dict[str, list[int]]:
        """For each schedule's late run (its time, when it was enqueued), the
        times its cron produced after it up to the enqueue."""
        rows = await self._rows.read_schedules(list(late))
        covered: dict[str, list[int]] = {}
        for name, (when, enqueued) in late.items():
            row = rows.get(name)
            if row is None:
                continue
            times: list[int] = []
            after: float = when
            try:
                while len(times) < MAX_COVERED:
                    after = next_run_for(row, self._zone, after)
                    if after > enqueued:
                        break
                    times.append(int(after))
            except Unplannable:
                pass
            if times:
                covered[name] = times
        return covered
