"""The daemon's only door to Redis.

txredisapi's lazy, reconnecting pool queues commands forever while Redis is
down; behind this small interface every command gets a deadline, and its
success or failure feeds the Redis ``Dependency`` so an outage surfaces as one
log line and a ``down`` state instead of a silent stall.  Tests replace it with
an in-memory fake of the same two methods.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from btu_twisted.health import Dependency


class RedisCommands(Protocol):
    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]: ...

    def command(self, name: str, *args: Any) -> Deferred[Any]: ...


class RedisGateway:
    """A txredisapi pool with deadlines and an up/down state."""

    def __init__(
        self,
        clock: IReactorTime,
        host: str,
        port: int,
        database: int = 0,
        password: str | None = None,
        timeout: float = 5.0,
        poolsize: int = 2,
    ) -> None:
        self.health = Dependency("Redis", clock)
        self._clock = clock
        self._params = dict(
            host=host,
            port=port,
            dbid=database,
            poolsize=poolsize,
            reconnect=True,
            password=password,
            connectTimeout=timeout,
            replyTimeout=timeout,
            # A schedule named "123" must stay a string in ZRANGE replies.
            convertNumbers=False,
        )
        self._timeout = timeout
        self._pool: Any = None

    def start(self) -> None:
        """Connect lazily: start-up must not wait for (or fail on) Redis."""
        self._pool = self._new_pool()

    def _new_pool(self) -> Any:
        pool = txredisapi.lazyConnectionPool(**self._params)
        # A pool that never completes fails this Deferred; the outage is
        # reported through ``health``, not as an unhandled error.
        waiting = getattr(getattr(pool, "_factory", None), "deferred", None)
        if isinstance(waiting, Deferred):
            waiting.addErrback(lambda _: None)
        return pool

    def _live_pool(self) -> Any:
        """The pool, replaced if txredisapi has given up on it.

        txredisapi stops reconnecting for good when SELECT or AUTH fails while
        a connection is being set up, even when the failure is only the
        connection dropping (a restarting Redis, a proxy in front of it): with
        ``rq_database`` or ``rq_password`` set, one such drop would leave the
        daemon without Redis until restarted.  A fresh pool starts over; the
        callers' backoff paces the attempts.
        """
        factory = getattr(self._pool, "_factory", None)
        if (
            factory is not None
            and factory.stopped
            and not factory.size
            and not factory.disconnectCalled
        ):
            old, self._pool = self._pool, self._new_pool()
            old.disconnect().addErrback(lambda _: None)
        return self._pool

    def stop(self) -> Deferred[None]:
        pool, self._pool = self._pool, None
        if pool is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return pool.disconnect()

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        return self._call("eval", script, list(keys), list(args))

    def command(self, name: str, *args: Any) -> Deferred[Any]:
        return self._call("execute_command", name, *args)

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        if self._pool is None:
            raise RuntimeError("RedisGateway used before start()")
        started = self._clock.seconds()
        d: Deferred[Any] = getattr(self._live_pool(), method)(*args)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._ok, self._failed, errbackArgs=(started,))
        return d

    def _ok(self, result: Any) -> Any:
        self.health.succeeded()
        return result

    def _failed(self, failure: Any, started: float | None = None) -> Any:
        # A script error (ResponseError) means Redis answered: it is up.
        if failure.check(txredisapi.ResponseError):
            self.health.succeeded()
        elif failure.check(TimeoutError, defer.TimeoutError):
            # addTimeout's own text is "(5.0, 'Deferred')"; say what happened.
            reason = f"no reply within {self._timeout:g} s"
            self.health.failed(reason, started=started)
        else:
            self.health.failed(failure, started=started)
        return failure
