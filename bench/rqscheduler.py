"""The rq-scheduler anchor (case ``anchor_rqs_burst`` of :mod:`bench.run`).

``rq-scheduler`` (the ``rqscheduler`` command Frappe sites used before rq grew
its own scheduler) is installed with pip into a separate venv,
``/tmp/btu-bench-rqscheduler-venv``, pinned to the rq version of the
project's venv, so that both write jobs with the same rq; the venv is reused
by later runs.  If it cannot be installed, the case reports why instead of
failing the run.

The burst's N jobs are registered with ``Scheduler.cron()``
(:mod:`bench.rqscheduler_register`) as 7-field strings, which rq-scheduler's
``crontab`` library reads as ``sec min hour dom mon dow year``: every job is
due at the same second S, second-level timing works, no minute-boundary
fallback is needed (the registration checks each job's score is S).  Then
``rqscheduler --interval 1`` (its finest documented setting; the option takes
a float, but 1 s is what its help and the brief name) runs in its own process
and the same out-of-process watcher times the landings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import REDIS_DB_ANCHOR, flush, schedule_names
from bench.harness import (
    RESULTS,
    json_line,
    lateness_report,
    lead_secs,
    ours_cron,
    start_watcher,
)

ROOT = fixtures.ROOT
VENV = Path(os.environ.get("BTU_BENCH_RQS_VENV", "/tmp/btu-bench-rqscheduler-venv"))
INTERVAL = "1"


def ensure_venv() -> dict[str, Any]:
    """The venv's python and package versions, or ``{"error": why}``."""
    rq_version = metadata.version("rq")
    marker = VENV / "btu-bench.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("rq") == rq_version and (VENV / "bin" / "rqscheduler").exists():
            return info
    try:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                           capture_output=True, text=True, timeout=300)
        pip = subprocess.run(
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
             "--disable-pip-version-check", "rq-scheduler", f"rq=={rq_version}"],
            capture_output=True, text=True, timeout=600)
        if pip.returncode != 0:
            why = " ".join((pip.stderr or pip.stdout).split())[-400:]
            return {"error": f"pip install rq-scheduler rq=={rq_version} failed: {why}"}
        show = subprocess.run(
            [str(VENV / "bin" / "python"), "-c",
             "import json; from importlib.metadata import version as v; "
             "print(json.dumps({d: v(d) for d in ('rq-scheduler', 'rq', 'redis', 'crontab')}))"],
            capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(show.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return {"error": f"cannot set up {VENV}: {e}"}
    info["python"] = str(VENV / "bin" / "python")
    marker.write_text(json.dumps(info))
    return info


def case_rqscheduler_burst(case: str, n: int,
                           opts: argparse.Namespace | None = None) -> dict[str, Any]:
    venv = ensure_venv()
    if "error" in venv:
        return {"error": venv["error"], "expected": n}
    flush(REDIS_DB_ANCHOR)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", TZ="UTC")
    lead = lead_secs(opts, 6 + n * 0.003)
    first_due = math.ceil(time.time() + lead)
    spec = {"db": REDIS_DB_ANCHOR, "host": fixtures.REDIS_HOST, "port": fixtures.REDIS_PORT,
            "jobs": [[name, ours_cron(first_due), first_due] for name in schedule_names(n)]}
    spec_path = RESULTS / f"{case}.spec.json"
    spec_path.write_text(json.dumps(spec))
    python = str(VENV / "bin" / "python")
    try:
        reg = subprocess.run([python, "-m", "bench.rqscheduler_register", str(spec_path)],
                             cwd=str(ROOT), env=env, capture_output=True, text=True,
                             timeout=max(10, first_due - time.time() - 2))
        lines = [x for x in reg.stdout.splitlines() if x.startswith("{")]
        if reg.returncode != 0 or not lines:
            return {"error": "registering with rq-scheduler failed: "
                             + " ".join(reg.stderr.split())[-400:], "expected": n}
        registered = json.loads(lines[-1])
        if registered["at_due"] != n:
            return {"error": f"rq-scheduler scheduled only {registered['at_due']} of {n} jobs "
                             "at the due second", "expected": n, "registration": registered}
        deadline = first_due + 15
        watcher = start_watcher(REDIS_DB_ANCHOR, n, deadline, first_due)
        with open(RESULTS / f"{case}.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [str(VENV / "bin" / "rqscheduler"), "--host", fixtures.REDIS_HOST,
                 "--port", str(fixtures.REDIS_PORT), "--db", str(REDIS_DB_ANCHOR),
                 "--interval", INTERVAL, "--path", str(ROOT)],
                cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        started = time.time()
        try:
            watched = json_line(watcher, "watcher", timeout=deadline - time.time() + 10)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        report = lateness_report(case, REDIS_DB_ANCHOR, watched, n, first_due)
        report.update({
            "spread_secs": 1, "interval_secs": float(INTERVAL),
            "registration": registered, "margin_secs": round(first_due - started, 3),
            "versions": {k: v for k, v in venv.items() if k != "python"},
            "timing": "second-level (7-field crontab strings)",
        })
        return report
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        return {"error": f"rq-scheduler run failed: {e}", "expected": n}
    finally:
        flush(REDIS_DB_ANCHOR)
