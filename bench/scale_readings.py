"""What ``bench.scale`` reads off the daemon and Redis: RSS, CPU, the slow log
(with each script's name), and the cancel requests' round trips, timed from a
process of their own."""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from typing import Any

from bench.fixtures import sync_redis
from bench.soak_parts import control_request
from bench.stats import summary


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _script_label(script: str) -> str:
    """The store's name of a script SLOWLOG shows (by its SHA1, or by its first
    128 characters: SLOWLOG cuts longer arguments): any of ``lua/*.lua``."""
    from btu_twisted.store import schedule_store as store
    from btu_twisted.store import scripts

    shown = script.split("... (", 1)[0]
    for name in scripts.NAMES:
        text = scripts.load(name)
        for variant in (text, store._without_shebang(text)):
            if shown == hashlib.sha1(variant.encode()).hexdigest() or (
                    len(shown) > 40 and variant.startswith(shown)):
                return name.upper()
    return shown.strip().splitlines()[0][:40] if shown.strip() else "?"


class SlowLog:
    """The SLOWLOG entries of this process's own Redis connections, from a mark on."""

    def __init__(self, db: int) -> None:
        self._redis = self.redis = sync_redis(db)
        self._redis.client_setname("bench")
        self._db = db
        entries = self._redis.slowlog_get(1)
        self._after = entries[0]["id"] if entries else -1
        self.clients: set[str] = set()

    def note_clients(self) -> None:
        for client in self._redis.client_list():
            if int(client.get("db", -1)) == self._db and client.get("name") != "bench":
                self.clients.add(client["addr"])

    def read(self) -> dict[str, Any]:
        worst: dict[str, float] = {}
        count = 0
        for entry in self._redis.execute_command("SLOWLOG", "GET", 1024):
            entry_id, _, usecs, args = entry[0], entry[1], entry[2], entry[3]
            addr = entry[4].decode() if len(entry) > 4 else ""
            if entry_id <= self._after or (self.clients and addr not in self.clients):
                continue
            words = [a.decode("utf-8", "replace") for a in args]
            kind = words[0].upper() if words else "?"
            if kind in ("EVAL", "EVALSHA") and len(words) > 1:
                kind = f"{kind} {_script_label(words[1])}"
            count += 1
            worst[kind] = max(worst.get(kind, 0.0), usecs / 1000)
        return {"entries": count, "max_ms_by_command": worst}


def _cancel_round_trips(path: str, names: list[str]) -> dict[str, Any]:
    """Each request on its own connection, as the BTU app sends it; timed
    from before the connect to the reply's line."""
    samples, bad = [], []
    for name in names:
        t = time.perf_counter()
        reply = control_request(path, "cancel_task_schedule", name, timeout=30)
        samples.append(time.perf_counter() - t)
        if "Successfully cancelled" not in str(reply):
            bad.append(str(reply)[:200])
    return {"samples": len(samples), "not_cancelled": bad[:5], "ms": summary(samples)}


def _cancel_in_child(path: str, names: list[str]) -> dict[str, Any]:
    """The cancels from a process of their own: a client thread in this one
    would wait for the reactor thread's GIL, up to 5 ms a time."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--cancel-client", path],
        input=json.dumps(names), text=True, capture_output=True, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": proc.stderr[-2000:]}
    return json.loads(lines[-1])
