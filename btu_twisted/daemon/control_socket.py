"""The Unix socket the BTU app talks to, created fresh and removed cleanly.

The Rust daemon deleted whatever was at ``socket_path`` at start-up, so a
second daemon silently stole the first one's socket.  Here a live socket (one
that accepts a connection) is never taken over, a file that is not a socket is
never deleted, and only a stale socket (connection refused) is replaced.

Listening uses Twisted's ``unix.Port`` rather than ``UNIXServerEndpoint``:
the endpoint's port unlinks the path unconditionally when it closes, which
deletes a successor's socket if the file was replaced, and fails with the
listening descriptor still open if the file was already removed.  Our port
removes the file only when it is still the socket it bound.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ControlSocketService", "SocketInUseError"]

# How long the start-up liveness probe may block the (not yet serving) reactor.
LIVENESS_TIMEOUT = 1.0
# Connections queue here while the reactor is busy with something else.  The
# BTU client's blocking connect just waits for room, but a non-blocking client
# is refused with EAGAIN once the backlog is full; Twisted's default of 50 is
# small for a burst of web workers.  The kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG = 1024


class SocketInUseError(Exception):
    """``socket_path`` cannot be taken over: a live daemon, or not a socket."""


def _socket_is_live(path: str, timeout: float = LIVENESS_TIMEOUT) -> bool:
    """True if something accepts connections on ``path``.

    A blocking connect with a short timeout, done once before serving: a Unix
    connect either succeeds or is refused at once; it only waits when the
    listener's backlog is full, which means it is alive.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (TimeoutError, BlockingIOError):
        return True
    except OSError as error:
        raise SocketInUseError(
            f"cannot tell whether socket {path} is in use: {error.strerror or error}"
        ) from None
    finally:
        probe.close()
    return True


class _OwnedUNIXPort(unix.Port):
    """A listening port that removes its socket file only if it is still its own."""

    log = Logger()
    _created: socket.socket | None = None

    def createInternetSocket(self) -> socket.socket:
        # Twisted's tcp.Port and unix.Port are unannotated (here and below).
        created: socket.socket = super().createInternetSocket()  # type: ignore[no-untyped-call]
        self._created = created
        return created

    def startListening(self) -> None:
        try:
            super().startListening()  # type: ignore[no-untyped-call]
        except BaseException:
            # unix.Port leaves the socket of a failed bind open (and the
            # factory started): undo both so a failed start leaks nothing.
            if self._created is not None and not self.connected:
                self._created.close()
                if self.factory is not None:
                    self.factory.doStop()  # type: ignore[no-untyped-call]
            raise
        # Identify the file we bound, so that stopping never removes another's.
        try:
            info = os.lstat(self._bindPath)
        except OSError:
            self.identity: tuple[int, int] | None = None
        else:
            self.identity = (info.st_dev, info.st_ino)

    def _still_ours(self) -> bool:
        try:
            info = os.lstat(self._bindPath)
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == self.identity

    def connectionLost(self, reason: Failure) -> None:
        path = os.fsdecode(self._bindPath)
        if self._still_ours():
            try:
                os.unlink(self._bindPath)
            except OSError as error:
                self.log.warn("could not remove socket {path}: {error}", path=path, error=error)
        else:
            self.log.warn(
                "socket {path} was removed or replaced while we listened; left as it is",
                path=path,
            )
        # Skip unix.Port.connectionLost (its unconditional unlink); close the socket.
        tcp.Port.connectionLost(self, reason)  # type: ignore[no-untyped-call]


class ControlSocketService(Service):
    """Listen on ``path`` with ``factory`` between startService and stopService."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        path: str,
        factory: Factory,
        mode: int = 0o660,
        group: str | None = None,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self._reactor = reactor
        self.path = path
        self._factory = factory
        self._mode = mode
        self._group = group
        self._backlog = backlog
        self._port: _OwnedUNIXPort | None = None

    def startService(self) -> Deferred[None]:
        """Claim the path, listen, set mode and group.

        Raises SocketInUseError at once when the path is taken; a failure to
        listen (permissions, ...) errbacks the Deferred with an OSError.
        """
        self._claim_path()
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's Service: unannotated
        started: Deferred[None] = maybeDeferred(self._listen)
        started.addErrback(self._listen_failed)
        return started

    def stopService(self) -> Deferred[None]:
        """Stop listening; the socket file goes with it (if still ours)."""
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service: unannotated
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped: Deferred[None] = maybeDeferred(port.stopListening)
        stopped.addCallback(lambda _: None)
        return stopped

    def _claim_path(self) -> None:
        """Make sure nothing but a stale socket of ours stands at the path."""
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(
                errno.ENOENT, f"socket directory {parent} does not exist", parent
            )
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise SocketInUseError(
                f"{self.path} exists and is not a socket; remove it or choose another socket_path"
            )
        if _socket_is_live(self.path):
            raise SocketInUseError(f"socket {self.path} is in use by a running daemon")
        self.log.info("removing stale socket {path}", path=self.path)
        os.unlink(self.path)

    def _listen(self) -> None:
        port = _OwnedUNIXPort(
            # unix.Port takes the path as bytes (as it binds it).
            os.fsencode(self.path),
            self._factory,  # type: ignore[arg-type]  # zope's @implementer is invisible to mypy
            self._backlog, self._mode, self._reactor, wantPID=0,
        )
        port.startListening()  # binds, chmods to mode (umask plays no part), listens
        self._port = port
        if self._group is not None:
            self._chown(self._group)
        self.log.info(
            "listening on {path} (mode {mode:o})", path=self.path, mode=self._mode
        )

    def _chown(self, group: str) -> None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            self.log.warn(
                "group {group} does not exist; socket {path} keeps the daemon's group",
                group=group,
                path=self.path,
            )
            return
        try:
            os.chown(self.path, -1, gid)
        except OSError as error:
            self.log.warn(
                "cannot give socket {path} to group {group}: {error}",
                path=self.path,
                group=group,
                error=error.strerror or error,
            )

    def _listen_failed(self, failure: Failure) -> Failure:
        self.running = 0
        error = failure.value
        if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
            # Hand the caller the plain OSError ("[Errno 13] Permission denied").
            raise error.socketError from None
        return failure
