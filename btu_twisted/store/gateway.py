"""The daemon's only door to Redis.

txredisapi's lazy, reconnecting pool queues commands forever while Redis is
down; behind this small interface every command gets a deadline, and its
success or failure feeds the Redis ``Dependency`` so an outage surfaces as one
log line and a ``down`` state instead of a silent stall.  Tests replace it with
an in-memory fake of the same two methods.

Two things txredisapi does on its own are taken over here:

- A refused AUTH (wrong ``rq_password``) or SELECT makes txredisapi give up
  the connection, and the commands waiting for it only time out.  The gateway
  hears the refusal itself and reports "Redis refused the password (...)" —
  as the outage line and as the error of those commands (so the start-up
  check's one-line exit message says it too) — not "no reply within 5 s".
- txredisapi logs every failed AUTH, dead connection and reconnection attempt
  at info level, once per connection per attempt: dozens of lines a minute
  during an outage that the Dependency already reports once.  Those lines
  are turned into debug events (see :func:`quiet_txredisapi`).

The Redis is a :class:`RedisTarget`: a host and port (optionally TLS), a
unix socket, or the master of a Sentinel service.  Behind Sentinel,
txredisapi asks the Sentinels for the master before every connection; two
gaps are filled here.  Its master protocol sends AUTH without waiting for the
answer, so a wrong password left the connection hanging: ours waits and
reports the refusal like any other.  And a connection to a master that was
demoted (not killed) stays open, its writes failing with READONLY: such a
reply drops the pool's connections, so they reconnect to the new master.
A Sentinel that names no master for the service is reported as the reason
commands fail ("Sentinel ... knows no master ..."), not as a bare timeout.

And one thing it does slowly: framing a command of many thousand arguments
(a burst's claims) in Python when it is sent.  :meth:`RedisGateway.eval_encoded`
sends a script call whose arguments were framed ahead of time
(:mod:`btu_twisted.store.resp`), through txredisapi's own reply and timeout handling.

The adaptations of txredisapi themselves (quiet logging, pre-framed commands,
the Sentinel master protocol, TLS options) are in gateway_setup.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import txredisapi
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.health import Dependency
from btu_twisted.redis_target import RedisTarget
from btu_twisted.store.gateway_setup import (
    Framed,
    SentinelMasterFactory,
    passing_framed,
    quiet_txredisapi,
    tls_options,
)
from btu_twisted.store.resp import Encoded, command, encode

__all__ = ["RedisCommands", "RedisGateway", "RedisRefusedError", "quiet_txredisapi"]

# "Redis error: could not auth: WRONGPASS ..." / "... could not set dbid=3: NOAUTH ...",
# as txredisapi words a refused AUTH or SELECT.
_SETUP_ERROR = re.compile(r"could not (auth|set dbid=(\S*)|check role): (.*)", re.DOTALL)
# A Redis error reply starts with its code in capitals ("ERR", "WRONGPASS", "NOAUTH");
# "Lost connection" and the like are the connection failing, not Redis refusing.
_REDIS_REPLY = re.compile(r"[A-Z][A-Z_]+ ")


class RedisRefusedError(Exception):
    """Redis answered but refused the connection's AUTH or SELECT; ``str()`` says which."""


class RedisTimeoutError(defer.TimeoutError):
    """A command got no reply in time; ``str()`` says so in words (addTimeout's own
    text is ``(5.0, 'Deferred')``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no reply in time"


_SHAS: dict[str, str] = {}


def _sha1(script: str) -> str:
    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()
    return sha


class RedisCommands(Protocol):
    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]: ...

    def eval_encoded(self, script: str, keys: Encoded, args: Encoded) -> Deferred[Any]: ...

    def command(self, name: str, *args: Any) -> Deferred[Any]: ...


class RedisGateway:
    """A txredisapi pool with deadlines and an up/down state."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        host: str = "127.0.0.1",
        port: int = 6379,
        database: int = 0,
        password: str | None = None,
        timeout: float = 5.0,
        poolsize: int = 2,
        *,
        target: RedisTarget | None = None,
    ) -> None:
        self.health = Dependency("Redis", clock)
        self._clock = clock
        self.target = target or RedisTarget(
            kind="tcp", host=host, port=port, database=database, password=password
        )
        self._poolsize = poolsize
        self._timeout = timeout
        self._password = self.target.password
        self._pool: Any = None
        self._sentinel: Any = None
        self._tls: Any = None
        # (when, reason) of the last AUTH/SELECT that Redis refused, until a command succeeds.
        self._refusal: tuple[float, str] | None = None
        # Told of the next refusal at once (the start-up check), instead of a command's timeout.
        self._refusal_watchers: list[Callable[[str], object]] = []

    def start(self) -> None:
        """Connect lazily: start-up must not wait for (or fail on) Redis."""
        quiet_txredisapi()
        self._pool = self._new_pool()

    def _new_pool(self) -> Any:
        pool = self._connect()
        factory: Any = getattr(pool, "_factory", None)
        # Connections are made on later reactor turns, so they all get it.
        if factory is not None and hasattr(factory, "protocol"):
            factory.protocol = passing_framed(factory.protocol)
        # A pool that never completes fails this Deferred; the outage is
        # reported through ``health``, not as an unhandled error.
        waiting = getattr(factory, "deferred", None)
        if isinstance(waiting, Deferred):
            waiting.addErrback(lambda _: None)
        # txredisapi reports a refused AUTH or SELECT of every connection (not
        # only the pool's first) through the factory's connectionError.
        report = getattr(factory, "connectionError", None)
        if callable(report):

            def connection_error(why: str) -> Any:
                self._setup_failed(str(why))
                return report(why)

            factory.connectionError = connection_error
        return pool

    def _connect(self) -> Any:
        target = self.target
        common: dict[str, Any] = dict(
            dbid=target.database,
            poolsize=self._poolsize,
            password=target.password,
            username=target.username,
            replyTimeout=self._timeout,
            # A schedule named "123" must stay a string in ZRANGE replies.
            convertNumbers=False,
        )
        if target.kind == "sentinel":
            return self._sentinel_pool(common)
        common.update(reconnect=True, connectTimeout=self._timeout)
        if target.kind == "unix":
            return txredisapi.lazyUnixConnectionPool(path=target.path, **common)
        if target.tls and self._tls is None:
            self._tls = tls_options(target)  # read once: a replaced pool reuses it
        tls = self._tls or False
        return txredisapi.lazyConnectionPool(
            host=target.host, port=target.port, ssl_context_factory=tls, **common
        )

    def _sentinel_pool(self, common: dict[str, Any]) -> Any:
        target = self.target
        if self._sentinel is not None:
            self._sentinel.disconnect().addErrback(lambda _: None)
        sentinel = txredisapi.Sentinel(
            list(target.sentinels),
            password=target.sentinel_password,
            username=target.sentinel_username,
            connectTimeout=self._timeout,
            replyTimeout=self._timeout,
        )
        # Sentinels answer in milliseconds; waiting txredisapi's 10 s would
        # outlast every command's deadline, hiding why they fail.
        sentinel.discovery_timeout = self._timeout * 0.6
        discover = sentinel.discover_master

        def discover_master(service: str) -> Deferred[Any]:
            found: Deferred[Any] = discover(service)
            return found.addErrback(self._discovery_failed)

        sentinel.discover_master = discover_master
        self._sentinel = sentinel
        return sentinel.master_for(target.service, factory_class=SentinelMasterFactory, **common)

    def _discovery_failed(self, failure: Failure) -> Failure:
        nodes = ", ".join(f"{h}:{p}" for h, p in self.target.sentinels)
        reason = (
            f"no Sentinel of {nodes} names a master for service {self.target.service!r} "
            f"within {self._timeout * 0.6:g} s (unknown service, master down, or "
            "Sentinels unreachable)"
        )
        self._refuse(reason)
        return failure

    def _refuse(self, reason: str) -> None:
        watchers, self._refusal_watchers = self._refusal_watchers, []
        for watcher in watchers:
            watcher(reason)
        first = self._refusal is None
        now = self._clock.seconds()  # type: ignore[misc]  # zope.interface: IReactorTime's methods lack self
        self._refusal = (now, reason)
        if not self.health.failed(reason) and first:
            # Already down for another reason (the connection dropped when Redis
            # restarted with a new password): the refusal is the news, once.
            self.log.error("Redis is still unavailable: {reason}", reason=reason)

    def _setup_failed(self, message: str) -> None:
        """A connection could not be set up; if Redis refused it, say so now."""
        found = _SETUP_ERROR.search(message)
        if found is None or not _REDIS_REPLY.match(found.group(3)):
            return  # the connection dropped: the commands' own errors report it
        step, database, reply = found.groups()
        reply = " ".join(reply.split())
        if self._password:
            reply = reply.replace(self._password, "***")
        user = f" of user {self.target.username!r}" if self.target.username else ""
        if step == "auth":
            reason = f"Redis refused the password{user} ({reply})"
        elif reply.startswith("NOAUTH"):
            reason = f"Redis wants a password and rq_password is not set ({reply})"
        elif step == "check role":
            reason = (f"Redis refused ROLE, which following Sentinel needs ({reply}); "
                      "the user's ACL rule needs +role")
        else:
            reason = f"Redis refused to select database {database} ({reply})"
        self._refuse(reason)

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
            old = self._pool
            old.disconnect().addErrback(lambda _: None)
            self._pool = self._new_pool()
        return self._pool

    async def reachable(self, reactor: Any) -> None:
        """Fail at once when nothing listens where Redis should be.

        The pool reconnects quietly, so a refused connection would only show as
        a command's timeout; at start-up the admin is better told now that the
        connection was refused.  Behind Sentinel the Sentinels are asked by the
        pool itself: nothing to probe here.
        """
        target = self.target
        if target.kind == "unix" and target.path:
            endpoint: Any = UNIXClientEndpoint(  # type: ignore[no-untyped-call]  # Twisted: unannotated
                reactor, target.path, timeout=self._timeout)
        elif target.kind == "tcp" and target.host and target.port is not None:
            endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=self._timeout)
        else:
            return
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        factory.noisy = False  # no "Starting factory" lines for a probe
        connected = await endpoint.connect(factory)
        connected.transport.loseConnection()

    def ping(self) -> Deferred[Any]:
        """PING, failing as soon as Redis refuses the connection's AUTH or SELECT
        rather than when the command times out: start-up must not wait for it."""
        answer: Deferred[Any] = Deferred()

        def settle(result: Any) -> None:
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)

        def refused(reason: str) -> None:
            if not answer.called:
                answer.errback(RedisRefusedError(reason))

        self._refusal_watchers.append(refused)
        self.command("PING").addBoth(settle)

        def forget(result: Any) -> Any:
            if refused in self._refusal_watchers:
                self._refusal_watchers.remove(refused)
            return result

        return answer.addBoth(forget)

    def stop(self) -> Deferred[None]:
        pool, self._pool = self._pool, None
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            sentinel.disconnect().addErrback(lambda _: None)
        if pool is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        disconnected: Deferred[None] = pool.disconnect()
        return disconnected

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        return self._call("eval", script, list(keys), list(args))

    def eval_encoded(self, script: str, keys: Encoded, args: Encoded) -> Deferred[Any]:
        """EVALSHA (EVAL if Redis does not know the script) of arguments framed ahead of time."""
        head = encode(("EVALSHA", _sha1(script), keys.count))
        d = self._call("execute_command", Framed(command(head, keys, args)))

        def unknown_script(failure: Failure) -> Any:
            if not (isinstance(failure.value, txredisapi.ResponseError)
                    and str(failure.value).startswith("NOSCRIPT")):
                return failure
            head = encode(("EVAL", script, keys.count))
            return self._call("execute_command", Framed(command(head, keys, args)))

        return d.addErrback(unknown_script)

    def command(self, name: str, *args: Any) -> Deferred[Any]:
        return self._call("execute_command", name, *args)

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        if self._pool is None:
            raise RuntimeError("RedisGateway used before start()")
        started = self._clock.seconds()  # type: ignore[misc]  # zope.interface: IReactorTime's methods lack self
        d: Deferred[Any] = getattr(self._live_pool(), method)(*args)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._ok, self._failed, errbackArgs=(started,))
        return d

    def _drop_connections(self) -> None:
        """The master was demoted under us: reconnect, asking the Sentinels anew."""
        factory = getattr(self._pool, "_factory", None)
        for connection in list(getattr(factory, "pool", ())):
            connection.transport.loseConnection()

    def _ok(self, result: Any) -> Any:
        self._refusal = None
        self.health.succeeded()
        return result

    def _failed(self, failure: Any, started: float | None = None) -> Any:
        # A script error (ResponseError) means Redis answered: it is up.
        if failure.check(txredisapi.ResponseError):
            self._refusal = None
            self.health.succeeded()
            if self._sentinel is not None and str(failure.value).startswith("READONLY"):
                self._drop_connections()
        elif (
            self._refusal is not None
            and (started is None or self._refusal[0] >= started)
            and not failure.check(defer.CancelledError)  # the caller's own cancel stays one
        ):
            # Refused while this command waited for a connection: that is why it failed.
            reason = self._refusal[1]
            self.health.failed(reason, started=started)
            raise RedisRefusedError(reason) from None
        elif failure.check(TimeoutError, defer.TimeoutError):
            # addTimeout's own text is "(5.0, 'Deferred')"; say what happened.
            reason = f"no reply within {self._timeout:g} s"
            self.health.failed(reason, started=started)
            raise RedisTimeoutError(reason) from None
        else:
            self.health.failed(failure, started=started)
        return failure
