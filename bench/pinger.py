"""Socket ping round trips: ``python -m bench.pinger SOCKET CLIENTS ROUNDS``.

Runs in its own process (so the orchestrator's work never delays a reply's
reading).  It opens CLIENTS connections to the daemon's Unix socket one after
the other with ordinary blocking ``connect`` (the listen backlog is smaller
than 200, and a blocking connect simply waits for the daemon to accept),
hands them to one asyncio loop, and then every client, all at once, sends
``{"request_type": "ping", "request_content": null}`` and a newline, reads the
``pong`` line, and repeats, ROUNDS times.  Each round trip is timed with
``time.perf_counter`` from just before the write to the line being read, so a
sample includes this process's own scheduling of 200 coroutines on one core:
an upper bound of the daemon's share.

With CLIENTS = 1 it gives the baseline: one client alone, the same request
in a loop.

One JSON line on stdout::

    {"clients": C, "rounds": R, "samples": C*R, "errors": E,
     "p50_ms": ..., "p99_ms": ..., "max_ms": ..., "wall_secs": W, "pings_per_s": P}
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from bench.stats import summary

REQUEST = b'{"request_type": "ping", "request_content": null}\n'
REPLY = b"pong"


def connect_all(path: str, clients: int) -> list[socket.socket]:
    socks = []
    for _ in range(clients):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        socks.append(s)
    return socks


async def client(sock: socket.socket, rounds: int, start: asyncio.Event,
                 samples: list[float], errors: list[str]) -> None:
    sock.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    await start.wait()
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            writer.write(REQUEST)
            line = await asyncio.wait_for(reader.readline(), 30)
            samples.append(time.perf_counter() - t)
            if line.strip() != REPLY:
                errors.append(line[:200].decode("utf-8", "replace"))
                return
    except Exception as e:  # a refused or dropped connection is a result, not a crash
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


async def run(path: str, clients: int, rounds: int) -> dict[str, object]:
    socks = connect_all(path, clients)
    start = asyncio.Event()
    samples: list[float] = []
    errors: list[str] = []
    tasks = [asyncio.create_task(client(s, rounds, start, samples, errors)) for s in socks]
    await asyncio.sleep(0.2)  # every connection wrapped and waiting
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    out: dict[str, object] = {"clients": clients, "rounds": rounds, "errors": len(errors),
                              "first_errors": errors[:3], "wall_secs": round(wall, 3),
                              "pings_per_s": round(len(samples) / wall) if wall > 0 else None}
    s = summary(samples)
    out["samples"] = s.pop("count", 0)
    out.update(s)
    return out


def main(argv: list[str]) -> None:
    path, clients, rounds = argv[0], int(argv[1]), int(argv[2])
    result = asyncio.run(run(path, clients, rounds))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
