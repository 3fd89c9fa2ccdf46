"""Run every benchmark in one go: ``python -m bench.run [--quick] [--profile] [--only ...]``.

Cases (N shrinks with ``--quick``):

``plan``        startService() until all N=10,000 schedules (50 distinct cron
                strings: 5-, 6- and 7-field) have a member in the sorted set.
``burst``       1,000 schedules due at the same second S; lateness of each job's
                landing on ``rq:queue:default`` after S.
``spread``      1,000 schedules spread over the 60 seconds after S (16-17 per
                second); lateness of each landing after its own due second.
``burst10k``    10,000 due at the same second (throughput under a big burst).
``ceiling10k``  what Redis itself needs to claim and enqueue those 10,000 jobs with
                a minimal script, timed server-side (:mod:`bench.burst`).
``burst10k_paired``
                ``burst10k`` five times, each between two one-pass ceilings:
                its share of the ceiling with the host's swings taken out
                (:mod:`bench.burst`).
``burst10k_x3`` three daemons on one Redis with 10,000 due at one second: each run
                enqueued exactly once (:mod:`bench.burst`).
``anchor_burst`` / ``anchor_spread``
                rq's own cron scheduler (``rq.cron.CronScheduler``, what
                ``rq cron`` runs) with the same jobs at the same instants.
``anchor_rqs_burst``
                ``rqscheduler --interval 1`` (rq-scheduler, from its own venv
                under /tmp) with the burst's jobs (:mod:`bench.rqscheduler`).
``idle``        ``twistd -n btu`` with 10,000 schedules planned and nothing due:
                CPU seconds and RSS over 60 s (15 s with ``--quick``).
``ping``        on that idle daemon: 200 concurrent socket clients pinging in a
                loop (p50/p99/max), beside 1 client alone.
``anchor_idle`` rq cron with the same 10,000 cron strings, same readings
                (:mod:`bench.idle`).
``file_burst`` / ``file_spread`` / ``file_idle``
                ``burst10k``, a 10,000 spread over the 60 s and ``idle`` with
                the schedules in a ``schedules_file`` (no ``mysql_*`` key, no
                MariaDB at all).
``anchor_burst10k`` / ``anchor_spread10k``
                rq cron with the same 10,000 jobs at the same instants as
                ``file_burst`` / ``file_spread`` (and ``burst10k``).

Landing times come from :mod:`bench.watcher`, a separate process that polls
``LLEN`` every millisecond; the job hashes' ``enqueued_at`` (set by each
scheduler's own clock when it enqueues) is reported beside them.  Results are
printed as a table and written to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import (
    REDIS_DB_ANCHOR,
    REDIS_DB_OURS,
    BenchDatabase,
    flush,
    schedule_names,
    schedule_source,
    sync_redis,
)
from bench.stats import ratio, summary
from tests.integration import support

ROOT = fixtures.ROOT
RESULTS = ROOT / "bench" / "results"
QUEUE = "default"
QUEUE_KEY = "rq:queue:" + QUEUE
IDLE_SCHEDULES = 10_000  # idle, ping and anchor_idle, with or without --quick
PING_CLIENTS = 200

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


def _spawn(module: str, *args: str, stderr: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=str(ROOT), env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=stderr if stderr is not None else subprocess.PIPE,
    )


def _expect_ready(proc: subprocess.Popen[str], what: str) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        rest = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{what} did not start: {line!r} {rest[-2000:]}")


def _json_line(proc: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
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
    proc = _spawn("bench.watcher", str(db), QUEUE_KEY, str(expected), repr(deadline),
                  repr(first_due - 0.5))
    _expect_ready(proc, "watcher")
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
    proc = _spawn("bench.daemon_case", str(spec_path))
    result = _json_line(proc, f"daemon ({case})", timeout)
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
    for job_id, (meta, enqueued_at) in zip(ids, pipe.execute()):
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


# -- cases -------------------------------------------------------------------------

def case_plan(opts: argparse.Namespace, n: int) -> dict[str, Any]:
    flush(REDIS_DB_OURS)
    db = BenchDatabase()
    try:
        crons = planning_crons(time.time())
        db.add_schedules(zip(schedule_names(n), [crons[i % len(crons)] for i in range(n)]))
        spec = {
            "mode": "plan",
            "expected": n,
            "poll": 0.01,
            "timeout": 120,
            "config": daemon_config(db.name, REDIS_DB_OURS),
        }
        result = run_daemon("plan", spec, opts, timeout=180)
        result["distinct_crons"] = len(set(crons))
        result["crons"] = crons
        return result
    finally:
        db.drop()
        flush(REDIS_DB_OURS)


def due_instants(n: int, first_due: int, spread: int) -> list[int]:
    return [first_due + (i % spread) for i in range(n)] if spread > 1 else [first_due] * n


def case_ours(opts: argparse.Namespace, case: str, n: int, spread: int,
              source: str = "mariadb", around: Around | None = None) -> dict[str, Any]:
    """``n`` schedules due at ``spread`` consecutive seconds, read by the daemon
    from ``source`` (``mariadb``: a ``btu_bench_*`` database; ``file``: a
    ``schedules_file`` and no MariaDB).  ``around`` is run in a thread
    ``AROUND_LEAD`` seconds before the first due second (the daemon has
    planned and waits) and again as soon as the daemon has stopped; what it
    returns is in the report as ``around``."""
    flush(REDIS_DB_OURS)
    db = schedule_source(source)
    before: dict[str, Any] = {}
    try:
        lead = 7 + n * 0.0004
        first_due = math.ceil(time.time() + lead)
        dues = due_instants(n, first_due, spread)
        db.add_schedules(zip(schedule_names(n), [ours_cron(d) for d in dues]))
        deadline = max(dues) + 10
        watcher = start_watcher(REDIS_DB_OURS, n, deadline, first_due)
        spec = {
            "mode": "run",
            "expected": n,
            "first_due": first_due,
            "deadline": deadline,
            "queue": QUEUE,
            "config": daemon_config(db.name, REDIS_DB_OURS, schedules_file=db.schedules_file),
        }
        if around is not None:
            thread = threading.Thread(target=_run_around, args=(around, first_due, before))
            thread.start()
        try:
            daemon = run_daemon(case, spec, opts, timeout=deadline - time.time() + 60)
        finally:
            if around is not None:
                thread.join()
        after = around() if around is not None else None
        watched = _json_line(watcher, "watcher", timeout=max(5, deadline - time.time() + 5))
        report = lateness_report(case, REDIS_DB_OURS, watched, n, first_due)
        report["spread_secs"] = spread
        report["source"] = source
        report["daemon"] = daemon
        if around is not None:
            report["around"] = {**before, "after": after}
        return report
    finally:
        db.drop()
        flush(REDIS_DB_OURS)


#: What ``case_ours`` runs around a burst (bench.burst: one ceiling pass).
Around = Callable[[], Any]
#: Seconds before the first due second that ``around`` starts: after the
#: daemon planned (it starts 11 s ahead and plans 10,000 in about 1 s) and
#: early enough for one ceiling pass (2-4 s on this host) to end before the
#: daemon builds the jobs (2 s ahead, timer.LOOKAHEAD).
AROUND_LEAD = 8.0


def _run_around(around: Around, first_due: float, out: dict[str, Any]) -> None:
    time.sleep(max(0.0, first_due - AROUND_LEAD - time.time()))
    out["before"] = around()
    # Past the start of the builds, it shared the host with them.
    out["before_ended_secs_before_due"] = round(first_due - time.time(), 3)


def case_anchor(opts: argparse.Namespace, case: str, n: int, spread: int) -> dict[str, Any]:
    flush(REDIS_DB_ANCHOR)
    log_path = RESULTS / f"{case}.log"
    lead = 5 + n * 0.0004
    first_due = math.ceil(time.time() + lead)
    dues = due_instants(n, first_due, spread)
    spec = {
        "db": REDIS_DB_ANCHOR,
        "jobs": [[name, anchor_cron(d), d] for name, d in zip(schedule_names(n), dues)],
    }
    spec_path = RESULTS / f"{case}.spec.json"
    spec_path.write_text(json.dumps(spec))
    deadline = max(dues) + 15
    watcher = start_watcher(REDIS_DB_ANCHOR, n, deadline, first_due)
    with open(log_path, "w", encoding="utf-8") as log:
        anchor = _spawn("bench.anchor", str(spec_path), stderr=log)
        try:
            _expect_ready(anchor, "rq cron anchor")
            started = time.time()
            watched = _json_line(watcher, "watcher", timeout=deadline - time.time() + 10)
        finally:
            anchor.terminate()
            try:
                anchor.wait(10)
            except subprocess.TimeoutExpired:
                anchor.kill()
                anchor.wait()
    try:
        report = lateness_report(case, REDIS_DB_ANCHOR, watched, n, first_due)
        report["spread_secs"] = spread
        report["margin_secs"] = round(first_due - started, 3)
        return report
    finally:
        flush(REDIS_DB_ANCHOR)


# -- output ------------------------------------------------------------------------

def _diff_sha1(diff: str) -> str:
    import hashlib

    return hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else ""


def machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    r = sync_redis(REDIS_DB_OURS)
    info = r.info("server")
    conn = support.admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            mariadb = cur.fetchone()[0]
    finally:
        conn.close()
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=str(ROOT), capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        # The daemon measured is the working tree; say so when it differs from the commit.
        "btu_twisted_dirty": bool(git("status", "--porcelain", "--", "btu_twisted")),
        # Which uncommitted tree it was (empty when clean).
        "btu_twisted_diff_sha1": _diff_sha1(git("diff", "HEAD", "--", "btu_twisted")),
        "nproc": len(os.sched_getaffinity(0)),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rq": version("rq"),
        "Twisted": version("Twisted"),
        "txredisapi": version("txredisapi"),
        "croniter": version("croniter"),
        "PyMySQL": version("PyMySQL"),
        "redis_server": info.get("redis_version"),
        "mariadb_server": mariadb,
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}" if abs(value) >= 10 else f"{value:.2f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("case", "N", "p50 ms", "p99 ms", "max ms", "last ms",
                                     "jobs/s S->last", "jobs/s first->last", "notes")]
    plan = results["cases"].get("plan")
    if plan:
        rows.append(("plan", _fmt(plan["expected"]), "", "", "", "", "", "",
                     f"startService -> all in ZSET: {plan.get('plan_secs', float('nan')):.3f} s"
                     f" (target < 2 s; {plan.get('distinct_crons')} crons,"
                     f" {plan.get('planner_batches')} batches)"))
    for case in ("burst", "anchor_burst", "anchor_rqs_burst", "spread", "anchor_spread",
                 "burst10k", "burst10k_x3", *FILE_LATENESS_CASES):
        r = results["cases"].get(case)
        if not r:
            continue
        if r.get("error"):
            rows.append((case, _fmt(r.get("expected")), "", "", "", "", "", "",
                         f"NOT MEASURED: {r['error'][:160]}"))
            continue
        w = r["watcher"]
        note = f"landed {r['landed']}/{r['expected']}"
        if r.get("early"):
            note += f", {r['early']} EARLY"
        if case == "anchor_rqs_burst":
            v = r.get("versions", {})
            note += (f" (rqscheduler --interval {r.get('interval_secs'):g},"
                     f" rq-scheduler {v.get('rq-scheduler')}, rq {v.get('rq')})")
        elif case.startswith("anchor"):
            note += " (rq cron)"
        elif case == "burst10k_x3":
            once = "EXACTLY ONCE" if r.get("exactly_once") else "NOT EXACTLY ONCE"
            note += f"; 3 daemons: {once} ({r.get('doubles')} doubles, {r.get('missing')} missing)"
        else:
            if r.get("source") == "file":
                note += " (schedules file, no MariaDB)"
            e = r["enqueued_at"]
            note += (f"; first landed {_fmt(r.get('first_landing_after_due_ms'))} ms after due;"
                     f" enqueued_at p99 {_fmt(e.get('p99_ms'))}")
        burst = "burst" in case
        rate = r.get("rate_due_to_last_per_s") if burst else None
        rate2 = r.get("rate_first_to_last_per_s") if burst else None
        rows.append((case, _fmt(r["expected"]), _fmt(w.get("p50_ms")), _fmt(w.get("p99_ms")),
                     _fmt(w.get("max_ms")), _fmt(r.get("last_landing_after_due_ms")),
                     _fmt(rate), _fmt(rate2), note))
    c = results["cases"].get("ceiling10k")
    if c:
        m, o = c["minimal"], c["claim_script"]
        note = (f"Redis-side: minimal script {m['us_per_job']:.2f} us/job, CLAIM"
                f" {o['us_per_job']:.2f} us/job ({o['jobs_per_s']:,}/s), longest"
                f" {c['batch']}-job CLAIM {o['call_ms_max']:.2f} ms; filing history after:"
                f" {o.get('history_fold_us_per_job') or 0:.2f} us/job; with parsing"
                f" (Redis CPU): minimal {_fmt(m.get('redis_cpu_us_per_job'))},"
                f" CLAIM {_fmt(o.get('redis_cpu_us_per_job'))} us/job")
        rows.append(("ceiling10k", _fmt(c["expected"]), "", "", "", "", _fmt(m["jobs_per_s"]), "",
                     note))
    p = results["cases"].get("burst10k_paired")
    if p:
        note = "; ".join(
            f"{_fmt(q['burst_jobs_per_s'])}/s vs ceiling {_fmt(q['ceiling_jobs_per_s'][0])}"
            f"..{_fmt(q['ceiling_jobs_per_s'][1])}/s = {_fmt(q['ratio'])}"
            f" (first {_fmt(q['first_landing_after_due_ms'])} ms)" for q in p["pairs"])
        rows.append(("burst10k_paired", _fmt(p["expected"]), "", "", "", "", "", "",
                     ("" if p["landed_all"] else "NOT ALL LANDED; ") + note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += idle_lines(results["cases"])
    for name, value in results.get("ratios", {}).items():
        lines.append(f"ratio {name}: {value}")
    m = results["machine"]
    if results.get("patched"):
        lines.append(f"PATCHED daemon (BTU_BENCH_PATCH={results['patched']}): not the tree's figures")
    if results.get("profiled"):
        lines.append("PROFILED daemon (cProfile): slower than real")
    lines.append(
        f"btu_twisted at {m['commit']}"
        f"{' + uncommitted changes (diff ' + m['btu_twisted_diff_sha1'] + ')' if m['btu_twisted_dirty'] else ''}; "
        f"machine: nproc {m['nproc']}, {m['date']}, Python {m['python']}, rq {m['rq']}, "
        f"Twisted {m['Twisted']}, Redis {m['redis_server']}, MariaDB {m['mariadb_server']}"
    )
    return "\n".join(lines)


#: The schedules-file lateness cases and their rq cron anchors (rows of the table).
FILE_LATENESS_CASES = ("file_burst", "anchor_burst10k", "file_spread", "anchor_spread10k")
#: Each lateness case and the rq cron case with the same jobs at the same instants.
ANCHORED = (("burst", "anchor_burst"), ("spread", "anchor_spread"),
            ("file_burst", "anchor_burst10k"), ("file_spread", "anchor_spread10k"),
            ("burst10k", "anchor_burst10k"))
#: The same jobs read from a schedules file and from MariaDB (same N in a full run).
FILE_VS_MARIADB = (("file_burst", "burst10k"),)


def lateness_ratios(ours: dict[str, Any], other: dict[str, Any], label: str,
                    burst: bool, landings: bool) -> dict[str, float | None]:
    """``ours``/``other`` for p50/p99/max (and the first landing, and a burst's last
    landing and jobs/s; a spread's last landing is mostly its 60 s)."""
    out = {f"{key} {label}": ratio(ours["watcher"].get(key), other["watcher"].get(key))
           for key in ("p50_ms", "p99_ms", "max_ms")}
    if landings:
        for key in ("first_landing_after_due_ms", "last_landing_after_due_ms")[:2 if burst else 1]:
            out[f"{key} {label}"] = ratio(ours.get(key), other.get(key))
    if burst:
        out[f"jobs/s {label}"] = ratio(ours.get("rate_due_to_last_per_s"),
                                       other.get("rate_due_to_last_per_s"))
    return out


def ratios(cases: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    pairs = [(o, a, "ours/rq-cron") for o, a in ANCHORED]
    pairs += [(f, m, "file/mariadb") for f, m in FILE_VS_MARIADB]
    for ours, other, label in pairs:
        if cases.get(ours) and cases.get(other):
            # The older pairs keep the keys they always had (no first/last landing).
            new = ours.startswith("file_") or other.endswith("10k")
            for key, value in lateness_ratios(cases[ours], cases[other], label,
                                              "burst" in ours, new).items():
                out[f"{ours} {key}"] = value
    ceiling = cases.get("ceiling10k")
    for case in ("burst10k", "burst10k_x3"):
        if ceiling and cases.get(case) and not cases[case].get("error"):
            out[f"{case} jobs/s / Redis-side ceiling"] = ratio(
                cases[case].get("rate_due_to_last_per_s"), ceiling.get("ceiling_jobs_per_s"))
    paired = cases.get("burst10k_paired")
    if paired:
        out["burst10k_paired jobs/s / Redis-side ceiling (median of bracketed pairs)"] = \
            paired.get("median_ratio")
        out["burst10k_paired jobs/s / ceiling with parsing (median of bracketed pairs)"] = \
            paired.get("median_ratio_with_parsing")
    rqs = cases.get("anchor_rqs_burst")
    if "burst" in cases and rqs and not rqs.get("error"):
        for key in ("p50_ms", "p99_ms", "max_ms"):
            out[f"burst {key} ours/rq-scheduler"] = ratio(
                cases["burst"]["watcher"].get(key), rqs["watcher"].get(key))
        out["burst jobs/s ours/rq-scheduler"] = ratio(
            cases["burst"].get("rate_due_to_last_per_s"), rqs.get("rate_due_to_last_per_s"))
    for case, other, label in (("idle", "anchor_idle", "ours/rq-cron"),
                               ("file_idle", "anchor_idle", "ours/rq-cron"),
                               ("file_idle", "idle", "file/mariadb")):
        idle, anchor = cases.get(case), cases.get(other)
        if idle and anchor:
            out[f"{case} CPU s/min {label}"] = ratio(
                idle.get("cpu_secs_per_min"), anchor.get("cpu_secs_per_min"))
            out[f"{case} CPU (schedstat) {label}"] = ratio(
                idle.get("cpu_schedstat_secs"), anchor.get("cpu_schedstat_secs"))
            out[f"{case} RSS {label}"] = ratio(idle.get("rss_after_mib"),
                                               anchor.get("rss_after_mib"))
    ping = cases.get("ping")
    if ping and ping.get("baseline_1_client"):
        base = ping["baseline_1_client"]
        for key in ("p50_ms", "p99_ms", "max_ms"):
            out[f"ping {key} 200 clients/1 client"] = ratio(ping.get(key), base.get(key))
    return out


def idle_lines(cases: dict[str, Any]) -> list[str]:
    """The idle and ping cases, one line each, under the lateness table."""
    lines: list[str] = []
    for case, who in (("idle", "btu_twisted (twistd -n btu)"),
                      ("file_idle", "btu_twisted (twistd -n btu), schedules file, no MariaDB"),
                      ("anchor_idle", "rq cron")):
        r = cases.get(case)
        if not r:
            continue
        extra = (f", polling {r['scheduler_polling_interval']} s" if case != "anchor_idle" else "")
        lines.append(
            f"{case}: {who}, {r['schedules']:,} schedules, nothing due{extra}: "
            f"CPU {r['cpu_secs']:.2f} s in {r['window_secs']:.0f} s "
            f"(schedstat {r['cpu_schedstat_secs']:.4f} s) "
            f"({r['cpu_secs_per_min']:.3f} s/min, {r['cpu_percent_of_one_core']:.2f}% of a core; "
            f"user {r['cpu_user_secs']:.2f}, system {r['cpu_system_secs']:.2f}); "
            f"RSS {r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB")
    p = cases.get("ping")
    if p:
        b = p.get("baseline_1_client", {})
        lines.append(
            f"ping: {p['clients']} clients x {p['rounds']} rounds = {p['samples']:,} pings on the "
            f"idle daemon ({p['schedules']:,} schedules): p50 {_fmt(p.get('p50_ms'))} ms, "
            f"p99 {_fmt(p.get('p99_ms'))} ms, max {_fmt(p.get('max_ms'))} ms, "
            f"{_fmt(p.get('pings_per_s'))} pings/s, {p['errors']} errors, daemon CPU "
            f"{_fmt(p.get('daemon_cpu_secs'))} s in {_fmt(p.get('wall_secs'))} s; 1 client alone: "
            f"p50 {_fmt(b.get('p50_ms'))} ms, p99 {_fmt(b.get('p99_ms'))} ms, "
            f"max {_fmt(b.get('max_ms'))} ms, {_fmt(b.get('pings_per_s'))} pings/s")
    return lines


CASES = ("plan", "burst", "anchor_burst", "anchor_rqs_burst", "spread", "anchor_spread",
         "burst10k", "ceiling10k", "burst10k_paired", "burst10k_x3", "file_burst",
         "anchor_burst10k",
         "file_spread", "anchor_spread10k", "idle", "ping", "file_idle", "anchor_idle")


def case_runners(opts: argparse.Namespace,
                 selected: list[str]) -> dict[str, Callable[[], dict[str, Any]]]:
    """What runs each case of CASES, at the sizes ``opts.quick`` says (``selected``:
    the idle daemon serves the pings too when both are).  A function of its own
    so that tests can check it knows every case without running one."""
    n_plan, n, n_big, spread = (2000, 200, 1000, 10) if opts.quick else (10000, 1000, 10000, 60)
    n_idle, idle_secs, ping_rounds = (IDLE_SCHEDULES, 15.0, 100) if opts.quick else \
        (IDLE_SCHEDULES, 60.0, 500)
    from bench.burst import case_burst_ha, case_burst_paired, case_ceiling
    from bench.idle import case_anchor_idle, case_file_idle, case_idle_and_ping
    from bench.rqscheduler import case_rqscheduler_burst

    def idle_and_ping(which: str) -> dict[str, Any]:
        # One idle daemon serves both: the ping clients come after the idle window.
        if which == "ping" and "ping" in shared:
            return shared.pop("ping")
        got = case_idle_and_ping(n_idle, idle_secs, "idle" in selected, "ping" in selected,
                                 PING_CLIENTS, ping_rounds)
        if which == "idle" and "ping" in got:
            shared["ping"] = got["ping"]
        return got[which]

    shared: dict[str, Any] = {}
    return {
        "plan": lambda: case_plan(opts, n_plan),
        "burst": lambda: case_ours(opts, "burst", n, 1),
        "anchor_burst": lambda: case_anchor(opts, "anchor_burst", n, 1),
        "anchor_rqs_burst": lambda: case_rqscheduler_burst("anchor_rqs_burst", n),
        "spread": lambda: case_ours(opts, "spread", n, spread),
        "anchor_spread": lambda: case_anchor(opts, "anchor_spread", n, spread),
        "burst10k": lambda: case_ours(opts, "burst10k", n_big, 1),
        "ceiling10k": lambda: case_ceiling(n_big),
        "burst10k_paired": lambda: case_burst_paired(opts, n_big),
        "burst10k_x3": lambda: case_burst_ha(opts, "burst10k_x3", n_big),
        "idle": lambda: idle_and_ping("idle"),
        "ping": lambda: idle_and_ping("ping"),
        "anchor_idle": lambda: case_anchor_idle(n_idle, idle_secs),
        # The same N as burst10k (and the same due instants as their anchors).
        "file_burst": lambda: case_ours(opts, "file_burst", n_big, 1, source="file"),
        "anchor_burst10k": lambda: case_anchor(opts, "anchor_burst10k", n_big, 1),
        "file_spread": lambda: case_ours(opts, "file_spread", n_big, spread, source="file"),
        "anchor_spread10k": lambda: case_anchor(opts, "anchor_spread10k", n_big, spread),
        "file_idle": lambda: case_file_idle(n_idle, idle_secs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N, short spread (smoke run)")
    parser.add_argument("--profile", action="store_true",
                        help="run the daemon under cProfile (bench/results/CASE.prof); "
                             "figures are then slower than real")
    parser.add_argument("--trace", action="store_true",
                        help="record spans of the timer's, store's and planner's calls "
                             "(bench/results/CASE.trace.json)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CASES)}")
    opts = parser.parse_args(argv)
    selected = [c for c in opts.only.split(",") if c] or list(CASES)
    unknown = set(selected) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    fixtures.drop_leftover_databases()
    runners = case_runners(opts, selected)
    results: dict[str, Any] = {"machine": machine(), "quick": opts.quick,
                               "profiled": opts.profile,
                               "patched": os.environ.get("BTU_BENCH_PATCH") or None,
                               "cases": {}}
    began = time.time()
    for case in CASES:
        if case not in selected:
            continue
        t = time.time()
        print(f"== {case} ...", flush=True)
        # An integration test run that uses the case's Redis database waits for
        # the case, and the case for it (both flush what they use).
        with fixtures.redis_dbs_locked(
                (REDIS_DB_ANCHOR,) if case.startswith("anchor") else
                () if case == "ceiling10k" else (REDIS_DB_OURS,)):
            results["cases"][case] = runners[case]()
        results["cases"][case]["case_wall_secs"] = round(time.time() - t, 1)
    results["ratios"] = ratios(results["cases"])
    results["total_wall_secs"] = round(time.time() - began, 1)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table(results))
    print(f"total {results['total_wall_secs']} s; details in {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
