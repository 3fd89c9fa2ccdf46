"""The reactor's clock as a Protocol mypy can check.

Twisted declares ``IReactorTime`` as a zope Interface, whose methods are
written without ``self``; without the zope mypy plugin every call on an
``IReactorTime`` value is an error.  Classes keep taking ``IReactorTime``
(what their callers hold) and view it through :func:`as_clock` once;
:func:`reactor_time` goes the other way for Twisted's own helpers
(``deferLater``, ``LoopingCall.clock``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from twisted.internet.interfaces import IReactorTime

__all__ = ["Clock", "DelayedCall", "as_clock", "reactor_time"]


class DelayedCall(Protocol):
    """What ``callLater`` returns, as far as a retry timer needs it."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The time and the timers of ``IReactorTime`` (a reactor, or ``task.Clock`` in tests)."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], /, *args: object, **kw: object
    ) -> DelayedCall: ...


def as_clock(reactor: IReactorTime) -> Clock:
    """``reactor`` seen through :class:`Clock`: it provides IReactorTime, which is this."""
    return cast(Clock, reactor)


def reactor_time(clock: Clock) -> IReactorTime:
    """The clock as what Twisted's own helpers (``deferLater``,
    ``LoopingCall.clock``) are typed to take; every Clock given here is a
    reactor or a task.Clock, which provide IReactorTime (Twisted casts the
    same way in LoopingCall)."""
    return cast(IReactorTime, clock)
