"""Runs whose job could not be built (or claimed) yet, and when to try again."""

from __future__ import annotations

from btu_twisted.planning.clock import Clock


class Retries:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.at: dict[str, float] = {}
        self.wait: dict[str, float] = {}
        self.delayed: dict[str, str] = {}      # schedule -> reason already logged

    def schedule(self, member: str) -> None:
        """Retry this run after 1, 2, 4, ... seconds, at most 30."""
        wait = min(30.0, 2 * self.wait.get(member, 0.5))
        self.wait[member] = wait
        self.at[member] = self._clock.seconds() + wait

    def forget(self, member: str, name: str) -> bool:
        """The run is settled; True if its schedule had a delay logged."""
        self.at.pop(member, None)
        self.wait.pop(member, None)
        return self.delayed.pop(name, None) is not None
