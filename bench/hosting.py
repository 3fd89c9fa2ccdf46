"""Hosting: one daemon serving every site of a bench of N sites (500 by default).

``python -m bench.hosting [--sites 500] [--schedules 5] [--idle-secs 60]``

A hosting admin's bench (:mod:`bench.hosting_sites`): N sites, each with its
own database and MariaDB user, ``--schedules`` schedules each (none due for
hours), one redis-server of the case's own as the bench's ``redis_queue``.
The daemon runs as an admin runs it, ``twistd -n btu`` with a config of
``frappe_sites = ["*"]``, ``job_builder = "frappe_site"`` and nothing else
about the sites.  Measured:

* ``start``: from starting twistd until every site's socket answers ``ping``
  (p50 and last), then until every site's schedules are planned;
* ``idle``: after ``--settle-secs``, over ``--idle-secs``: CPU % of one core
  and RSS of the daemon (``/proc``), MariaDB connections held by the sites'
  users (``information_schema.PROCESSLIST``, sampled each second: max and
  mean) and the statements they sent per second (``USER_STATISTICS``, the
  ``userstat`` variable switched on for the case and restored after;
  MariaDB's global ``Com_select`` delta beside it, which counts every client
  of this MariaDB);
* ``burst``: every schedule of every site is edited by plain SQL (``modified``
  bumped, no socket request) to run at one second S (``--lead-secs`` ahead):
  how long until the daemon had planned them all (the change feed's pace),
  then the lateness of the last of the N x schedules jobs on the bench's
  queue (its ``enqueued_at`` after S, and when the bench's poll first saw
  them all), exactly once per (site, schedule), each carrying its own site;
* ``sighup`` (``--no-sighup`` skips it): with every site's first schedule
  running every ``--sighup-period`` seconds, ``--sighup-sites`` sites added and
  as many dropped, then SIGHUP: every staying site's runs exactly once across
  the reload and their lateness, the new sites answering and running, the
  dropped ones gone (:mod:`bench.hosting_reload`).

Result: a table on stdout, the details in ``bench/results/hosting.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, ROOT
from bench.hosting_reload import failed, lines, sighup_phase
from bench.hosting_sites import BENCH_ID, HostingBench, zset_key
from bench.hosting_sockets import ping_all
from bench.idle import _twistd, proc_sample
from bench.private_services import PrivateRedis, remove_tree
from bench.stats import summary
from tests.integration.support import admin_connection, write_config

QUIET_CRON = "0 0 3 1 1 *"  # 03:00 on the first of January: never during a case
QUEUE_KEY = f"rq:queue:{BENCH_ID}:default"


def wait_sockets(paths: dict[str, str], t0: float, proc: Any, limit: float) -> dict[str, float]:
    """Seconds from ``t0`` until each site's socket answered."""
    answered: dict[str, float] = {}
    while len(answered) < len(paths) and time.time() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"twistd exited {proc.returncode} during the start")
        pending = {site: path for site, path in paths.items() if site not in answered}
        for site, when in ping_all(pending).items():
            answered[site] = when - t0
        time.sleep(0.05)
    return answered


def planned(redis: Any, sites: list[str], when: int | None = None) -> int:
    """Sites whose every member is there (at ``when``, if given)."""
    pipe = redis.pipeline(transaction=False)
    for site in sites:
        pipe.zrange(zset_key(site), 0, -1, withscores=True)
    done = 0
    for members in pipe.execute():
        if members and (when is None or all(int(score) == when for _, score in members)):
            done += 1
    return done


def db_readings(users: set[str]) -> dict[str, float]:
    """Connections held by ``users`` now, their statements so far, MariaDB's Com_select."""
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT USER FROM information_schema.PROCESSLIST")
            held = sum(1 for (user,) in cur.fetchall() if user in users)
            cur.execute("SELECT USER, SELECT_COMMANDS, UPDATE_COMMANDS, OTHER_COMMANDS"
                        " FROM information_schema.USER_STATISTICS")
            selects = statements = 0
            for user, select, update, other in cur.fetchall():
                if user in users:
                    selects += int(select)
                    statements += int(select) + int(update) + int(other)
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
            com_select = int(cur.fetchone()[1])
    finally:
        conn.close()
    return {"held": held, "selects": selects, "statements": statements, "com_select": com_select}


@contextlib.contextmanager
def userstat_on() -> Any:
    """USER_STATISTICS counts each user's statements only while ``userstat`` is on."""
    conn = admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.userstat")
            before = int(cur.fetchone()[0])
            cur.execute("SET GLOBAL userstat = 1")
        yield
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL userstat = %s", (before,))
        conn.close()


def measure_idle(pid: int, users: set[str], window: float) -> dict[str, Any]:
    before, db0 = proc_sample(pid), db_readings(users)
    held: list[int] = []
    end = time.time() + window
    while time.time() < end:
        held.append(int(db_readings(users)["held"]))
        time.sleep(min(1.0, max(0.0, end - time.time())))
    after, db1 = proc_sample(pid), db_readings(users)
    secs = after["t"] - before["t"]
    return {
        "window_secs": round(secs, 1),
        "cpu_percent_of_one_core": round((after["cpu_secs"] - before["cpu_secs"]) / secs * 100, 2),
        "rss_mib": round(after["rss_mib"], 1),
        "connections_held_max": max(held),
        "connections_held_mean": round(sum(held) / len(held), 1),
        "selects_per_sec": round((db1["selects"] - db0["selects"]) / secs, 1),
        "statements_per_sec": round((db1["statements"] - db0["statements"]) / secs, 1),
        "com_select_per_sec_all_clients": round((db1["com_select"] - db0["com_select"]) / secs, 1),
    }


def burst(bench: HostingBench, redis: Any, lead: float) -> dict[str, Any]:
    """Every schedule edited by SQL to run at one second; their jobs checked."""
    sites = bench.names
    expected = len(sites) * len(bench.schedules)
    due = int(time.time() + lead)
    at = datetime.fromtimestamp(due, tz=UTC)
    edited = time.time()
    bench.set_cron(f"{at.second} {at.minute} {at.hour} {at.day} {at.month} * *")
    planned_at = None
    while time.time() < due - 0.5:
        if planned_at is None and planned(redis, sites, due) == len(sites):
            planned_at = time.time()
            break
        time.sleep(0.5)
    seen_all = None
    while time.time() < due + 30:
        if redis.llen(QUEUE_KEY) >= expected:
            seen_all = time.time()
            break
        time.sleep(0.002 if time.time() >= due else 0.05)
    time.sleep(2)  # any job enqueued twice would be there by now
    return {"due_in_secs": round(due - edited, 1),
            "sql_edits_planned_secs": None if planned_at is None else round(planned_at - edited, 1),
            "last_seen_late_ms": None if seen_all is None else round((seen_all - due) * 1000, 1),
            **check_jobs(redis, bench, due, expected)}


def check_jobs(redis: Any, bench: HostingBench, due: int, expected: int) -> dict[str, Any]:
    from rq.job import Job

    ids = [i.decode() for i in redis.lrange(QUEUE_KEY, 0, -1)]
    runs: Counter[tuple[str, str]] = Counter()
    late: list[float] = []
    wrong_site = 0
    for job_id in ids:
        job = Job.fetch(job_id, connection=redis)
        site = job.kwargs.get("site")
        if job.kwargs.get("kwargs", {}).get("site") != site:
            wrong_site += 1
        runs[(str(site), str(job.meta.get("task_schedule")))] += 1
        if job.enqueued_at is not None:
            late.append(job.enqueued_at.replace(tzinfo=UTC).timestamp() - due)
    wanted = {(site, name) for site in bench.names for name in bench.schedules}
    return {"jobs": len(ids), "expected": expected,
            "missing": len(wanted - set(runs)), "twice": sum(1 for n in runs.values() if n > 1),
            "unexpected": len(set(runs) - wanted), "wrong_site": wrong_site,
            "enqueued_late_ms": summary([x for x in late if x >= -5]),
            "early": sum(1 for x in late if x < 0)}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="btuhost", dir="/tmp"))
    redis_server = PrivateRedis(work)
    redis_server.start()
    redis = redis_server.client(timeout=10)
    proc = None
    log_path = RESULTS / "hosting.log"
    out: dict[str, Any] = {"sites": opts.sites, "schedules_per_site": opts.schedules,
                           "mysql_max_connections": opts.max_connections}
    t = time.time()
    bench = HostingBench(work, opts.sites, opts.schedules, QUIET_CRON,
                         f"redis://127.0.0.1:{redis_server.port}")
    out["setup_secs"] = round(time.time() - t, 1)
    try:
        config_path = work / "btu.toml"
        write_config(config_path, {
            "frappe_bench_path": str(bench.path), "frappe_sites": ["*"],
            "socket_path": str(work / "{site}.sock"), "job_builder": "frappe_site",
            "frappe_job_id_style": "uuid", "mysql_max_connections": opts.max_connections,
            "tracing_level": "INFO",
        })
        paths = {site: str(work / f"{site}.sock") for site in bench.names}
        users = set(bench.users.values())
        with userstat_on(), open(log_path, "w") as log:
            t0 = time.time()
            proc = subprocess.Popen(_twistd() + ["-n", "--pidfile=", "btu", "--config",
                                                 str(config_path)],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=str(work),
                                    env=_env())
            answered = wait_sockets(paths, t0, proc, opts.start_limit)
            times = sorted(answered.values())
            out["start"] = {"answered": len(answered),
                            "p50_secs": round(times[len(times) // 2], 2) if times else None,
                            "all_secs": round(times[-1], 2) if times else None}
            while planned(redis, bench.names) < len(bench.names) and time.time() - t0 < 120:
                time.sleep(0.2)
            out["start"]["all_planned_secs"] = round(time.time() - t0, 2)
            out["start"]["sites_planned"] = planned(redis, bench.names)
            time.sleep(opts.settle_secs)
            out["idle"] = measure_idle(proc.pid, users, opts.idle_secs)
            out["burst"] = burst(bench, redis, opts.lead_secs)
            time.sleep(opts.quiet_secs)  # the burst's replans and job-id writes settle
            out["rss_mib_end"] = round(proc_sample(proc.pid)["rss_mib"], 1)
            out["connections_held_end"] = db_readings(users)["held"]
            if opts.sighup:
                out["sighup"] = sighup_phase(
                    bench, redis, proc, work, log_path, QUEUE_KEY, opts.sighup_sites,
                    opts.sighup_period, opts.sighup_after_secs, QUIET_CRON)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        bench.drop()
        redis_server.stop()
        remove_tree(work)
    running, _, stopping = log_path.read_text(errors="replace").partition("Received SIGTERM")
    out["log_errors"] = _errors(running)
    out["log_errors_while_stopping"] = _errors(stopping)
    out["load_avg"] = os.getloadavg()
    return out


def _env() -> dict[str, str]:
    """The checkout's btu_twisted for the daemon, as every other case has it: run
    from ``work``, twistd would import the copy installed in the venv, which
    may be any older one (one pool per site: 500 connections and MariaDB's
    "Too many connections" for everyone)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def _errors(text: str) -> int:
    return sum(1 for line in text.splitlines()
               if "#error]" in line or "#critical]" in line or "Traceback" in line)


def table(r: dict[str, Any]) -> str:
    s, i, b = r["start"], r["idle"], r["burst"]
    late = b["enqueued_late_ms"]
    return "\n".join([
        f"{r['sites']} sites x {r['schedules_per_site']} schedules, mysql_max_connections "
        f"{r['mysql_max_connections']}; load {', '.join(f'{x:.2f}' for x in r['load_avg'])}",
        f"start -> every socket answers  {s['all_secs']} s ({s['answered']} of {r['sites']};"
        f" p50 {s['p50_secs']} s), all planned {s['all_planned_secs']} s",
        f"idle RSS / CPU                 {i['rss_mib']} MiB / {i['cpu_percent_of_one_core']} %"
        " of a core",
        f"MariaDB connections held      max {i['connections_held_max']}, mean "
        f"{i['connections_held_mean']}",
        f"idle statements/s (SELECT)     {i['statements_per_sec']} ({i['selects_per_sec']});"
        f" Com_select/s of all clients {i['com_select_per_sec_all_clients']}",
        f"SQL edits planned after        {b['sql_edits_planned_secs']} s",
        f"burst of {b['expected']} at one second  {b['jobs']} jobs, missing {b['missing']}, twice"
        f" {b['twice']}, wrong site {b['wrong_site']}; enqueued late p50 {late.get('p50_ms')} ms,"
        f" max {late.get('max_ms')} ms; all on the queue {b['last_seen_late_ms']} ms after S",
        f"log lines at error or above    {r['log_errors']} (while stopping:"
        f" {r['log_errors_while_stopping']})",
        *(lines(r["sighup"]) if "sighup" in r else []),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hosting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--schedules", type=int, default=5, help="per site")
    parser.add_argument("--max-connections", type=int, default=10,
                        help="the daemon's mysql_max_connections")
    parser.add_argument("--settle-secs", type=float, default=20.0)
    parser.add_argument("--idle-secs", type=float, default=60.0)
    parser.add_argument("--lead-secs", type=float, default=50.0,
                        help="from the SQL edit to the burst's second")
    parser.add_argument("--start-limit", type=float, default=90.0)
    parser.add_argument("--quiet-secs", type=float, default=10.0,
                        help="after the burst's check, before stopping the daemon")
    parser.add_argument("--sighup", action=argparse.BooleanOptionalAction, default=True,
                        help="then add and drop sites and send SIGHUP (bench/hosting_reload.py)")
    parser.add_argument("--sighup-sites", type=int, default=10,
                        help="sites added, and as many dropped, at the SIGHUP")
    parser.add_argument("--sighup-period", type=int, default=5,
                        help="seconds between the runs of each site's schedule meanwhile "
                             "(1 at 500 sites is more than this 2-core machine keeps up with)")
    parser.add_argument("--sighup-after-secs", type=float, default=15.0,
                        help="runs checked until this long after the reload")
    opts = parser.parse_args(argv)
    result = run(opts)
    (RESULTS / "hosting.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(table(result))
    b = result["burst"]
    ok = (result["start"]["answered"] == opts.sites and b["missing"] == 0 and b["twice"] == 0
          and b["wrong_site"] == 0 and b["unexpected"] == 0
          and not ("sighup" in result and failed(result["sighup"])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
