"""The lateness cases of :mod:`bench.run`: ``plan``, the daemon's bursts and
spreads (``case_ours``) and rq cron's (``case_anchor``)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.fixtures import (
    REDIS_DB_ANCHOR,
    REDIS_DB_OURS,
    BenchDatabase,
    flush,
    schedule_names,
    schedule_source,
)
from bench.harness import (
    QUEUE,
    RESULTS,
    anchor_cron,
    daemon_config,
    expect_ready,
    json_line,
    lateness_report,
    lead_secs,
    ours_cron,
    planning_crons,
    run_daemon,
    spawn,
    start_watcher,
)


def case_plan(opts: argparse.Namespace, n: int) -> dict[str, Any]:
    flush(REDIS_DB_OURS)
    db = BenchDatabase()
    try:
        crons = planning_crons(time.time())
        db.add_schedules(zip(schedule_names(n), [crons[i % len(crons)] for i in range(n)],
                             strict=True))
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
        lead = lead_secs(opts, 7 + n * 0.0004)
        first_due = math.ceil(time.time() + lead)
        dues = due_instants(n, first_due, spread)
        db.add_schedules(zip(schedule_names(n), [ours_cron(d) for d in dues], strict=True))
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
        watched = json_line(watcher, "watcher", timeout=max(5, deadline - time.time() + 5))
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
    lead = lead_secs(opts, 5 + n * 0.0004)
    first_due = math.ceil(time.time() + lead)
    dues = due_instants(n, first_due, spread)
    spec = {
        "db": REDIS_DB_ANCHOR,
        "jobs": [[name, anchor_cron(d), d]
                 for name, d in zip(schedule_names(n), dues, strict=True)],
    }
    spec_path = RESULTS / f"{case}.spec.json"
    spec_path.write_text(json.dumps(spec))
    deadline = max(dues) + 15
    watcher = start_watcher(REDIS_DB_ANCHOR, n, deadline, first_due)
    with open(log_path, "w", encoding="utf-8") as log:
        anchor = spawn("bench.anchor", str(spec_path), stderr=log)
        try:
            expect_ready(anchor, "rq cron anchor")
            started = time.time()
            watched = json_line(watcher, "watcher", timeout=deadline - time.time() + 10)
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
