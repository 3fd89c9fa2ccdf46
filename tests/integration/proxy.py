"""A controllable TCP forwarder, to simulate MariaDB, Redis or site outages.

The daemon under test is pointed at the proxy's port instead of the real
server's, so an outage can be switched on and off without touching the real
MariaDB or Redis the whole machine shares::

    proxy = TcpProxy(reactor, 6379)
    port = await proxy.start()          # 127.0.0.1:<port> now forwards to :6379
    await proxy.pause()                 # every connection is cut; new ones fail
    proxy.resume()                      # new connections are forwarded again
    await proxy.stop()

What a paused proxy does to new connections is its ``mode``:

- ``"drop"`` (default): accept and close at once, as a server that crashes at
  each connection would; clients see a reset/EOF right away.
- ``"refuse"``: stop listening, so connecting is refused (a stopped server).
  ``resume()`` listens again on the same port.
- ``"hold"``: accept and say nothing, forwarding nothing (a network partition
  or a hung server); clients hit their own timeouts.  ``resume()`` cuts these.
- ``"mute"``: keep forwarding what clients send, but throw the server's
  answers away: commands are *executed* and their replies are lost, the case
  that makes "did my write happen?" uncertain.  Existing connections are
  muted too, not cut.  ``resume()`` cuts every connection.

Runs in the test's reactor; forwarding uses producer/consumer flow control so
a fast sender cannot fill memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

MODES = ("drop", "refuse", "hold", "mute")


class _Upstream(Protocol):
    """The proxy's connection to the real server."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        proxy = self.downstream.proxy
        proxy.bytes_up_to_client += len(data)
        if proxy.paused and proxy.mode == "mute":
            return
        self.downstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.downstream.upstream_lost()


class _Downstream(Protocol):
    """A client's connection to the proxy."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.upstream: _Upstream | None = None
        self._pending: list[bytes] = []
        self._closed = False
        self.held = False

    def connectionMade(self) -> None:
        proxy = self.proxy
        proxy.accepted += 1
        proxy.connections.add(self)
        if proxy.paused and proxy.mode == "drop":
            self.transport.abortConnection()
            return
        if proxy.paused and proxy.mode == "hold":
            self.held = True
            return
        # Read nothing until the server side is there (flow control).
        self.transport.pauseProducing()
        endpoint = TCP4ClientEndpoint(proxy.reactor, proxy.target_host, proxy.target_port,
                                      timeout=5)
        d = endpoint.connect(_UpstreamFactory(self))
        d.addErrback(lambda _: self.transport.abortConnection())

    def upstream_ready(self, upstream: _Upstream) -> None:
        if self._closed:
            upstream.transport.abortConnection()
            return
        self.upstream = upstream
        # Each side throttles the other: a full write buffer pauses the reader.
        upstream.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(upstream.transport, True)
        for chunk in self._pending:
            upstream.transport.write(chunk)
        self._pending = []
        self.transport.resumeProducing()

    def upstream_lost(self) -> None:
        self.upstream = None
        if not self._closed:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.proxy.bytes_from_client += len(data)
        if self.held:
            return
        if self.upstream is None:
            self._pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self.proxy.connections.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        self.proxy._connection_gone()

    def cut(self) -> None:
        """Abort both sides now."""
        if self.upstream is not None:
            self.upstream.transport.abortConnection()
        self.transport.abortConnection()


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.downstream)


class _DownstreamFactory(Factory):
    noisy = False

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Downstream:
        return _Downstream(self.proxy)


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` until paused."""

    def __init__(self, reactor: Any, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.paused = False
        self.mode = "drop"
        self.connections: set[_Downstream] = set()
        self.accepted = 0
        self.bytes_from_client = 0
        self.bytes_up_to_client = 0
        self._listening: Any = None
        self._gone_waiters: list[Deferred[None]] = []

    async def start(self) -> int:
        """Listen on an ephemeral port of 127.0.0.1; returns the port."""
        self._listen()
        return self.port

    def _listen(self) -> None:
        self._listening = self.reactor.listenTCP(
            self.port, _DownstreamFactory(self), interface="127.0.0.1"
        )
        self.port = self._listening.getHost().port

    async def _stop_listening(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            await defer.maybeDeferred(listening.stopListening)

    async def pause(self, mode: str = "drop") -> None:
        """Start an outage: cut current connections (except in ``mute`` mode)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.paused = True
        self.mode = mode
        if mode == "refuse":
            await self._stop_listening()
        if mode != "mute":
            await self.cut_all()

    def resume(self) -> None:
        """End the outage; held and muted connections are cut so clients reconnect."""
        was = self.mode if self.paused else None
        self.paused = False
        if was == "refuse":
            self._listen()
        if was in ("hold", "mute"):
            for conn in list(self.connections):
                conn.cut()

    async def cut_all(self) -> None:
        """Abort every open connection and wait until they are all gone."""
        conns = list(self.connections)
        if not conns:
            return
        waiter: Deferred[None] = Deferred()
        self._gone_waiters.append(waiter)
        for conn in conns:
            conn.cut()
        await waiter

    def _connection_gone(self) -> None:
        if not self.connections:
            waiters, self._gone_waiters = self._gone_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    async def stop(self) -> None:
        """Stop listening and cut everything (test cleanup)."""
        self.paused = True
        self.mode = "drop"
        await self._stop_listening()
        await self.cut_all()
