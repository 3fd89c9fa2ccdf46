"""Taking the key prefix's lease at start, waiting for Redis when start-up may wait."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from btu_twisted.config import Config
from btu_twisted.daemon.startup import StartupError
from btu_twisted.daemon.startup import reason_of as _reason
from btu_twisted.store.prefix_guard import PrefixGuard, PrefixRefused, PrefixTaken

__all__ = ["PREFIX_RETRY_SECS", "PrefixHold"]

PREFIX_RETRY_SECS = 2.0


class PrefixHold:
    """Nothing may plan, prune or claim in a key prefix before its lease is ours."""

    def __init__(
        self, reactor: Any, guard: PrefixGuard, config: Callable[[], Config],
        running: Callable[[], bool],
    ) -> None:
        self._reactor = reactor
        self.guard = guard
        self._config = config
        self._running = running
        self._prefix_wait: Deferred[None] | None = None

    async def take(self) -> bool:
        """True once the prefix is ours; False when stopped while waiting for Redis."""
        while self._running():
            try:
                await self.guard.acquire()
                return True
            except (PrefixTaken, PrefixRefused) as e:
                raise StartupError(str(e)) from None
            except Exception as e:
                if not self._config().startup_without_database_connections:
                    raise StartupError(
                        f"cannot take the key prefix {self._config().redis_key_prefix!r} "
                        f"in Redis: {_reason(e)}"
                    ) from None
            self._prefix_wait = deferLater(self._reactor, PREFIX_RETRY_SECS, lambda: None)
            try:
                await self._prefix_wait
            except CancelledError:
                break
            finally:
                self._prefix_wait = None
        return False

    def cancel(self) -> None:
        """Stop waiting for Redis (the service is stopping)."""
        if self._prefix_wait is not None:
            self._prefix_wait.cancel()
