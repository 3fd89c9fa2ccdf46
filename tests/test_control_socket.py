"""Tests for btu_twisted.daemon.control_socket against the real reactor and real sockets.

Socket paths live in a short directory under /tmp: AF_UNIX paths are limited
to about 107 bytes, more than trial's _trial_temp paths can promise.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from btu_twisted.daemon.control_socket import ControlSocketService, SocketInUseError
from btu_twisted.daemon.protocol import ControlFactory, ControlProtocol
from tests.test_protocol import FakeControl

reactor: Any = _reactor
PING = json.dumps({"request_type": "ping", "request_content": None}).encode()


def btu_client(path: str, payload: bytes) -> bytes:
    """The BTU app's client, byte for byte (COMPAT.md 1): send, sleep 0.5 s, recv(2048)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    try:
        client.connect(path)
        client.send(payload)
        time.sleep(0.5)
        return client.recv(2048)
    finally:
        client.close()


class TrackingFactory(ControlFactory):
    """A ControlFactory that knows its open connections, so tests can wait them out."""

    def __init__(self) -> None:
        super().__init__(FakeControl(), reactor)
        self.open: set[ControlProtocol] = set()
        self._waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = super().buildProtocol(addr)
        self.open.add(protocol)
        lost = protocol.connectionLost

        def connectionLost(reason: Failure | None = None) -> None:
            lost(reason)
            self.open.discard(protocol)
            if not self.open:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        return protocol

    def all_closed(self) -> Deferred[None]:
        """Close what is still open; fire once every server side has seen connectionLost."""
        if not self.open:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        for protocol in list(self.open):
            protocol.transport.loseConnection()  # type: ignore[union-attr]
        return waiter


class PingClient(Protocol):
    """Sends one ping and hangs up once the reply line is in."""

    def __init__(self) -> None:
        self.reply: Deferred[bytes] = Deferred()
        self._received = b""

    def connectionMade(self) -> None:
        self.transport.write(PING)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if self._received.endswith(b"\n"):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reply.callback(self._received)


class SilentPipeliner(Protocol):
    """Sends many requests at once and reads nothing until told to."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]  # no reading
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def buffered(protocol: ControlProtocol) -> int:
    """Bytes the server side holds for its client (Twisted's write buffer)."""
    transport: Any = protocol.transport
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)


class ControlSocketTests(TestCase):
    """Start, serve and stop the control socket in a temporary directory."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(dir="/tmp", prefix="btu-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "btu.sock")
        self.factory = TrackingFactory()
        self.services: list[ControlSocketService] = []

    async def tearDown(self) -> None:
        for service in self.services:
            if service.running:
                await service.stopService()
        await self.factory.all_closed()

    def service(self, **options: Any) -> ControlSocketService:
        service = ControlSocketService(reactor, self.path, self.factory, **options)
        self.services.append(service)
        return service

    async def start(self, **options: Any) -> ControlSocketService:
        service = self.service(**options)
        await service.startService()
        return service

    async def test_btu_client_pattern(self) -> None:
        """The BTU app's exact client gets ``pong\\n`` from its single recv(2048)."""
        await self.start()
        reply = await deferToThread(btu_client, self.path, PING)
        self.assertEqual(reply, b"pong\n")

    async def test_many_clients_at_once(self) -> None:
        """200 clients connected at the same time all get pong."""
        await self.start()
        endpoint = UNIXClientEndpoint(reactor, self.path)
        clients = [PingClient() for _ in range(200)]
        await gatherResults([connectProtocol(endpoint, client) for client in clients])
        replies = await gatherResults([client.reply for client in clients])
        self.assertEqual(replies, [b"pong\n"] * 200)
        await self.factory.all_closed()

    async def test_many_btu_clients_at_once(self) -> None:
        """200 BTU clients in parallel threads all get pong, in about one client's time."""
        await self.start()

        def run_all() -> list[bytes]:
            with ThreadPoolExecutor(max_workers=200) as pool:
                return list(pool.map(btu_client, [self.path] * 200, [PING] * 200))

        began = time.monotonic()
        replies = await deferToThread(run_all)
        self.assertEqual(replies, [b"pong\n"] * 200)
        self.assertLess(time.monotonic() - began, 4.5)  # not 200 x 0.5 s one after another

    async def test_stale_socket_replaced(self) -> None:
        """A socket file nobody listens on is removed and replaced."""
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()
        with capturedLogs() as events:
            await self.start()
        self.assertTrue(any("stale" in e.get("log_format", "") for e in events))
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))
        self.assertEqual(await deferToThread(btu_client, self.path, PING), b"pong\n")

    def test_live_socket_not_stolen(self) -> None:
        """A socket that accepts connections is left alone and SocketInUseError raised."""
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(self.path)
        live.listen(1)
        inode = os.lstat(self.path).st_ino
        service = self.service()
        error = self.assertRaises(SocketInUseError, service.startService)
        self.assertEqual(str(error), f"socket {self.path} is in use by a running daemon")
        self.assertEqual(os.lstat(self.path).st_ino, inode)
        self.assertFalse(service.running)

    async def test_second_daemon_refused(self) -> None:
        """A second service on the same path is refused; the first keeps serving."""
        await self.start()
        second = self.service()
        self.assertRaises(SocketInUseError, second.startService)
        self.assertEqual(await deferToThread(btu_client, self.path, PING), b"pong\n")

    def test_regular_file_kept(self) -> None:
        """A regular file at the path is not deleted."""
        with open(self.path, "w") as file:
            file.write("precious")
        error = self.assertRaises(SocketInUseError, self.service().startService)
        self.assertIn("is not a socket", str(error))
        with open(self.path) as file:
            self.assertEqual(file.read(), "precious")

    def test_directory_kept(self) -> None:
        """A directory at the path is not deleted either."""
        os.mkdir(self.path)
        self.assertRaises(SocketInUseError, self.service().startService)
        self.assertTrue(os.path.isdir(self.path))

    def test_symlink_kept(self) -> None:
        """A symlink at the path (even to a stale socket) is not followed or deleted."""
        target = os.path.join(self.directory, "target.sock")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(target)
        stale.close()
        os.symlink(target, self.path)
        self.assertRaises(SocketInUseError, self.service().startService)
        self.assertTrue(os.path.islink(self.path))

    def test_missing_directory(self) -> None:
        """A missing socket directory is a clear error, not created behind the admin's back."""
        self.path = os.path.join(self.directory, "missing", "btu.sock")
        error = self.assertRaises(FileNotFoundError, self.service().startService)
        self.assertIn("socket directory", str(error))
        self.assertFalse(os.path.exists(os.path.dirname(self.path)))

    async def test_mode_0660(self) -> None:
        """The default mode 0660 is applied whatever the umask."""
        old_umask = os.umask(0o077)
        try:
            await self.start()
        finally:
            os.umask(old_umask)
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o660)

    async def test_mode_0600(self) -> None:
        """A configured mode is applied."""
        await self.start(mode=0o600)
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o600)

    async def test_group_applied(self) -> None:
        """An existing group becomes the socket's group."""
        group = grp.getgrgid(os.getgid()).gr_name
        await self.start(group=group)
        self.assertEqual(os.lstat(self.path).st_gid, os.getgid())

    async def test_missing_group_warns(self) -> None:
        """A missing group is a warning naming it; the socket still serves."""
        with capturedLogs() as events:
            await self.start(group="btu-no-such-group")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([e["group"] for e in warnings], ["btu-no-such-group"])
        self.assertEqual(await deferToThread(btu_client, self.path, PING), b"pong\n")

    async def test_stop_removes_file(self) -> None:
        """stopService stops listening and removes the socket file."""
        service = await self.start()
        await service.stopService()
        self.assertFalse(os.path.exists(self.path))
        self.assertFalse(service.running)
        error = self.assertRaises(OSError, btu_client, self.path, PING)
        self.assertIsInstance(error, FileNotFoundError)

    async def test_stop_after_file_removed(self) -> None:
        """A socket file removed by someone else does not break stopService."""
        service = await self.start()
        os.unlink(self.path)
        with capturedLogs():
            await service.stopService()
        self.assertFalse(service.running)

    async def test_stop_keeps_replacement(self) -> None:
        """A file that replaced our socket is not ours to remove."""
        service = await self.start()
        os.unlink(self.path)
        with open(self.path, "w") as file:
            file.write("someone else's")
        with capturedLogs() as events:
            await service.stopService()
        self.assertTrue(os.path.isfile(self.path))
        self.assertTrue(any(e["log_level"] == LogLevel.warn for e in events))

    async def test_restart(self) -> None:
        """A service can be stopped and started again on the same path."""
        service = await self.start()
        await service.stopService()
        await service.startService()
        self.assertEqual(await deferToThread(btu_client, self.path, PING), b"pong\n")

    def test_stop_without_start(self) -> None:
        """Stopping a service that never listened is a no-op."""
        self.successResultOf(self.service().stopService())

    async def test_listen_failure_is_oserror(self) -> None:
        """A bind failure errbacks with the plain OSError and leaves the service stopped."""
        self.path = os.path.join(self.directory, "x" * 120)  # too long for AF_UNIX
        service = self.service()
        with self.assertRaises(OSError):
            await service.startService()
        self.assertFalse(service.running)

    async def test_bad_client_does_not_disturb_others(self) -> None:
        """A garbage sender is answered, closed and logged with its pid; others are served."""
        await self.start()
        with capturedLogs() as events:
            reply = await deferToThread(btu_client, self.path, b"\xff\xfe garbage")
        self.assertEqual(reply, b"Error: request is not a JSON object\n")
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn(f"pid={os.getpid()} uid={os.getuid()}", warning["peer"])
        self.assertEqual(await deferToThread(btu_client, self.path, PING), b"pong\n")

    async def test_unread_replies_stay_bounded(self) -> None:
        """A real client pipelining 5000 status requests (2 KB replies, 10 MB in
        all) without reading: the daemon stops handling them once Twisted's
        write buffer is full, holds at most about that much, and answers every
        one, in order, once the client reads."""
        await self.start()
        control = self.factory.control
        big = {"padding": "x" * 2000}

        def status() -> dict[str, object]:
            control.status_calls += 1
            return {**big, "n": control.status_calls}

        control.status = status  # type: ignore[method-assign]
        count = 5000
        client = SilentPipeliner(b'{"request_type":"status"}' * count)
        await connectProtocol(UNIXClientEndpoint(reactor, self.path), client)
        try:
            await wait_for(lambda: self.factory.open, 10, "no server connection")
            [server] = self.factory.open
            await wait_for(lambda: server._throttled, 30, "reading was not paused")
            handled, held = control.status_calls, buffered(server)
            await deferLater(reactor, 0.3, lambda: None)
            self.assertEqual(control.status_calls, handled, "requests handled while throttled")
            self.assertLess(handled, count // 4)
            self.assertLess(held, 2 * 65536 + 4096)
            client.transport.resumeProducing()  # type: ignore[union-attr]
            await wait_for(lambda: client.received.count(b"\n") >= count, 60,
                           "not every request was answered")
        finally:
            # A server that still holds replies could not finish closing.
            client.transport.abortConnection()  # type: ignore[union-attr]
        lines = bytes(client.received).splitlines()
        self.assertEqual([json.loads(line)["n"] for line in lines], list(range(1, count + 1)))
