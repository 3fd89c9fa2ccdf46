"""How the gateway sets txredisapi up: quieter logs, pre-framed commands,
a Sentinel master protocol that waits for AUTH, and TLS options.

Apart from :mod:`btu_twisted.store.gateway` because these adapt txredisapi and
Twisted to what the gateway needs, once per pool, while the gateway itself is
about deadlines and the up/down state of each command.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from btu_twisted.redis_target import RedisTarget

__all__ = [
    "Framed", "SentinelMasterFactory", "passing_framed", "quiet_txredisapi", "tls_options",
]


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


class Framed(bytes):
    """A whole command already framed: sent as it is."""


class PassFramed:
    """Mixed into txredisapi's protocol (plain, or Sentinel's master protocol):
    a command framed ahead of time goes through as it is."""

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if len(args) == 1 and isinstance(args[0], Framed):
            return args[0]
        return super()._build_command(*args, **kwargs)  # type: ignore[misc, no-any-return]


_FRAMED_PROTOCOLS: dict[type, type] = {}


def passing_framed(protocol: type) -> type:
    """``protocol`` with :class:`PassFramed` in front (made once per class)."""
    if issubclass(protocol, PassFramed):
        return protocol
    made = _FRAMED_PROTOCOLS.get(protocol)
    if made is None:
        made = _FRAMED_PROTOCOLS[protocol] = type(
            f"Framed{protocol.__name__}", (PassFramed, protocol), {}
        )
    return made


class SentinelMasterProtocol(txredisapi.SentinelRedisProtocol):  # type: ignore[misc]  # untyped
    """txredisapi's Sentinel master protocol, waiting for AUTH before asking ROLE.

    The original sends AUTH and ROLE back to back and ignores AUTH's answer:
    with a wrong password ROLE fails too, and the connection is never ready
    nor closed.  Here a refusal is reported the way txredisapi reports one on
    a plain connection, and the connection closed.
    """

    @defer.inlineCallbacks
    def connectionMade(self) -> Any:
        step = "auth"
        try:
            if self.password is not None:
                reply = yield self.auth(self.password, self.username)
                if isinstance(reply, Exception):
                    raise reply
            step = "check role"
            role = yield self.role()
            if isinstance(role, Exception):
                raise role
        except Exception as e:
            self.transport.loseConnection()
            self.factory.connectionError(f"Redis error: could not {step}: {e}")
            return None
        if self.factory.is_master and role[0] != b"master" and role[0] != "master":
            self.transport.loseConnection()  # demoted meanwhile: ask the Sentinels again
            return None
        yield txredisapi.RedisProtocol.connectionMade(self)
        return None


class SentinelMasterFactory(txredisapi.SentinelConnectionFactory):  # type: ignore[misc]  # untyped
    protocol = SentinelMasterProtocol


def tls_options(target: RedisTarget) -> Any:
    """Certificate and host name checked against ``rq_tls_ca_file`` (else the system's CAs)."""
    from twisted.internet import ssl

    trust = None
    if target.ca_file:
        with open(target.ca_file, "rb") as stream:
            pem = stream.read()
        marker = b"-----END CERTIFICATE-----"
        blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
        trust = ssl.trustRootFromCertificates(  # type: ignore[no-untyped-call]  # Twisted: unannotated
            [ssl.Certificate.loadPEM(b) for b in blocks])
    client = None
    if target.cert_file and target.key_file:
        with open(target.cert_file, encoding="ascii") as cert, \
                open(target.key_file, encoding="ascii") as key:
            client = ssl.PrivateCertificate.loadPEM(  # type: ignore[no-untyped-call]  # Twisted: unannotated
                cert.read() + "\n" + key.read())
    return ssl.optionsForClientTLS(str(target.host), trustRoot=trust, clientCertificate=client)
