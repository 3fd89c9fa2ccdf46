"""The clock the planner, the refresh and the timer are given: the reactor in
the daemon, a ``twisted.internet.task.Clock`` in the tests.

Twisted declares it as the zope interface ``IReactorTime``, whose methods mypy
cannot call without the zope plugin (they are declared without ``self``);
these Protocols say the little the scheduler uses, so the calls are checked.
Lives here, the lowest room that needs it, for timing/ may import planning/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet.interfaces import IReactorTime


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> DelayedCall: ...


def reactor_time(clock: Clock) -> IReactorTime:
    """The clock as what Twisted's own helpers (``deferLater``,
    ``LoopingCall.clock``) are typed to take; every Clock given here is a
    reactor or a task.Clock, which provide IReactorTime (Twisted casts the
    same way in LoopingCall)."""
    return cast(IReactorTime, clock)
