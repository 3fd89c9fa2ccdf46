"""What a control connection needs of its transport and clock, and who is on the other end.

Twisted describes transports and clocks with zope interfaces, which mypy
cannot check (their methods have no ``self``).  These Protocols name, in
typing's terms, exactly what the control protocol calls, so its calls are
checked; Twisted's Unix transports and reactors (and the test doubles
StringTransport and task.Clock) have all of it.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol, runtime_checkable

__all__ = ["Connection", "Producer", "describe_peer"]


class Producer(Protocol):
    """What a streaming producer answers (IPushProducer, in typing's terms)."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class Connection(Protocol):
    """A connected stream transport, as the control protocol drives it."""

    @property
    def disconnecting(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: Producer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def getPeer(self) -> object: ...


@runtime_checkable
class _OnASocket(Protocol):
    """A transport over a real socket (a test double has none)."""

    def getHandle(self) -> socket.socket: ...


def describe_peer(transport: Connection, serial: int) -> str:
    """Who is connected: the peer's pid/uid via SO_PEERCRED when available.

    A Unix socket peer has no address worth logging; its credentials are what
    an operator needs to find a misbehaving client.
    """
    if isinstance(transport, _OnASocket):
        try:
            handle = transport.getHandle()
            raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
            return f"#{serial} pid={pid} uid={uid} gid={gid}"
        except Exception:
            pass
    try:
        return f"#{serial} {transport.getPeer()}"
    except Exception:
        return f"#{serial}"
