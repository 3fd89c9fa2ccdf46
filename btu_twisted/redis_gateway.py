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

And one thing it does slowly: framing a command of many thousand arguments
(a burst's claims) in Python when it is sent.  :meth:`RedisGateway.eval_encoded`
sends a script call whose arguments were framed ahead of time
(:mod:`btu_twisted.resp`), through txredisapi's own reply and timeout handling.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Protocol, Sequence

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from btu_twisted.health import Dependency
from btu_twisted.resp import Encoded, command, encode

__all__ = ["RedisCommands", "RedisGateway", "RedisRefusedError", "quiet_txredisapi"]

# "Redis error: could not auth: WRONGPASS ..." / "... could not set dbid=3: NOAUTH ...",
# as txredisapi words a refused AUTH or SELECT.
_SETUP_ERROR = re.compile(r"could not (auth|set dbid=(\S*)): (.*)", re.DOTALL)
# A Redis error reply starts with its code in capitals ("ERR", "WRONGPASS", "NOAUTH");
# "Lost connection" and the like are the connection failing, not Redis refusing.
_REDIS_REPLY = re.compile(r"[A-Z][A-Z_]+ ")


class RedisRefusedError(Exception):
    """Redis answered but refused the connection's AUTH or SELECT; ``str()`` says which."""


class _DebugOnlyLogger(Logger):
    """A Logger whose every event, whatever level it was emitted at, is a debug event."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        super().emit(LogLevel.debug, format, **kwargs)


class _LegacyLogAsDebug:
    """Stands in for ``twisted.python.log`` inside txredisapi: its lines become debug events."""

    def __init__(self) -> None:
        self._log = _DebugOnlyLogger(namespace="txredisapi")

    def msg(self, *message: object, **kwargs: object) -> None:
        self._log.debug("txredisapi: {text}", text=" ".join(str(m) for m in message))

    def err(self, _stuff: object = None, _why: object = None, **kwargs: object) -> None:
        if isinstance(_stuff, Failure):
            self._log.failure("txredisapi: {why}", _stuff, why=_why)
        else:
            self._log.debug("txredisapi: {why} {what}", why=_why, what=_stuff)

    def __getattr__(self, name: str) -> Any:
        return getattr(legacy_log, name)


class _QuietClientService(ClientService):
    """txredisapi's connection slots, with "Scheduling retry N to connect" at debug level."""

    _log = _DebugOnlyLogger(namespace="txredisapi.ClientService")


def quiet_txredisapi() -> None:
    """Send txredisapi's own log lines to debug level; idempotent.

    It logs through the legacy ``twisted.python.log`` module it imported, and
    reconnects through Twisted's ``ClientService``, which logs each retry at
    info.  Both names are looked up in txredisapi's module at call time, so
    replacing them there affects txredisapi only, not other users of Twisted.
    """
    if getattr(txredisapi, "log", None) is legacy_log:
        txredisapi.log = _LegacyLogAsDebug()
    if getattr(txredisapi, "ClientService", None) is ClientService:
        txredisapi.ClientService = _QuietClientService


class _Framed(bytes):
    """A whole command already framed: sent as it is."""


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol, passing a command framed ahead of time through."""

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if len(args) == 1 and isinstance(args[0], _Framed):
            return args[0]
        return super()._build_command(*args, **kwargs)


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
        self._password = password
        self._pool: Any = None
        # (when, reason) of the last AUTH/SELECT that Redis refused, until a command succeeds.
        self._refusal: tuple[float, str] | None = None

    def start(self) -> None:
        """Connect lazily: start-up must not wait for (or fail on) Redis."""
        quiet_txredisapi()
        self._pool = self._new_pool()

    def _new_pool(self) -> Any:
        pool = txredisapi.lazyConnectionPool(**self._params)
        factory = getattr(pool, "_factory", None)
        # Connections are made on later reactor turns, so they all get it.
        if factory is not None:
            factory.protocol = _Protocol
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

    def _setup_failed(self, message: str) -> None:
        """A connection could not be set up; if Redis refused it, say so now."""
        found = _SETUP_ERROR.search(message)
        if found is None or not _REDIS_REPLY.match(found.group(3)):
            return  # the connection dropped: the commands' own errors report it
        step, database, reply = found.groups()
        reply = " ".join(reply.split())
        if self._password:
            reply = reply.replace(self._password, "***")
        if step == "auth":
            reason = f"Redis refused the password ({reply})"
        elif reply.startswith("NOAUTH"):
            reason = f"Redis wants a password and rq_password is not set ({reply})"
        else:
            reason = f"Redis refused to select database {database} ({reply})"
        first = self._refusal is None
        self._refusal = (self._clock.seconds(), reason)
        if not self.health.failed(reason) and first:
            # Already down for another reason (the connection dropped when Redis
            # restarted with a new password): the refusal is the news, once.
            self.log.error("Redis is still unavailable: {reason}", reason=reason)

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

    def eval_encoded(self, script: str, keys: Encoded, args: Encoded) -> Deferred[Any]:
        """EVALSHA (EVAL if Redis does not know the script) of arguments framed ahead of time."""
        head = encode(("EVALSHA", _sha1(script), keys.count))
        d = self._call("execute_command", _Framed(command(head, keys, args)))

        def unknown_script(failure: Failure) -> Any:
            if not (failure.check(txredisapi.ResponseError)
                    and str(failure.value).startswith("NOSCRIPT")):
                return failure
            head = encode(("EVAL", script, keys.count))
            return self._call("execute_command", _Framed(command(head, keys, args)))

        return d.addErrback(unknown_script)

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
        self._refusal = None
        self.health.succeeded()
        return result

    def _failed(self, failure: Any, started: float | None = None) -> Any:
        # A script error (ResponseError) means Redis answered: it is up.
        if failure.check(txredisapi.ResponseError):
            self._refusal = None
            self.health.succeeded()
        elif (
            self._refusal is not None
            and (started is None or self._refusal[0] >= started)
            and not failure.check(defer.CancelledError)  # the caller's own cancel stays one
        ):
            # Refused while this command waited for a connection: that is why it failed.
            reason = self._refusal[1]
            self.health.failed(reason, started=started)
            return Failure(RedisRefusedError(reason))
        elif failure.check(TimeoutError, defer.TimeoutError):
            # addTimeout's own text is "(5.0, 'Deferred')"; say what happened.
            reason = f"no reply within {self._timeout:g} s"
            self.health.failed(reason, started=started)
        else:
            self.health.failed(failure, started=started)
        return failure
