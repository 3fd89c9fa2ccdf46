"""Asking every site's socket at once, for :mod:`bench.hosting`."""

from __future__ import annotations

import selectors
import socket
import time

__all__ = ["PING", "ping_all"]

PING = b'{"request_type": "ping", "request_content": null}\n'


def ping_all(paths: dict[str, str], wait: float = 1.0, request: bytes = PING,
             answer: bytes = b"pong") -> dict[str, float]:
    """Ping every socket at once (a busy reactor answers each late: pinging one after
    the other would add those waits up); when each answered ``pong`` (or sent
    ``answer`` to ``request``)."""
    selector = selectors.DefaultSelector()
    answered: dict[str, float] = {}
    for site, path in paths.items():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
            s.send(request)
        except OSError:
            s.close()  # not there yet, or its backlog is full: the next sweep
            continue
        selector.register(s, selectors.EVENT_READ, site)
    end = time.time() + wait
    while selector.get_map() and time.time() < end:
        for key, _ in selector.select(timeout=max(0.0, end - time.time())):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                if s.recv(256).startswith(answer):
                    answered[key.data] = time.time()
            except OSError:
                pass
            selector.unregister(s)
            s.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return answered
