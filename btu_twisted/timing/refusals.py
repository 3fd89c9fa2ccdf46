"""Whether a run may still be enqueued as the committed row stands now."""

from __future__ import annotations

from btu_twisted.planning.planner import Unplannable, next_run_for
from btu_twisted.records import ScheduleRow


def refusal_of(row: ScheduleRow | None, default_zone: str, when: int) -> str | None:
    """Why the row as committed now must not run at ``when``; None when it may."""
    if row is None:
        return "the schedule is deleted"
    inactive = row.inactive_reason()
    if inactive is not None:
        return inactive
    produced = _produced(row, default_zone, when)
    if isinstance(produced, str):
        return produced
    if produced != when:
        return "its cron string or time zone no longer runs at that time"
    return None


# (cron string, zone, due time) -> the run the row produces, or why none: a
# burst's rows mostly share a few cron strings, and croniter takes ~30 us a run.
_runs_produced: dict[tuple[str | None, str, int], int | str] = {}


def _produced(row: ScheduleRow, default_zone: str, when: int) -> int | str:
    key = (row.cron_string, row.cron_time_zone or default_zone, when)
    produced = _runs_produced.get(key)
    if produced is None:
        try:
            produced = next_run_for(row, default_zone, when - 1)
        except Unplannable as e:
            produced = f"it cannot be planned: {e}"
        if len(_runs_produced) >= 4096:
            _runs_produced.clear()
        _runs_produced[key] = produced
    return produced


