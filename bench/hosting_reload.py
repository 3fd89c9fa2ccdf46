"""The SIGHUP phase of :mod:`bench.hosting`: sites added and dropped under load.

Every site's first schedule is edited to run every ``period`` seconds (by SQL,
then ``create_task_schedule`` on its socket, as the BTU app does) and left to
run until each site has a member due soon, plus a few seconds of steady runs.
Then ``count`` new sites are made as ``bench new-site`` makes them (that
schedule already every ``period`` seconds), ``count`` sites are dropped as
``bench drop-site`` leaves them (the directory moved to ``archived_sites``),
and the daemon gets SIGHUP.  ``after`` seconds after the reload's log line,
every job of that schedule on the bench's queue is read back:

* every site that stayed has exactly one job for each scheduled second from
  before the edit settled to the end, each carrying its own site; lateness
  (``enqueued_at`` minus the second) before, around and after the reload;
* every new site answers ``ping``, and runs every scheduled second from its
  first on, exactly once; how long after the SIGHUP the first came;
* every dropped site's socket is gone and no run of it is scheduled after that.

The reload's duration is from the signal to the daemon's ``sites reloaded``
line (the log is polled every 50 ms).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections import Counter, defaultdict
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.hosting_sites import HostingBench, zset_key
from bench.hosting_sockets import ping_all
from bench.stats import summary

RELOADED = "sites reloaded:"


def every(period: int) -> str:
    """A 7-field cron (seconds first) due every ``period`` seconds."""
    return "* * * * * * *" if period == 1 else f"*/{period} * * * * * *"


def create_request(schedule: str) -> bytes:
    return json.dumps({"request_type": "create_task_schedule",
                       "request_content": schedule}).encode() + b"\n"


def sighup_phase(bench: HostingBench, redis: Any, proc: Any, work: Path, log_path: Path,
                 queue_key: str, count: int, period: int, after: float,
                 quiet_cron: str) -> dict[str, Any]:
    fast = bench.schedules[0]
    cron = every(period)
    paths = {site: str(work / f"{site}.sock") for site in bench.names}
    t_edit = time.time()
    bench.set_cron(cron, schedule=fast)
    asked = ping_all(paths, wait=5.0, request=create_request(fast), answer=b"BTU")
    soon_all = _wait_fast_planned(redis, bench.names, fast, period, limit=60.0)
    out: dict[str, Any] = {"period_secs": period, "sites_added": count, "sites_dropped": count,
                           "create_requests_answered": len(asked),
                           "fast_planned_secs": None if soon_all is None
                           else round(soon_all - t_edit, 1)}
    time.sleep(2 * period + 1)  # every site's runs under way before the window opens
    t_from = time.time()
    time.sleep(max(5.0, 3 * period))  # runs before the reload, to compare with
    dropped = bench.names[-count:]
    t_made = time.time()
    new = bench.add_sites(count, [cron] + [quiet_cron] * (len(bench.schedules) - 1))
    bench.remove_sites(dropped)
    staying = [site for site in bench.names if site not in new]
    offset = log_path.stat().st_size
    t_hup = time.time()
    out["sites_made_secs"] = round(t_hup - t_made, 1)
    os.kill(proc.pid, signal.SIGHUP)
    seen = _watch_reload(work, log_path, offset, new, dropped, t_hup, limit=90.0)
    t_reloaded = t_hup + (seen["reloaded_secs"] or 0.0)
    time.sleep(after)
    t_to = time.time()
    gone_at = seen.pop("gone_at")
    out.update(seen)
    for wait in (3, 5, 10):  # the last seconds' runs may still be on their way
        time.sleep(wait)
        jobs = _jobs(redis, queue_key, fast, t_from - period)
        check = _check(jobs, staying, new, dropped, period, t_from, t_hup, t_reloaded, t_to,
                       gone_at)
        if not check["staying_missing"]:
            break
    out["read_back_after_secs"] = round(time.time() - t_to, 1)
    out.update(check)
    return out


def _wait_fast_planned(redis: Any, sites: list[str], fast: str, period: int,
                       limit: float) -> float | None:
    """When every site's ``fast`` member was due within two periods of now."""
    end = time.time() + limit
    while time.time() < end:
        pipe = redis.pipeline(transaction=False)
        for site in sites:
            pipe.zrange(zset_key(site), 0, -1, withscores=True)
        soon = time.time() + 2 * period + 1
        done = sum(1 for members in pipe.execute()
                   if any(m.decode().startswith(f"{fast}|") and s <= soon for m, s in members))
        if done == len(sites):
            return time.time()
        time.sleep(0.2)
    return None


def _watch_reload(work: Path, log_path: Path, offset: int, new: list[str],
                  dropped: list[str], t_hup: float, limit: float) -> dict[str, Any]:
    """From the signal: the ``sites reloaded`` line, the new sockets' first pong,
    the dropped sockets' disappearance (seconds, and when each went)."""
    new_paths = {site: str(work / f"{site}.sock") for site in new}
    answered: dict[str, float] = {}
    gone_at: dict[str, float] = {}
    reloaded: float | None = None
    line = ""
    while time.time() - t_hup < limit:
        now = time.time()
        for site in dropped:
            if site not in gone_at and not os.path.exists(work / f"{site}.sock"):
                gone_at[site] = now
        if reloaded is None:
            with open(log_path, errors="replace") as log:
                log.seek(offset)
                text = log.read()
            if RELOADED in text:
                reloaded = now - t_hup
                line = text[text.index(RELOADED):].split("\n", 1)[0][:200]
        pending = {s: p for s, p in new_paths.items() if s not in answered}
        if pending:
            for site, when in ping_all(pending, wait=0.05).items():
                answered[site] = when - t_hup
        if reloaded is not None and not pending and len(gone_at) == len(dropped):
            break
        time.sleep(0.05)
    return {"reloaded_secs": None if reloaded is None else round(reloaded, 2),
            "reloaded_line": line,
            "new_answered": len(answered),
            "new_answered_secs": round(max(answered.values()), 2) if answered else None,
            "dropped_sockets_gone": len(gone_at),
            "dropped_gone_secs": round(max(gone_at.values()) - t_hup, 2) if gone_at else None,
            "gone_at": gone_at}


def _jobs(redis: Any, queue_key: str, fast: str,
          since: float) -> list[tuple[str, int, float, bool]]:
    """(site, scheduled second, enqueued_at, own site's row) of every ``fast``
    job scheduled from ``since``."""
    from rq.job import Job

    ids = [i.decode() for i in redis.lrange(queue_key, 0, -1)]
    out = []
    for start in range(0, len(ids), 1000):
        for job in Job.fetch_many(ids[start:start + 1000], connection=redis):
            if job is None or job.meta.get("task_schedule") != fast:
                continue
            when = int(job.meta.get("scheduled_time", 0))
            if when < since or job.enqueued_at is None:
                continue
            site = str(job.kwargs.get("site"))
            own = job.kwargs.get("kwargs", {}).get("site") == site
            out.append((site, when, job.enqueued_at.replace(tzinfo=UTC).timestamp(), own))
    return out


def _check(jobs: list[tuple[str, int, float, bool]], staying: list[str], new: list[str],
           dropped: list[str], period: int, t_from: float, t_hup: float, t_reloaded: float,
           t_to: float, gone_at: dict[str, float]) -> dict[str, Any]:
    due = list(range(math.ceil(t_from / period) * period, int(t_to) + 1, period))
    runs: dict[str, Counter[int]] = defaultdict(Counter)
    late: dict[str, list[float]] = {"before": [], "around": [], "after": []}
    wrong_site = 0
    for site, when, enqueued, own in jobs:
        runs[site][when] += 1
        wrong_site += not own
        if site in staying and when <= t_to:
            phase = ("before" if when < t_hup - 1 else
                     "around" if when <= t_reloaded + 2 else "after")
            late[phase].append(enqueued - when)
    missing = sum(1 for site in staying for s in due if runs[site][s] == 0)
    twice = sum(1 for site in staying + new + dropped for n in runs[site].values() if n > 1)
    firsts = {site: min(runs[site]) for site in new if runs[site]}
    new_gaps = sum(1 for site, first in firsts.items() for s in due
                   if s >= first and runs[site][s] == 0)
    after_stop = sum(1 for site in dropped for s in runs[site]
                     if site not in gone_at or s > gone_at[site])
    return {"due_seconds": len(due), "staying_sites": len(staying),
            "staying_runs": sum(runs[site][s] for site in staying for s in due),
            "staying_missing": missing, "twice": twice, "wrong_site": wrong_site,
            "late_before_ms": summary(late["before"]),
            "late_around_ms": summary(late["around"]),
            "late_after_ms": summary(late["after"]),
            "new_running": len(firsts),
            "new_first_run_secs": round(max(firsts.values()) - t_hup, 1) if firsts else None,
            "new_missing_after_first": new_gaps,
            "dropped_runs_after_stop": after_stop}


def failed(r: dict[str, Any]) -> bool:
    return bool(r["staying_missing"] or r["twice"] or r["wrong_site"]
                or r["new_answered"] < r["sites_added"] or r["new_running"] < r["sites_added"]
                or r["new_missing_after_first"] or r["reloaded_secs"] is None
                or r["dropped_sockets_gone"] < r["sites_dropped"]
                or r["dropped_runs_after_stop"])


def lines(r: dict[str, Any]) -> list[str]:
    def ms(key: str) -> str:
        s = r[key]
        return f"p50 {s.get('p50_ms')} / max {s.get('max_ms')} ms"

    return [
        f"SIGHUP +{r['sites_added']} -{r['sites_dropped']} sites, a run every"
        f" {r['period_secs']} s: reloaded in {r['reloaded_secs']} s; new sockets answer"
        f" {r['new_answered_secs']} s, dropped gone {r['dropped_gone_secs']} s, new sites'"
        f" first run {r['new_first_run_secs']} s after the signal",
        f"  staying sites {r['staying_sites']} x {r['due_seconds']} seconds:"
        f" {r['staying_runs']} runs, missing {r['staying_missing']}, twice {r['twice']},"
        f" wrong site {r['wrong_site']}; new missing {r['new_missing_after_first']},"
        f" dropped runs after stop {r['dropped_runs_after_stop']}",
        f"  enqueued late before {ms('late_before_ms')}; around the reload"
        f" {ms('late_around_ms')}; after {ms('late_after_ms')}",
    ]
