"""Idle cost and socket latency with 10,000 schedules planned (cases ``idle``,
``ping`` and ``anchor_idle`` of :mod:`bench.run`).

``idle``
    The daemon as an admin runs it: ``twistd -n --pidfile= btu --config X``, a
    subprocess started from the repository root with ``PYTHONPATH`` = the root,
    its output to ``bench/results/idle.log``.  Once all 10,000 schedules have
    their member in the sorted set and a few seconds have passed, its CPU
    seconds (``utime + stime`` of ``/proc/PID/stat``, all threads) and RSS
    (``VmRSS`` of ``/proc/PID/status``) are read, then again after the idle
    window (60 s; 15 s with ``--quick``).  No run is due until well after the
    case ends (50 daily ``M H * * *`` strings, none firing in the next 15 min).
``ping``
    On that same idle daemon, after the window: :mod:`bench.pinger` with 200
    concurrent clients, each sending newline-terminated pings in a loop, and
    with 1 client for the baseline.
``file_idle``
    ``idle`` with the same 10,000 schedules in a ``schedules_file`` and no
    ``mysql_*`` key (nothing connects to MariaDB), its output to
    ``bench/results/file_idle.log``.
``anchor_idle``
    rq's own cron scheduler (``rq.cron.CronScheduler.start()``, what ``rq
    cron`` runs; :mod:`bench.anchor`) with the same 10,000 cron strings
    registered, measured the same way from its ``ready`` on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import (
    REDIS_DB_ANCHOR,
    REDIS_DB_OURS,
    flush,
    schedule_names,
    schedule_source,
)
from bench.harness import RESULTS, daemon_config, expect_ready, json_line, spawn
from tests.integration import support

ROOT = fixtures.ROOT
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECS = 3.0      # after planning / registration, before the first reading
QUIET_SECS = 900       # no run due within this long after the case starts


def idle_crons(now: float, count: int = 50, quiet_secs: int = QUIET_SECS) -> list[str]:
    """``count`` distinct daily 5-field strings (``M H * * *``), none due within
    ``quiet_secs`` of ``now`` (UTC); both schedulers read them the same way."""
    from btu_twisted.cron import next_run

    out: list[str] = []
    for k in range(24 * 60):
        cron = f"{(k * 7) % 60} {(k * 5) % 24} * * *"
        if cron not in out and next_run(cron, "UTC", now) > now + quiet_secs:
            out.append(cron)
        if len(out) == count:
            break
    return out


def proc_sample(pid: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads) and RSS (MiB) of ``pid`` now."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name (field 2) may contain blanks; count from its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])   # fields 14 and 15 of stat(5)
    rss_kb = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return {"t": time.time(), "utime": utime / CLK_TCK, "stime": stime / CLK_TCK,
            "cpu_secs": (utime + stime) / CLK_TCK, "rss_mib": rss_kb / 1024,
            "run_ns": _run_ns(pid)}


def _run_ns(pid: int) -> int:
    """Nanoseconds on a CPU, summed over the live threads (``schedstat``): the
    same quantity as utime + stime without their clock-tick granularity
    (threads that have exited are not counted)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def measure_idle(pid: int, window: float, alive: Any) -> dict[str, Any]:
    """Readings before and after ``window`` seconds; ``alive()`` False aborts."""
    before = proc_sample(pid)
    end = time.time() + window
    while time.time() < end:
        if not alive():
            raise RuntimeError("the measured process exited during the idle window")
        time.sleep(min(1.0, max(0.0, end - time.time())))
    after = proc_sample(pid)
    elapsed = after["t"] - before["t"]
    cpu = after["cpu_secs"] - before["cpu_secs"]
    return {
        "window_secs": round(elapsed, 3),
        "cpu_secs": round(cpu, 3),
        "cpu_user_secs": round(after["utime"] - before["utime"], 3),
        "cpu_system_secs": round(after["stime"] - before["stime"], 3),
        "cpu_secs_per_min": round(cpu / elapsed * 60, 3) if elapsed else None,
        "cpu_percent_of_one_core": round(cpu / elapsed * 100, 3) if elapsed else None,
        "cpu_schedstat_secs": round((after["run_ns"] - before["run_ns"]) / 1e9, 4),
        "rss_before_mib": round(before["rss_mib"], 1),
        "rss_after_mib": round(after["rss_mib"], 1),
        "clock_tick_secs": round(1 / CLK_TCK, 4),
    }


def _twistd() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    if script.exists():
        return [str(script)]
    return list(support.TWISTD)


@contextlib.contextmanager
def idle_daemon(n: int, config: dict[str, Any], source: str = "mariadb",
                case: str = "idle", settle: float = SETTLE_SECS,
                prepare: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """A ``twistd -n btu`` child with ``n`` schedules from ``source`` planned
    (``mariadb`` or ``file``, :func:`bench.fixtures.schedule_source`); yields its facts.
    ``prepare``: called on the flushed Redis before the daemon starts."""
    flush(REDIS_DB_OURS)
    if prepare is not None:
        prepare()
    db = schedule_source(source)
    tmp = tempfile.mkdtemp(prefix="btu-bench-idle-")
    proc: subprocess.Popen[bytes] | None = None
    log_path = RESULTS / f"{case}.log"
    try:
        crons = idle_crons(time.time())
        db.add_schedules(zip(schedule_names(n), [crons[i % len(crons)] for i in range(n)],
                             strict=True))
        values = daemon_config(db.name, REDIS_DB_OURS, socket_path=f"{tmp}/btu.sock",
                               schedules_file=db.schedules_file, **config)
        config_path = Path(tmp) / "btu_scheduler.toml"
        support.write_config(config_path, values)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(log_path, "wb") as log:
            t0 = time.time()
            proc = subprocess.Popen(
                _twistd() + ["-n", "--pidfile=", "btu", "--config", str(config_path)],
                cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        r = fixtures.sync_redis(REDIS_DB_OURS)
        planned_secs = None
        while time.time() - t0 < 120:
            if proc.poll() is not None:
                raise RuntimeError(f"twistd exited {proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            if r.zcard("btu_scheduler:task_execution_times") >= n:
                planned_secs = time.time() - t0
                break
            time.sleep(0.05)
        if planned_secs is None:
            raise RuntimeError(f"twistd did not plan {n} schedules within 120 s")
        time.sleep(settle)
        yield {
            "pid": proc.pid, "proc": proc, "socket": values["socket_path"],
            "schedules": n, "distinct_crons": len(crons), "source": source,
            "mysql_keys": sorted(key for key in values if key.startswith("mysql_")),
            "spawn_to_planned_secs": round(planned_secs, 3),
            "scheduler_polling_interval": values["scheduler_polling_interval"],
            "full_refresh_internal_secs": values["full_refresh_internal_secs"],
            "tracing_level": values["tracing_level"],
            "alive": lambda: proc is not None and proc.poll() is None,
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        db.drop()
        flush(REDIS_DB_OURS)
        for leftover in Path(tmp).iterdir():
            leftover.unlink()
        os.rmdir(tmp)


def run_pinger(socket_path: str, clients: int, rounds: int) -> dict[str, Any]:
    proc = spawn("bench.pinger", socket_path, str(clients), str(rounds))
    return json_line(proc, f"pinger ({clients} clients)", timeout=300)


def case_idle_and_ping(n: int, window: float, do_idle: bool, do_ping: bool,
                       clients: int, rounds: int, source: str = "mariadb",
                       case: str = "idle", settle: float = SETTLE_SECS) -> dict[str, dict[str, Any]]:
    """Results of ``idle`` and/or ``ping`` on one daemon (keys ``idle``, ``ping``)."""
    out: dict[str, dict[str, Any]] = {}
    with idle_daemon(n, {}, source, case, settle) as d:
        facts = {k: v for k, v in d.items() if k not in ("proc", "alive", "pid", "socket")}
        if do_idle:
            idle = measure_idle(d["pid"], window, d["alive"])
            idle.update(facts)
            idle["due_during_case"] = int(fixtures.sync_redis(REDIS_DB_OURS).zcount(
                "btu_scheduler:task_execution_times", "-inf", time.time() + 5))
            out["idle"] = idle
        if do_ping:
            ping: dict[str, Any] = {"schedules": n}
            ping["baseline_1_client"] = run_pinger(d["socket"], 1, rounds * 10)
            before = proc_sample(d["pid"])
            ping.update(run_pinger(d["socket"], clients, rounds))
            after = proc_sample(d["pid"])
            # Was the daemon the bottleneck?  Its CPU use while the clients ran.
            ping["daemon_cpu_secs"] = round(after["cpu_secs"] - before["cpu_secs"], 3)
            ping["daemon_rss_after_mib"] = round(after["rss_mib"], 1)
            if not d["alive"]():
                raise RuntimeError("twistd exited during the ping case")
            out["ping"] = ping
    return out


def case_file_idle(n: int, window: float, settle: float = SETTLE_SECS) -> dict[str, Any]:
    """``idle`` with the ``n`` schedules in a schedules file, no MariaDB."""
    return case_idle_and_ping(n, window, True, False, 0, 0, source="file",
                              case="file_idle", settle=settle)["idle"]


def case_anchor_idle(n: int, window: float, settle: float = SETTLE_SECS) -> dict[str, Any]:
    """rq cron (``CronScheduler.start()``) with the same ``n`` cron strings, idle."""
    import json

    flush(REDIS_DB_ANCHOR)
    crons = idle_crons(time.time())
    spec = {"db": REDIS_DB_ANCHOR,
            "jobs": [[name, crons[i % len(crons)], None] for i, name in enumerate(schedule_names(n))]}
    spec_path = RESULTS / "anchor_idle.spec.json"
    spec_path.write_text(json.dumps(spec))
    with open(RESULTS / "anchor_idle.log", "w", encoding="utf-8") as log:
        t0 = time.time()
        proc = spawn("bench.anchor", str(spec_path), stderr=log)
    try:
        expect_ready(proc, "rq cron (idle)")
        registered_secs = time.time() - t0
        time.sleep(settle)
        result = measure_idle(proc.pid, window, lambda: proc.poll() is None)
        result.update({"schedules": n, "distinct_crons": len(crons),
                       "spawn_to_registered_secs": round(registered_secs, 3),
                       "enqueued_during_case": int(fixtures.sync_redis(REDIS_DB_ANCHOR).llen(
                           "rq:queue:default"))})
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        flush(REDIS_DB_ANCHOR)
