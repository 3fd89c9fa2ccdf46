"""One renewal for the key prefix leases of every site of a bench.

A site alone renews its lease (prefix_guard.py) with an EVAL of its own every
third of the lease's life.  A bench's daemon holding 500 leases sent 17 of
them a second, the largest share of its idle reactor's work once the sites'
other timers were shared.  The guards of a bench's sites share one
:class:`LeaseRenewal` instead: one EVAL (``lua/take_many.lua``) renews every
lease held, and each guard is told what its key held, as its own renewal
would have been: a lease another site took stops that site only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.store.scripts import TAKE_MANY

if TYPE_CHECKING:
    from btu_twisted.store.gateway import RedisCommands

__all__ = ["LeaseRenewal"]

#: Leases per EVAL: a bench's thousand sites in one round trip, a bigger one in a few.
CHUNK = 1000


class Lease(Protocol):
    """A :class:`~btu_twisted.store.prefix_guard.PrefixGuard`, as far as renewing goes."""

    key: str

    def take_args(self) -> list[Any]: ...

    def renewed(self, other: str) -> None: ...


class LeaseRenewal:
    log = Logger()

    def __init__(self, clock: Any, redis: RedisCommands, interval: float) -> None:
        self._redis = redis
        self._interval = interval
        self._guards: dict[Lease, None] = {}  # in the order taken
        # LoopingCall waits for each renewal's Deferred: never two out at once.
        self._loop = LoopingCall(self.renew)
        self._loop.clock = clock

    def add(self, guard: Lease) -> None:
        """Renew ``guard``'s lease from now on (it has just taken it)."""
        self._guards[guard] = None
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def remove(self, guard: Lease) -> None:
        self._guards.pop(guard, None)
        if not self._guards and self._loop.running:
            self._loop.stop()

    async def renew(self) -> None:
        guards = list(self._guards)
        for start in range(0, len(guards), CHUNK):
            chunk = guards[start:start + CHUNK]
            args: list[Any] = []
            for guard in chunk:
                args += guard.take_args()
            try:
                found = await self._redis.eval(TAKE_MANY, [guard.key for guard in chunk], args)
            except Exception as e:
                # Redis away: the gateway logs the outage; the leases may lapse,
                # and whoever holds them when Redis is back decides.
                self.log.debug("could not renew {count} leases: {error}", count=len(chunk),
                               error=e)
                return
            for guard, owner in zip(chunk, found, strict=False):
                guard.renewed(owner.decode() if isinstance(owner, bytes) else str(owner or ""))
