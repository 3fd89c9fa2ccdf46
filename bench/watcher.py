"""Independent landing-time watcher: ``python -m bench.watcher DB QUEUE N DEADLINE [FIRST_DUE]``.

Runs in its own process (so neither scheduler's CPU use or GIL holds it up,
and it reads nothing the schedulers log).  It polls ``LLEN`` of the queue list
about every millisecond; when the length grows from ``a`` to ``b`` it reads
the new ids with ``LRANGE a b-1`` and stamps them with the time the detecting
``LLEN`` was answered.  That stamp is an upper bound of the landing time, at
most one poll period (about 1.1 ms; ``max_gap_ms`` is the longest poll gap
seen from FIRST_DUE - 0.5 s on) after the job became
visible to any worker.  No worker runs during a benchmark, so list positions
never shift.

It prints ``ready`` on stdout once connected, then, when N ids have landed or
DEADLINE (unix time) has passed, one JSON line::

    {"landed": [[t, id], ...], "polls": P, "max_gap_ms": G, "started": t0}
"""

from __future__ import annotations

import json
import sys
import time

import redis

from bench.fixtures import REDIS_HOST, REDIS_PORT

POLL = 0.001


def watch(
    db: int, queue: str, expected: int, deadline: float, gaps_from: float
) -> dict[str, object]:
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    r.ping()
    landed: list[tuple[float, str]] = []
    seen = r.llen(queue)  # normally 0: the orchestrator flushed the database
    started = time.time()
    print("ready", flush=True)
    polls = 0
    max_gap = 0.0
    last = time.time()
    while len(landed) < expected:
        length = r.llen(queue)
        now = time.time()
        polls += 1
        gap = now - last
        if gap > max_gap and now >= gaps_from:
            # Only gaps while jobs may land matter to the resolution.
            max_gap = gap
        last = now
        if length > seen:
            ids = r.lrange(queue, seen, length - 1)
            landed.extend((now, i.decode()) for i in ids)
            seen = length
        if now > deadline:
            break
        time.sleep(POLL)
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
