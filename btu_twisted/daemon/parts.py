"""A service's parts as one ordered list: started in that order, stopped in reverse.

``MultiService`` would start its children all at once and stop them
concurrently.  A daemon's parts need more: each start awaited before the
next (a socket already in use must end start-up before Redis is touched), a
start that can say the rest must not start (stopped while waiting for
Redis), and stops one after the other, where one part failing to stop is
logged and the parts below it are still stopped.  Writing the order down as
a list keeps the reasons for it in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["Part", "Parts", "service_part"]

#: Starts a part: None or True to go on, False when the parts after it must not start.
Start = Callable[[], Awaitable[bool | None] | bool | None]
#: Stops a part; a Deferred or coroutine it returns is awaited.
Stop = Callable[[], object]


@dataclass(frozen=True)
class Part:
    """One step: ``start`` (None: nothing to start) and ``stop`` (None: nothing to stop)."""

    name: str
    start: Start | None = None
    stop: Stop | None = None


class Stoppable(Protocol):
    """A Twisted service, as far as stopping it goes."""

    @property
    def running(self) -> int: ...

    def stopService(self) -> object: ...


def service_part(name: str, service: Stoppable, start: Start | None = None) -> Part:
    """``service`` as a part that is stopped only while it runs: a start that
    failed or never came leaves nothing to stop."""

    def stop() -> object:
        return service.stopService() if service.running else None

    return Part(name, start, stop)


class Parts:
    """Parts started in the order given and stopped in the reverse order."""

    log = Logger()

    def __init__(self, *parts: Part | None) -> None:
        """``None`` stands for a part this configuration does not have."""
        self._parts = [part for part in parts if part is not None]

    @property
    def names(self) -> list[str]:
        return [part.name for part in self._parts]

    async def start(self) -> bool:
        """Start each part in turn; False, with the parts after it not started,
        when one says so.  A part's exception ends it the same way and propagates."""
        for part in self._parts:
            if part.start is None:
                continue
            result = part.start()
            if inspect.isawaitable(result):
                result = await result
            if result is False:
                return False
        return True

    async def stop(self) -> None:
        """Stop every part, last first, whether or not it started (each stop
        knows what to do then); a failure is logged and the rest still stop."""
        for part in reversed(self._parts):
            if part.stop is None:
                continue
            try:
                result = part.stop()
                if isinstance(result, Deferred) or inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.failure("stopping {service} failed", service=part.name)
