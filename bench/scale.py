"""Scale: N enabled schedules (100,000 by default), start, refresh, cancel.

``python -m bench.scale [--n 100000] [--code DIR] [--cases warm,cold]``

The orchestrator makes a ``btu_bench_scale_*`` database with N enabled schedules
(bulk INSERT, 50 cron strings none of which fires in the next 15 minutes, so
no claim disturbs the figures), holds the lock of Redis database 10 as the
``bench.run`` cases do, and runs the daemon in a fresh process
(``python -m bench.scale --case SPEC``) that measures, on the real reactor,
the following.  Two cases, each with a database and a daemon of its own,
reported side by side:

* ``warm``: every schedule, and 1 % more deleted ones, has a last run a day
  old in ``last_enqueued`` (what a refresh walks to forget the deleted ones):
  a daemon restarted on a Redis that kept its data;
* ``cold``: Redis is empty, no schedule has a last run: a fresh install, or a
  Redis restarted without persistence.

Each case measures:

* ``plan_secs``: ``startService()`` until ``ZCARD`` reaches N and the FIFO is
  empty; ``rss_mib_planned`` (``VmRSS``) and ``rss_mib_peak_planned``
  (``VmHWM``, the process's peak so far) then, ``rss_mib_peak_refreshed``
  after the two refreshes below, ``rss_mib_end`` after the cancels;
* ``refresh_same``: one full refresh with nothing changed, and
  ``refresh_changed``: one after 1 % of the rows got another cron string
  (``modified`` left alone, so only the refresh can see it): CPU seconds of
  the whole process (its database threads included) from the trigger until
  the planner is idle again, wall seconds, and how many names were planned;
* ``cancel``: 100 ``cancel_task_schedule`` requests on the daemon's Unix
  socket, one after the other, each on its own connection (as the BTU app
  sends them), from a child process (the reactor is otherwise idle):
  connect-to-reply p50/p99/max in ms;
* ``keys_lost``: then ``FLUSHDB`` under the running daemon (Redis restarted
  without persistence): seconds until every schedule is planned again (the
  daemon looks for its keys every 2 s), and the peak RSS by then;
* ``slowlog``: the Redis ``SLOWLOG`` entries over 10 ms from the daemon's own
  connections during all of the above, the longest per command (scripts
  named by the store's name for them).  The orchestrator sets
  ``slowlog-log-slower-than`` to 10000 and restores it afterwards.

``--code DIR`` runs the daemon from DIR (first on its ``sys.path``), so that a
``btu_twisted`` package extracted there (``git archive main btu_twisted |
tar -x -C DIR``) is measured with this benchmark: the before/after figures.
Result: one table on stdout, the cases side by side; the details in
``bench/results/scale.json``, by case.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.fixtures import FUNCTION, REDIS_DB_OURS, TASK, flush, schedule_names, sync_redis
from bench.harness import RESULTS, daemon_config, planning_crons
from bench.scale_readings import (
    SlowLog,
    _cancel_in_child,
    _cancel_round_trips,
    _cpu,
    _rss_mib,
)

SLOW_USECS = 10_000
QUIET_SECS = 900


class ScaleDatabase(fixtures.BenchDatabase):
    """A ``btu_bench_scale_*`` database: a ``bench.run`` starting meanwhile drops
    other ``btu_bench_*`` ones as leftovers of a crashed run, but not these."""

    def __init__(self, zone: str = "UTC") -> None:
        fixtures.support.TestDatabase.__init__(self, load_samples=False,
                                               prefix="btu_bench_scale_")
        self.set_zone(zone)
        self.add_task(TASK, FUNCTION, "{'source': 'btu bench'}", desc="Benchmark no-op")


# -- the daemon's side ------------------------------------------------------------

async def _idle(reactor: Any, service: Any, settle: float = 0.3) -> None:
    """Until no refresh is in flight, the FIFO is empty and the planner has
    planned nothing for ``settle`` s (the start's refresh may still be
    forgetting last runs when every schedule is planned)."""
    from twisted.internet import task

    last, quiet_since = -1, time.time()
    while True:
        planned = service.planner.planned_total
        busy = getattr(service.refresh, "_in_flight", None) is not None
        if busy or len(service.fifo) or planned != last:
            last, quiet_since = planned, time.time()
        elif time.time() - quiet_since >= settle:
            return
        await task.deferLater(reactor, 0.02, lambda: None)


async def _refresh(reactor: Any, service: Any) -> dict[str, Any]:
    planned, cpu, wall = service.planner.planned_total, _cpu(), time.time()
    await service.refresh.trigger()
    await _idle(reactor, service)
    return {
        # The settling wait (idle reactor) is in the wall time, not the CPU.
        "cpu_secs": round(_cpu() - cpu, 3),
        "wall_secs_incl_settle": round(time.time() - wall, 3),
        "planned": service.planner.planned_total - planned,
        "refresh_secs": round(float(service.refresh.last.get("duration", 0.0)), 3),
    }


async def run_case(reactor: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from twisted.internet import task, threads

    from bench.daemon_case import start_logging
    from btu_twisted.config import log_level, parse_config
    from btu_twisted.daemon.service import BtuService
    from btu_twisted.store.schedule_store import SCHEDULE_SET

    config, warnings = parse_config(spec["config"])
    start_logging(spec["log_file"], log_level(config))
    n = int(spec["n"])
    slow = SlowLog(REDIS_DB_OURS)
    fatal: list[str] = []
    service = BtuService(config, reactor, on_fatal=fatal.append, warnings=warnings)
    out: dict[str, Any] = {"n": n, "code": spec.get("code") or "worktree"}
    profiler = cProfile.Profile() if spec.get("profile") else None
    if profiler is not None:
        profiler.enable()
    t0, cpu0 = time.time(), _cpu()
    await service.startService()
    if fatal:
        return {"fatal": fatal}
    try:
        slow.note_clients()
        deadline = t0 + float(spec.get("timeout", 600))
        count = 0
        while time.time() < deadline:
            count = int(await service.redis.command("ZCARD", SCHEDULE_SET))
            if count >= n and not len(service.fifo):
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        out["plan_secs"] = round(time.time() - t0, 3)
        out["plan_cpu_secs"] = round(_cpu() - cpu0, 3)
        out["plan_batches"] = service.planner.batches
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"].replace(".refresh.", ".plan."))
        out["zcard"] = count
        await _idle(reactor, service)
        out["rss_mib_planned"] = _rss_mib()
        out["rss_mib_peak_planned"] = _rss_mib("VmHWM")
        slow.note_clients()
        profiler = cProfile.Profile() if spec.get("profile") else None
        if profiler is not None:
            profiler.enable()
        out["refresh_same"] = await _refresh(reactor, service)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
        changed = spec["changed"]
        await threads.deferToThread(_change_rows, spec["database"], changed)
        out["refresh_changed"] = await _refresh(reactor, service)
        out["refresh_changed"]["rows_changed"] = len(changed)
        out["rss_mib_peak_refreshed"] = _rss_mib("VmHWM")
        out["cancel"] = await threads.deferToThread(
            _cancel_in_child, config.socket_path, spec["cancel"])
        out["rss_mib_end"] = _rss_mib()
        out["rss_mib_peak"] = _rss_mib("VmHWM")
        # By the bench's own client (not in the slow log's figures): a whole-set read.
        members = [m.decode() for m in slow.redis.zrange(SCHEDULE_SET, 0, -1)]
        out["members_after_refreshes"] = len(members)
        out["changed_rows_planned_right"] = _check_changed(members, changed)
        out["keys_lost"] = await _keys_lost(reactor, service, slow.redis, n,
                                            float(spec.get("timeout", 600)))
        out["slowlog"] = slow.read()
        out["code_file"] = sys.modules[BtuService.__module__].__file__
    finally:
        await service.stopService()
    return out


async def _keys_lost(reactor: Any, service: Any, admin: Any, n: int,
                     timeout: float) -> dict[str, Any]:
    """FLUSHDB under the running daemon (a Redis restarted without persistence):
    seconds until every schedule is planned again, and the peak RSS since start."""
    from twisted.internet import task, threads

    from btu_twisted.store.schedule_store import SCHEDULE_SET

    t0 = time.time()
    await threads.deferToThread(admin.flushdb)
    count = 0
    while time.time() < t0 + timeout:
        count = int(await service.redis.command("ZCARD", SCHEDULE_SET))
        if count >= n and not len(service.fifo):
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    return {"secs": round(time.time() - t0, 3), "zcard": count,
            "rss_mib_peak": _rss_mib("VmHWM")}


def _change_rows(database: str, changed: dict[str, str]) -> None:
    from tests.integration.support import admin_connection

    conn = admin_connection(database)
    try:
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE `tabBTU Task Schedule` SET cron_string = %s WHERE name = %s",
                [(cron, name) for name, cron in changed.items()],
            )
    finally:
        conn.close()


def _check_changed(members: list[str], changed: dict[str, str]) -> int:
    """How many changed schedules hold the member their new cron string gives."""
    from btu_twisted.cron import next_run

    now = time.time()
    owned = {m.rpartition("|")[0]: int(m.rpartition("|")[2]) for m in members}
    return sum(
        1 for name, cron in changed.items()
        if owned.get(name) is not None and owned[name] == next_run(cron, "UTC", now)
    )


def case_main(spec_path: str) -> None:
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {}

    def go(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(run_case(reactor, spec))
        d.addCallback(result.update)
        return d

    try:
        task.react(go)
    except SystemExit as e:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        raise SystemExit(e.code) from None


# -- the orchestrator ------------------------------------------------------------

def crons(now: float) -> tuple[list[str], list[str]]:
    """50 cron strings for the schedules and 50 others for the changed rows,
    none firing within QUIET_SECS."""
    chosen = planning_crons(now, 100, QUIET_SECS)
    return chosen[:50], chosen[50:]


def seed_last_runs(admin: Any, names: list[str], now: float) -> None:
    """A last run a day ago for every schedule (they have been running), and
    for 1 % more that were deleted since: what a refresh's forgetting walks."""
    from btu_twisted.store.schedule_store import LAST_ENQUEUED

    gone = [f"GONE-{i:06d}" for i in range(len(names) // 100)]
    runs = names + gone
    for start in range(0, len(runs), 5000):
        admin.hset(LAST_ENQUEUED, mapping={name: int(now) - 86400
                                           for name in runs[start:start + 5000]})


def run(n: int, code: str | None, changed_pct: float, cancels: int,
        profile: bool = False, cold: bool = False) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    case = "cold" if cold else "warm"
    with fixtures.redis_dbs_locked((REDIS_DB_OURS,)):
        flush(REDIS_DB_OURS)
        admin = sync_redis(REDIS_DB_OURS)
        admin.client_setname("bench")
        old_slow = admin.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
        old_len = admin.config_get("slowlog-max-len")["slowlog-max-len"]
        db = ScaleDatabase()
        try:
            t = time.time()
            base, others = crons(t)
            names = schedule_names(n)
            db.add_schedules((name, base[i % len(base)]) for i, name in enumerate(names))
            insert_secs = time.time() - t
            if not cold:
                seed_last_runs(admin, names, t)
            step = max(1, round(100 / changed_pct))
            changed = {name: others[i % len(others)] for i, name in enumerate(names[::step])}
            # Never a changed row: those are checked after the cancels.
            cancel = [names[(len(names) * k // cancels + 1) % n] for k in range(cancels)]
            cancel = [c for c in cancel if c not in changed]
            admin.config_set("slowlog-log-slower-than", SLOW_USECS)
            admin.config_set("slowlog-max-len", max(1024, int(old_len)))
            spec = {
                "n": n, "database": db.name, "changed": changed, "cancel": cancel,
                "code": code, "timeout": 900,
                "profile": (str(RESULTS / f"scale.{case}.refresh.prof") if profile
                            else None),
                "log_file": str(RESULTS / "scale.log"),
                "config": daemon_config(db.name, REDIS_DB_OURS),
            }
            Path(spec["log_file"]).unlink(missing_ok=True)
            spec_path = RESULTS / "scale.spec.json"
            spec_path.write_text(json.dumps(spec))
            env = dict(os.environ)
            path = [str(fixtures.ROOT), env.get("PYTHONPATH", "")]
            if code:
                path.insert(0, os.path.abspath(code))
            env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
            # ``-m`` puts the working directory first on sys.path: with --code
            # that is DIR, so its btu_twisted wins over this tree's.
            proc = subprocess.run(
                [sys.executable, "-m", "bench.scale", "--case", str(spec_path)],
                cwd=os.path.abspath(code) if code else str(fixtures.ROOT), env=env, text=True,
                capture_output=True, timeout=1800,
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise RuntimeError(f"scale case printed nothing: {proc.stderr[-3000:]}")
            result = json.loads(lines[-1])
            result["case"] = case
            result["insert_secs"] = round(insert_secs, 1)
            result["load_avg"] = os.getloadavg()
            return result
        finally:
            admin.config_set("slowlog-log-slower-than", old_slow)
            admin.config_set("slowlog-max-len", old_len)
            db.drop()
            flush(REDIS_DB_OURS)


def _rows(r: dict[str, Any]) -> dict[str, str]:
    """One case's figures, by the table's row names."""
    if "fatal" in r:
        return {"start -> all planned": f"could not start: {r['fatal']}"[:60]}
    same, changed, cancel = r["refresh_same"], r["refresh_changed"], r["cancel"]["ms"]
    slow = r["slowlog"]["max_ms_by_command"]
    rows = {
        "start -> all planned": f"{r['plan_secs']:.2f} s (CPU {r['plan_cpu_secs']:.2f} s,"
                                f" {r.get('plan_batches', '?')} batches)",
        "RSS planned / end": f"{r['rss_mib_planned']:.1f} / {r['rss_mib_end']:.1f} MiB",
        "peak RSS planned / refreshed": f"{r['rss_mib_peak_planned']:.1f} /"
                                        f" {r['rss_mib_peak_refreshed']:.1f} MiB",
        "refresh, nothing changed": f"{same['cpu_secs']:.2f} s CPU, {same['planned']} planned",
        "refresh, 1 % changed": f"{changed['cpu_secs']:.2f} s CPU, {changed['planned']} planned"
                                f" ({r['changed_rows_planned_right']}/{changed['rows_changed']}"
                                " right)",
        "cancel p50 / p99 / max": f"{cancel.get('p50_ms')} / {cancel.get('p99_ms')} /"
                                  f" {cancel.get('max_ms')} ms",
        "keys lost -> all planned": f"{r['keys_lost']['secs']:.2f} s, peak RSS since start"
                                    f" {r['keys_lost']['rss_mib_peak']:.1f} MiB",
        "SLOWLOG > 10 ms": f"{r['slowlog']['entries']} entries",
    }
    for command, ms in sorted(slow.items()):
        rows[f"  {command}"] = f"max {ms:.1f} ms"
    return rows


def table(results: list[dict[str, Any]]) -> str:
    """The cases side by side, one column each."""
    columns = [_rows(r) for r in results]
    names: list[str] = []
    for rows in columns:
        names += [name for name in rows if name not in names]
    first = results[0]
    head = (f"N = {first['n']} ({first['code']}); load "
            f"{', '.join(f'{x:.2f}' for x in first.get('load_avg', ()))}")
    width = [max([len(r.get("case", "?")), *(len(c.get(n, "")) for n in names)])
             for r, c in zip(results, columns, strict=True)]
    lines = [head, f"{'':30s}" + "  ".join(f"{r.get('case', '?'):{w}s}"
                                          for r, w in zip(results, width, strict=True))]
    for name in names:
        lines.append(f"{name:30s}" + "  ".join(f"{c.get(name, '-'):{w}s}"
                                              for c, w in zip(columns, width, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="enabled schedules")
    parser.add_argument("--code", help="directory holding the btu_twisted package to measure")
    parser.add_argument("--cases", default="warm,cold",
                        help="warm (every schedule has a last run a day old), cold (empty "
                             "Redis: none has); each with its own database and daemon")
    parser.add_argument("--changed-pct", type=float, default=1.0)
    parser.add_argument("--cancels", type=int, default=100)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the start's planning and the unchanged refresh "
                             "(reactor thread only): bench/results/scale.{plan,refresh}.prof")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--cancel-client", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.case:
        case_main(opts.case)
        return 0
    if opts.cancel_client:
        names = json.loads(sys.stdin.read())
        print(json.dumps(_cancel_round_trips(opts.cancel_client, names)))
        return 0
    cases = [case.strip() for case in opts.cases.split(",") if case.strip()]
    unknown = set(cases) - {"warm", "cold"}
    if unknown or not cases:
        parser.error(f"--cases takes warm and/or cold, not {opts.cases!r}")
    results = [run(opts.n, opts.code, opts.changed_pct, opts.cancels, opts.profile,
                   cold=case == "cold") for case in cases]
    (RESULTS / "scale.json").write_text(
        json.dumps({r["case"]: r for r in results}, indent=2, sort_keys=True) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
