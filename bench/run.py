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
import os
import time
from collections.abc import Callable
from typing import Any

from bench import fixtures
from bench.burst import case_burst_ha, case_burst_paired, case_ceiling
from bench.fixtures import REDIS_DB_ANCHOR, REDIS_DB_OURS
from bench.harness import RESULTS
from bench.idle import case_anchor_idle, case_file_idle, case_idle_and_ping
from bench.lateness import case_anchor, case_ours, case_plan
from bench.report import machine, ratios, table
from bench.rqscheduler import case_rqscheduler_burst

IDLE_SCHEDULES = 10_000  # idle, ping and anchor_idle, with or without --quick
PING_CLIENTS = 200

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
