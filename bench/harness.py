"""What the benchmark cases share: cron strings, child processes, the daemon's
config and runs, and reading the landed jobs back (:mod:`bench.watcher`).

Moved out of :mod:`bench.run` so that the cases import it and nothing imports
``bench.run``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import sync_redis
from bench.stats import summary
from tests.integration import support

ROOT = fixtures.ROOT
#: Where every case writes its logs, specs and figures (the smoke: a directory of its own).
RESULTS = Path(os.environ.get("BTU_BENCH_RESULTS") or ROOT / "bench" / "results")
QUEUE = "default"
QUEUE_KEY = "rq:queue:" + QUEUE

#: Seconds from a smoke case's start (``bench.run --smoke``) to its first due
#: second, instead of the full run's margin: enough for a daemon or rq cron
#: to start and plan a few dozen schedules on a busy 2-core host.
SMOKE_LEAD = 5.0


def lead_secs(opts: argparse.Namespace | None, full: float, smoke: float = SMOKE_LEAD) -> float:
    """A case's margin before its first due second: ``full``, or ``smoke`` in the smoke."""
    return smoke if opts is not None and getattr(opts, "smoke", False) else full


# -- cron strings ------------------------------------------------------------

def planning_crons(now: float, count: int = 50, quiet_secs: int = 30) -> list[str]:
    """``count`` distinct cron strings (5-, 6- and 7-field), none firing in the next
    ``quiet_secs`` seconds, so that no run is claimed (and its member briefly
    removed) while planning is being timed."""
    from btu_twisted.cron import next_run

    pool: list[str] = ["*/5 * * * *", "0 13 * * *", "30 2 * * 1", "0 0 1 1 *", "15 4 * * sun"]
    for h in range(24):
        pool += [f"{(h * 7) % 60} {h} * * *", f"*/15 {h} * * 1-5", f"0 {h} 1,15 * *"]
        pool += [f"{h} {h} * * * 2099", f"{(h * 11) % 60} {(h * 13) % 60} {h} * * * *"]
        pool += [f"*/10 {(h * 17) % 60} {h} * * * *", f"0 30 {h} * * 6 *"]
    chosen: list[str] = []
    for cron in pool:
        if next_run(cron, "UTC", now) > now + quiet_secs and cron not in chosen:
            chosen.append(cron)
    # Interleave the forms: take evenly from the whole pool rather than its head.
    step = max(1, len(chosen) // count)
    picked = chosen[::step][:count]
    if len(picked) < count:
        picked += [c for c in chosen if c not in picked][: count - len(picked)]
    return picked


def ours_cron(instant: int) -> str:
    """btu_twisted's 7-field form: sec min hour dom mon dow year (UTC)."""
    t = time.gmtime(instant)
    return f"{t.tm_sec} {t.tm_min} {t.tm_hour} * * * *"


def anchor_cron(instant: int) -> str:
    """croniter's 6-field form used by rq cron: min hour dom mon dow sec (UTC)."""
    t = time.gmtime(instant)
    return f"{t.tm_min} {t.tm_hour} * * * {t.tm_sec}"


# -- subprocesses --------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(module: str, *args: str, stderr: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=str(ROOT), env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=stderr if stderr is not None else subprocess.PIPE,
    )


def expect_ready(proc: subprocess.Popen[str], what: str) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        rest = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{what} did not start: {line!r} {rest[-2000:]}")


def json_line(proc: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{what} timed out; stderr: {(err or '')[-2000:]}") from None
    lines = [line for line in (out or "").splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what} printed no result (exit {proc.returncode}): {(err or '')[-3000:]}")
    return json.loads(lines[-1])


def start_watcher(db: int, expected: int, deadline: float, first_due: float) -> subprocess.Popen[str]:
    proc = spawn("bench.watcher", str(db), QUEUE_KEY, str(expected), repr(deadline),
                  repr(first_due - 0.5))
    expect_ready(proc, "watcher")
    return proc


def daemon_config(database: str | None, redis_db: int, **overrides: Any) -> dict[str, Any]:
    """What ``btu_scheduler.toml`` would hold: the integration tests' config.

    ``database`` None (a :class:`~bench.fixtures.ScheduleFile`'s ``name``): no
    ``mysql_*`` key at all, the schedules come from ``schedules_file`` only.
    A ``schedules_file`` of None (a database's) is left out."""
    overrides.setdefault("socket_path", f"/tmp/btu-bench-{os.getpid()}.sock")
    if overrides.get("schedules_file", "") is None:
        del overrides["schedules_file"]
    values = support.config_values(database or "", redis_db=redis_db, **overrides)
    if database is None:
        values = {key: value for key, value in values.items() if not key.startswith("mysql_")}
    return values


def run_daemon(case: str, spec: dict[str, Any], opts: argparse.Namespace,
               timeout: float) -> dict[str, Any]:
    spec = dict(spec)
    spec["log_file"] = str(RESULTS / f"{case}.log")
    Path(spec["log_file"]).unlink(missing_ok=True)
    if opts.profile:
        spec["profile"] = str(RESULTS / f"{case}.prof")
    if opts.trace:
        spec["trace"] = str(RESULTS / f"{case}.trace.json")
    if os.environ.get("BTU_BENCH_PATCH"):
        spec["patch"] = os.path.abspath(os.environ["BTU_BENCH_PATCH"])
    spec_path = RESULTS / f"{case}.spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = spawn("bench.daemon_case", str(spec_path))
    result = json_line(proc, f"daemon ({case})", timeout)
    if result.get("fatal"):
        raise RuntimeError(f"daemon ({case}) could not start: {result['fatal']}")
    return result


# -- reading back the jobs -------------------------------------------------------

def job_times(db: int, ids: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """id -> (scheduled unix time from meta, enqueued_at as unix time)."""
    r = sync_redis(db)
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget("rq:job:" + job_id, "meta", "enqueued_at")
    out: dict[str, tuple[float | None, float | None]] = {}
    for job_id, (meta, enqueued_at) in zip(ids, pipe.execute(), strict=True):
        # Our own benchmark jobs, written moments ago by the schedulers under test.
        scheduled = pickle.loads(meta).get("scheduled_time") if meta else None  # noqa: S301
        out[job_id] = (scheduled, support.parse_rq_time(enqueued_at))
    return out


def lateness_report(case: str, db: int, watched: dict[str, Any], expected: int,
                    first_due: float) -> dict[str, Any]:
    landed: list[tuple[float, str]] = [(float(t), i) for t, i in watched["landed"]]
    times = job_times(db, [i for _, i in landed])
    # Raw samples for a closer look: [landed (watcher), scheduled, enqueued_at, id].
    (RESULTS / f"{case}.samples.json").write_text(json.dumps(
        [[t, *times[i], i] for t, i in landed]))
    by_watcher: list[float] = []
    by_hash: list[float] = []
    for t, job_id in landed:
        scheduled, enqueued_at = times[job_id]
        if scheduled is None:
            continue
        by_watcher.append(t - scheduled)
        if enqueued_at is not None:
            by_hash.append(enqueued_at - scheduled)
    stamps = sorted(t for t, _ in landed)
    report: dict[str, Any] = {
        "expected": expected,
        "landed": len(landed),
        "watcher": summary(by_watcher),
        "enqueued_at": summary(by_hash),
        "watcher_max_poll_gap_ms": watched.get("max_gap_ms"),
        "early": sum(1 for x in by_watcher if x < 0),
    }
    if stamps:
        report["first_landing_after_due_ms"] = round((stamps[0] - first_due) * 1000, 3)
        report["last_landing_after_due_ms"] = round((stamps[-1] - first_due) * 1000, 3)
        span = stamps[-1] - stamps[0]
        report["distinct_landing_stamps"] = len(set(stamps))
        report["rate_first_to_last_per_s"] = round(len(stamps) / span) if span > 0 else None
        after_due = stamps[-1] - first_due
        report["rate_due_to_last_per_s"] = round(len(stamps) / after_due) if after_due > 0 else None
    return report
