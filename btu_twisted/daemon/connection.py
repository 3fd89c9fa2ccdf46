"""Who is on the other end of a control connection, as an operator needs to know it."""

from __future__ import annotations

import socket
import struct

from twisted.internet.interfaces import IAddress


def _describe_peer(transport: object, serial: int) -> str:
    """Who is connected: the peer's pid/uid via SO_PEERCRED when available.

    A Unix socket peer has no address worth logging; its credentials are what
    an operator needs to find a misbehaving client.
    """
    try:
        handle = transport.getHandle()  # type: ignore[attr-defined]
        raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        return f"#{serial} pid={pid} uid={uid} gid={gid}"
    except Exception:
        try:
            peer: IAddress = transport.getPeer()  # type: ignore[attr-defined]
            return f"#{serial} {peer}"
        except Exception:
            return f"#{serial}"
