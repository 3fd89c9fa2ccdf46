"""Independent landing-time watcher: ``python -m bench.watcher DB QUEUE N DEADLINE [FIRST_DUE]``.

Runs in its own process (so neither scheduler's CPU use or GIL holds it up,
and it reads nothing the schedulers log).  It polls ``LLEN`` of the queue list
about every millisecond; when the length grows from ``a`` to ``b``, the jobs
at positions ``a`` to ``b-1`` are stamped with the time the detecting ``LLEN``
was answered.  That stamp is an upper bound of the landing time, at most one
poll period (about 1.1 ms; ``max_gap_ms`` is the longest poll gap seen from
FIRST_DUE - 0.5 s on) after the job became visible to any worker.  No worker
runs during a benchmark, so list positions never shift, and the ids are read
with one ``LRANGE`` once all have landed.

The watcher must not slow down what it watches: on this 2-core machine it
shares the CPU with the scheduler and Redis.  It polls with a pre-encoded
``LLEN`` on a plain socket and reads no ids while jobs land.  With redis-py
and an ``LRANGE`` per growth it took 33-41 ms of CPU during a 10,000-job
burst of 220-280 ms, and Redis waited for a CPU 6-12 % of that time.

It prints ``ready`` on stdout once connected, then, when N ids have landed or
DEADLINE (unix time) has passed, one JSON line::

    {"landed": [[t, id], ...], "polls": P, "max_gap_ms": G, "started": t0}
"""

from __future__ import annotations

import json
import socket
import sys
import time

import redis

from bench.fixtures import REDIS_HOST, REDIS_PORT

POLL = 0.001


class LengthPoller:
    """``LLEN queue`` over a socket of its own, framed once."""

    def __init__(self, db: int, queue: str) -> None:
        self._sock = socket.create_connection((REDIS_HOST, REDIS_PORT))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        select = str(db).encode()
        name = queue.encode()
        self._sock.sendall(b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(select), select))
        if self._reply() != b"+OK":
            raise RuntimeError(f"watcher: SELECT {db} refused")
        self._llen = b"*2\r\n$4\r\nLLEN\r\n$%d\r\n%s\r\n" % (len(name), name)

    def _reply(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self._sock.recv(64)
            if not chunk:
                raise ConnectionError("watcher: Redis closed the connection")
            data += chunk
        return data[:-2]

    def length(self) -> int:
        self._sock.sendall(self._llen)
        reply = self._reply()
        if not reply.startswith(b":"):
            raise RuntimeError(f"watcher: LLEN answered {reply!r}")
        return int(reply[1:])


def watch(
    db: int, queue: str, expected: int, deadline: float, gaps_from: float
) -> dict[str, object]:
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    poller = LengthPoller(db, queue)
    growth: list[tuple[float, int]] = []  # (when seen, length)
    start = seen = poller.length()  # normally 0: the orchestrator flushed the database
    started = time.time()
    print("ready", flush=True)
    polls = 0
    max_gap = 0.0
    last = time.time()
    while seen - start < expected:
        length = poller.length()
        now = time.time()
        polls += 1
        gap = now - last
        if gap > max_gap and now >= gaps_from:
            # Only gaps while jobs may land matter to the resolution.
            max_gap = gap
        last = now
        if length > seen:
            growth.append((now, length))
            seen = length
        if now > deadline:
            break
        time.sleep(POLL)
    ids = [i.decode() for i in r.lrange(queue, start, seen - 1)] if seen > start else []
    landed: list[tuple[float, str]] = []
    position = start
    for when, length in growth:
        landed.extend((when, job_id) for job_id in ids[position - start:length - start])
        position = length
    return {
        "landed": landed,
        "polls": polls,
        "max_gap_ms": round(max_gap * 1000, 3),
        "started": started,
    }


def main(argv: list[str]) -> None:
    db, queue, expected, deadline = int(argv[0]), argv[1], int(argv[2]), float(argv[3])
    gaps_from = float(argv[4]) if len(argv) > 4 else 0.0
    result = watch(db, queue, expected, deadline, gaps_from)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
