"""What the planner last planned each schedule from, so a full refresh re-plans
only the schedules that need it.

A full refresh used to queue every enabled name, and the planner re-read and
re-computed every one of them (100,000 schedules: about 30 s of CPU each
period) to arrive, almost always, at the member already in Redis.  A
schedule's next run depends on nothing but its cron string, the zone it is
read in, whether it is enabled and whether its task may run (and on the last
run, which the timer handles: it replans after each claim).  The planner
remembers a fingerprint of those and the run it planned; the refresh reads
the same columns of every row (chunked) and the member index (paged), and
queues only schedules that are new, whose fingerprint differs, or whose
member is not the one planned — gone (claimed, cancelled, flushed) or
replaced by another daemon.

The zone is part of the fingerprint, so a change of ``cron_time_zone``
re-plans everything.  Edits that leave ``modified`` alone are still caught:
the fingerprint is of the values, not of ``modified``.  Memory is per
process: after a restart everything is planned once.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

# Kept here too for the planner; they live with the rows (sources compare them).
from btu_twisted.records import fingerprint as fingerprint
from btu_twisted.records import row_fingerprint as row_fingerprint


class PlanMemory:
    """schedule name -> (fingerprint of the row, unix time of the run planned)."""

    def __init__(self) -> None:
        # The time, not the member string: a third of the memory per name.
        self._planned: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._planned)

    def record(self, name: str, fp: int, when: int) -> None:
        self._planned[name] = (fp, when)

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self._planned.pop(name, None)

    def retain(self, names: Container[str]) -> None:
        """Forget every schedule not in ``names`` (deleted or disabled ones)."""
        for name in [n for n in self._planned if n not in names]:
            del self._planned[name]

    def clear(self) -> None:
        self._planned.clear()

    def matches(self, name: str, fp: int) -> bool:
        """True when ``name`` was planned from a row with this fingerprint."""
        entry = self._planned.get(name)
        return entry is not None and entry[0] == fp

    def holds(self, name: str, member: str) -> bool:
        """True when ``member`` is the one the planner wrote for ``name``."""
        entry = self._planned.get(name)
        return entry is not None and member == f"{name}|{entry[1]}"
