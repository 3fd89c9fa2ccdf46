"""Runs whose job could not be built (or claimed) yet, and when to try again.

Kept apart from the prepared claims: a run waiting here has no job, and the
timer must neither build it again before its time nor forget the delay it
logged for its schedule (one line when a site goes away, one when it is back).
"""

from __future__ import annotations

from btu_twisted.clock import Clock


class Retries:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at: dict[str, float] = {}
        self._wait: dict[str, float] = {}
        self.delayed: dict[str, str] = {}      # schedule -> reason already logged

    def schedule(self, member: str) -> None:
        """Retry this run after 1, 2, 4, ... seconds, at most 30."""
        wait = min(30.0, 2 * self._wait.get(member, 0.5))
        self._wait[member] = wait
        self._at[member] = self._clock.seconds() + wait

    def block(self, member: str, until: float) -> None:
        """Claim this run again at ``until`` (the store held it back), its
        backoff unchanged."""
        self._at[member] = until

    def due_at(self, member: str) -> float:
        """When this run may be tried again (0 when it is not waiting)."""
        return self._at.get(member, 0.0)

    def soonest(self) -> float | None:
        return min(self._at.values(), default=None)

    def forget(self, member: str, name: str) -> bool:
        """The run is settled; True if its schedule had a delay logged."""
        self._at.pop(member, None)
        self._wait.pop(member, None)
        return self.delayed.pop(name, None) is not None

    def forget_gone(self, alive: set[str]) -> None:
        """Runs no longer in a complete window were cancelled or replanned:
        their waits are forgotten (not their schedules' logged delays)."""
        for member in [m for m in self._at if m not in alive]:
            self._at.pop(member, None)
            self._wait.pop(member, None)
