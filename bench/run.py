"""Run every benchmark in one go: ``python -m bench.run [--quick|--smoke] [--profile] [--only ...]``.

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
from typing import Any, NamedTuple

from bench import fixtures, smoke
from bench.burst import PAIRS, case_burst_ha, case_burst_paired, case_ceiling
from bench.fixtures import REDIS_DB_ANCHOR, REDIS_DB_OURS
from bench.harness import RESULTS
from bench.idle import SETTLE_SECS, case_anchor_idle, case_file_idle, case_idle_and_ping
from bench.lateness import case_anchor, case_ours, case_plan
from bench.report import machine, ratios, table
from bench.rqscheduler import case_rqscheduler_burst

IDLE_SCHEDULES = 10_000  # idle, ping and anchor_idle, with or without --quick
PING_CLIENTS = 200

CASES = ("plan", "burst", "anchor_burst", "anchor_rqs_burst", "spread", "anchor_spread",
         "burst10k", "ceiling10k", "burst10k_paired", "burst10k_x3", "file_burst",
         "anchor_burst10k",
         "file_spread", "anchor_spread10k", "idle", "ping", "file_idle", "anchor_idle")


class Sizes(NamedTuple):
    plan: int            # plan
    n: int               # burst, spread and their anchors
    big: int             # the *10k cases, ceiling10k and the file cases
    spread: int          # seconds the spread cases spread over
    idle: int            # schedules of the idle cases (and ping's daemon)
    idle_secs: float     # their window
    settle_secs: float   # after planning, before the idle window
    ping_clients: int
    ping_rounds: int
    pairs: int           # bursts of burst10k_paired


FULL = Sizes(10000, 1000, 10000, 60, IDLE_SCHEDULES, 60.0, SETTLE_SECS, PING_CLIENTS, 500, PAIRS)
QUICK = FULL._replace(plan=2000, n=200, big=1000, spread=10, idle_secs=15.0, ping_rounds=100)
#: ``--smoke``: every case runs, none measures anything worth reading.
SMOKE = Sizes(200, 20, 60, 2, 200, 1.0, 0.5, 5, 5, 1)


def sizes(opts: argparse.Namespace) -> Sizes:
    return SMOKE if getattr(opts, "smoke", False) else QUICK if opts.quick else FULL


def case_runners(opts: argparse.Namespace,
                 selected: list[str]) -> dict[str, Callable[[], dict[str, Any]]]:
    """What runs each case of CASES, at the sizes ``opts.quick`` (or ``opts.smoke``)
    says (``selected``: the idle daemon serves the pings too when both are).  A
    function of its own so that tests can check it knows every case without
    running one."""
    z = sizes(opts)

    def idle_and_ping(which: str) -> dict[str, Any]:
        # One idle daemon serves both: the ping clients come after the idle window.
        if which == "ping" and "ping" in shared:
            return shared.pop("ping")
        got = case_idle_and_ping(z.idle, z.idle_secs, "idle" in selected, "ping" in selected,
                                 z.ping_clients, z.ping_rounds, settle=z.settle_secs)
        if which == "idle" and "ping" in got:
            shared["ping"] = got["ping"]
        return got[which]

    shared: dict[str, Any] = {}
    return {
        "plan": lambda: case_plan(opts, z.plan),
        "burst": lambda: case_ours(opts, "burst", z.n, 1),
        "anchor_burst": lambda: case_anchor(opts, "anchor_burst", z.n, 1),
        "anchor_rqs_burst": lambda: case_rqscheduler_burst("anchor_rqs_burst", z.n, opts),
        "spread": lambda: case_ours(opts, "spread", z.n, z.spread),
        "anchor_spread": lambda: case_anchor(opts, "anchor_spread", z.n, z.spread),
        "burst10k": lambda: case_ours(opts, "burst10k", z.big, 1),
        "ceiling10k": lambda: case_ceiling(z.big),
        "burst10k_paired": lambda: case_burst_paired(opts, z.big, z.pairs),
        "burst10k_x3": lambda: case_burst_ha(opts, "burst10k_x3", z.big),
        "idle": lambda: idle_and_ping("idle"),
        "ping": lambda: idle_and_ping("ping"),
        "anchor_idle": lambda: case_anchor_idle(z.idle, z.idle_secs, z.settle_secs),
        # The same N as burst10k (and the same due instants as their anchors).
        "file_burst": lambda: case_ours(opts, "file_burst", z.big, 1, source="file"),
        "anchor_burst10k": lambda: case_anchor(opts, "anchor_burst10k", z.big, 1),
        "file_spread": lambda: case_ours(opts, "file_spread", z.big, z.spread, source="file"),
        "anchor_spread10k": lambda: case_anchor(opts, "anchor_spread10k", z.big, z.spread),
        "file_idle": lambda: case_file_idle(z.idle, z.idle_secs, z.settle_secs),
    }


def problems(case: str, result: dict[str, Any]) -> list[str]:
    """What makes a smoke case fail: an error, a fatal daemon, a job early or
    missing, a run enqueued twice."""
    found = []
    if result.get("error"):
        found.append(f"error: {str(result['error'])[:300]}")
    if result.get("fatal"):
        found.append(f"daemon fatal: {str(result['fatal'])[:300]}")
    if "landed" in result and isinstance(result["landed"], int) \
            and result["landed"] < result.get("expected", 0):
        found.append(f"landed {result['landed']} of {result['expected']}")
    if result.get("early"):
        found.append(f"{result['early']} jobs landed before their second")
    if case == "burst10k_x3" and not result.get("exactly_once"):
        found.append(f"not exactly once: {result.get('doubles')} doubles, "
                     f"{result.get('missing')} missing")
    if case == "burst10k_paired" and not result.get("landed_all"):
        found.append("not every pair's burst landed")
    if case == "plan" and result.get("plan_secs") is None:
        found.append("did not plan every schedule")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N, short spread (smoke run)")
    parser.add_argument("--smoke", action="store_true",
                        help="every case tiny, on private redis-servers, and bench.scale, "
                             "bench.micro, bench.cli_speed and bench.soak as small; about a "
                             "minute; exit 1 if any fails (bench.smoke)")
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
    if opts.smoke and not fixtures.on_private_redis():
        # Never on the shared Redis: bench.smoke starts one per group of cases
        # and runs this again inside it.
        return smoke.main(selected if opts.only else None)

    RESULTS.mkdir(parents=True, exist_ok=True)
    if not opts.smoke:
        # The smoke drops only the databases it made: another run may own these.
        fixtures.drop_leftover_databases()
    runners = case_runners(opts, selected)
    results: dict[str, Any] = {"machine": machine(), "quick": opts.quick, "smoke": opts.smoke,
                               "profiled": opts.profile,
                               "patched": os.environ.get("BTU_BENCH_PATCH") or None,
                               "cases": {}}
    failed: dict[str, list[str]] = {}
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
            if not opts.smoke:
                results["cases"][case] = runners[case]()
            else:
                try:
                    results["cases"][case] = runners[case]()
                except Exception as e:  # a smoke goes on and reports every case
                    results["cases"][case] = {"error": f"{type(e).__name__}: {e}"}
                failed_here = problems(case, results["cases"][case])
                if failed_here:
                    failed[case] = failed_here
                    print(f"FAILED {case}: {'; '.join(failed_here)}", flush=True)
        results["cases"][case]["case_wall_secs"] = round(time.time() - t, 1)
    # A failed smoke case may lack what the table and the ratios read.
    shown = {**results, "cases": {c: r for c, r in results["cases"].items() if c not in failed}}
    results["ratios"] = ratios(shown["cases"])
    results["total_wall_secs"] = round(time.time() - began, 1)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(table({**shown, "ratios": results["ratios"]}))
    print(f"total {results['total_wall_secs']} s; details in {RESULTS / 'latest.json'}")
    if opts.smoke:
        print(f"smoke: {len(failed)} of {len(selected)} cases failed"
              + (f": {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
