"""misfire_grace_secs: a run found too late is skipped, not enqueued late."""

from __future__ import annotations

from collections.abc import Callable

from btu_twisted.timing.run_log import RunLog, Skipped


class Misfires:
    """Asked both before a job is built (no site call for a run already
    missed) and before it is claimed (Redis was away meanwhile)."""

    def __init__(self, grace: float | None, runs: RunLog,
                 on_failure: Callable[[str], None]) -> None:
        self._grace = grace
        self._runs = runs
        self._on_failure = on_failure

    def misfired(self, name: str, when: int, now: float) -> bool:
        """True (counted, and logged with the round) when misfire_grace_secs
        says to skip this run."""
        late = now - when
        if self._grace is None or late <= self._grace:
            return False
        self._runs.skipped.append(Skipped(name, when, late))
        self._on_failure("misfire_skipped")
        return True
