"""One site per Redis key prefix: a lease that a second site's daemon cannot take.

A bench's sites share one ``redis_queue`` and every site numbers its schedules
``TS-000001``…, so two sites' daemons in one key prefix prune each other's
members and claim each other's runs.  Each daemon therefore holds a lease,
``<prefix>owner`` = its site, set with an expiry and renewed well before it.
A daemon of another site finds the lease and refuses to start; daemons of the
same site (high availability) share it, as they share the keys.  A daemon
that dies without releasing the lease frees the prefix when it expires
(:data:`LEASE_SECS`); a clean stop releases it at once.

Taking the lease is also the daemon's first write under its prefix, so a
Redis ACL user that may not touch the prefix (Frappe's ``use_rq_auth`` user
may touch only ``rq:*``) is found here, and refused with the rule it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from btu_twisted.redis_target import ACL_RULE
from btu_twisted.store.keys import Keys
from btu_twisted.store.scripts import RELEASE, TAKE

if TYPE_CHECKING:
    from btu_twisted.store.gateway import RedisCommands
    from btu_twisted.store.lease_renewal import LeaseRenewal

__all__ = ["LEASE_SECS", "PrefixGuard", "PrefixRefused", "PrefixTaken"]

#: How long a dead daemon keeps its prefix; renewed every third of it.
LEASE_SECS = 30

# The lease's value is "<owner id> <site>": daemons are the same site when
# their owner ids (their database) agree (lua/take.lua, lua/release.lua).


class PrefixRefused(Exception):
    """Redis's ACL does not let the daemon's user write its own keys."""


class PrefixTaken(Exception):
    """The prefix is leased to another site's live daemon; the message says what to do."""


class PrefixGuard:
    """Holds ``<prefix>owner`` for ``site`` while the daemon runs.

    ``owner_id`` says which daemons are one site (default: ``site``); the
    daemon passes its database, as two daemons on one database are one site
    however their configs name it.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        redis: RedisCommands,
        prefix: str,
        site: str,
        on_lost: Callable[[str], None],
        lease_secs: float = LEASE_SECS,
        owner_id: str | None = None,
    ) -> None:
        self._clock = clock
        self._redis = redis
        self._prefix = prefix
        self.key = Keys(prefix).owner
        self._site = site
        self._owner_id = "_".join((owner_id or site).split()) or "_"
        self._on_lost = on_lost
        self._lease = lease_secs
        self._loop: LoopingCall | None = None
        self._held = False
        #: A bench's one renewal for every site's lease (None: this guard renews its own).
        self.renewal: LeaseRenewal | None = None

    async def acquire(self) -> None:
        """Take the lease now, or raise :class:`PrefixTaken`; then keep renewing it."""
        try:
            other = await self._take()
        except Exception as e:
            if "NOPERM" not in str(e):
                raise
            target = getattr(self._redis, "target", None)
            user = getattr(target, "username", None) or "default"
            raise PrefixRefused(
                f"Redis user {user!r} may not write {self.key} ({' '.join(str(e).split())}); "
                f"the daemon's Redis user needs the ACL rule "
                f"'{ACL_RULE.format(prefix=self._prefix)}' (README, \"Redis users\")"
            ) from None
        if other:
            raise PrefixTaken(self._taken_by(other))
        self._held = True
        if self.renewal is not None:
            self.renewal.add(self)
            return
        self._loop = LoopingCall(self._renew)
        self._loop.clock = self._clock
        self._loop.start(self._lease / 3, now=False)

    def take_args(self) -> list[Any]:
        """ARGV of take.lua for this lease (and its part of take_many.lua's)."""
        return [self._owner_id, self._site, int(self._lease * 1000)]

    async def _take(self) -> str:
        owner = await self._redis.eval(TAKE, [self.key], self.take_args())
        return owner.decode() if isinstance(owner, bytes) else str(owner or "")

    async def _renew(self) -> None:
        try:
            other = await self._take()
        except Exception as e:
            # Redis away: the gateway logs the outage; the lease may lapse,
            # and whoever holds it when Redis is back decides.
            self.log.debug("could not renew the lease on {key}: {error}", key=self.key, error=e)
            return
        self.renewed(other)

    def renewed(self, other: str) -> None:
        """A renewal's answer: '' renewed, else the other site's lease found there."""
        if other and self._held:
            self.stop()
            self._on_lost(self._taken_by(other))

    def _taken_by(self, owner: str) -> str:
        other = owner.partition(" ")[2] or owner
        return (
            f"the Redis keys {self._prefix}* belong to the daemon of site {other!r} "
            f"(its lease {self.key} is renewed every {self._lease / 3:g} s); this daemon "
            f"serves {self._site!r}: give it a redis_key_prefix of its own, e.g. "
            f"\"btu_scheduler:{self._site}:\""
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.renewal is not None:
            self.renewal.remove(self)
        self._held = False

    async def release(self) -> None:
        """Stop renewing and free the prefix for the next daemon, if it is still ours."""
        held = self._held
        self.stop()
        if not held:
            return
        try:
            await self._redis.eval(RELEASE, [self.key], [self._owner_id])
        except Exception as e:
            self.log.info("lease {key} not released ({error}); it lapses in {secs:g} s",
                          key=self.key, error=e, secs=self._lease)
