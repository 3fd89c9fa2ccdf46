"""Soak: no slow leaks, no error left behind, every run exactly once (issue 12, part 6).

``python -m bench.soak [--minutes 10]`` runs the daemon as an admin runs it
(``twistd -n --pidfile= btu --config X``, a child process) against a private
Redis and a private MariaDB (:mod:`bench.private_services`; the machine's shared
ones are never touched) for ``--minutes`` of steady state:

* 50 every-second schedules (``* * * * * * *``, queue ``default``) and 10
  every-minute ones (``* * * * *``, queue ``short``) that live the whole run;
* every 10 s: 3 schedules inserted (``modified`` = now; two every-second, one
  every-minute), 1 disabled (``enabled = 0``, ``modified`` = now) and 2 removed
  with a plain ``DELETE`` (no socket request for any of it);
* Redis restarted twice (``SHUTDOWN NOSAVE``, 5 s down, started again empty: the
  daemon must plan every enabled schedule again within ~10 s) and MariaDB
  restarted twice (SIGTERM, 5 s down, started again), at 15 %, 35 %, 55 % and
  75 % of the run; the churn pauses while a Redis restart is being timed;
* a consumer reads every job off the queues every 0.5 s (id, ``meta`` with the
  schedule and scheduled second, ``enqueued_at``), then deletes the job hashes
  and trims the queues, so Redis memory stays flat;
* the daemon's RSS, open file descriptors and threads are read every 10 s from
  ``/proc``.

At the end: the ``status`` reply of the control socket, the log's ERROR /
CRITICAL / Traceback lines inside and outside the outage windows, what was left
behind in Redis for schedules that are gone, runs enqueued twice, and seconds
missing from the long-lived every-second schedules.  Everything goes to
``bench/results/soak.json`` (the daemon's log to ``bench/results/soak.log``) and
a short table is printed.  The run fails (exit 1) on a double, on an enabled
schedule without a member at the end, or on errors outside the outage windows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.fixtures import ROOT
from bench.harness import RESULTS
from bench.idle import _twistd
from bench.private_services import PrivateMariaDB, PrivateRedis, remove_tree
from bench.soak_parts import (
    CHURN_STOPS,
    CORE_MINUTES,
    CORE_SECONDS,
    DATABASE,
    DOWN_SECS,
    EVERY_MINUTE,
    EVERY_SECOND,
    LAST_ENQUEUED,
    MEMBER_INDEX,
    RECENT_SECS,
    RESTARTS,
    SCHEDULE_SET,
    Churn,
    Consumer,
    SoakDatabase,
    _mid_second,
    control_request,
    sampler,
    wait_planned,
)
from bench.soak_report import OUTAGE_GRACE, print_table, read_log, rss_report, runs_report, verdict
from tests.integration import support


def soak(minutes: float) -> dict[str, Any]:
    duration = minutes * 60.0
    tmp = Path(tempfile.mkdtemp(prefix="btu-soak-"))
    rds = PrivateRedis(tmp)
    mdb = PrivateMariaDB(tmp)
    daemon: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    log_path = RESULTS / "soak.log"
    RESULTS.mkdir(exist_ok=True)
    out: dict[str, Any] = {"minutes": minutes, "private_redis_port": rds.port,
                           "private_mariadb_port": mdb.port}
    try:
        rds.start()
        mdb.install()
        mdb.start()
        db = SoakDatabase(mdb)
        core_s = [f"TS-S{i:05d}" for i in range(1, CORE_SECONDS + 1)]
        core_m = [f"TS-M{i:05d}" for i in range(1, CORE_MINUTES + 1)]
        db.insert([(n, EVERY_SECOND, "default") for n in core_s]
                  + [(n, EVERY_MINUTE, "short") for n in core_m])

        values = support.config_values(
            DATABASE, redis_db=0, mysql_host="127.0.0.1", mysql_port=mdb.port,
            mysql_user="root", mysql_password="", rq_host="127.0.0.1", rq_port=rds.port,
            socket_path=str(tmp / "btu.sock"), name="soak", environment_name="bench",
            # Several full refreshes (and their prunes) within the run.
            full_refresh_internal_secs=120)
        config_path = tmp / "btu_scheduler.toml"
        support.write_config(config_path, values)
        out["config"] = {k: v for k, v in values.items() if "password" not in k}
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(log_path, "wb") as log:
            spawned = time.time()
            daemon = subprocess.Popen(
                _twistd() + ["-n", "--pidfile=", "btu", "--config", str(config_path)],
                cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        r = rds.client()
        planned = wait_planned(r, set(core_s + core_m), 60)
        if planned is None or daemon.poll() is not None:
            raise RuntimeError(f"the daemon did not plan its schedules: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        out["spawn_to_planned_secs"] = round(time.time() - spawned, 2)
        time.sleep(5)   # settle: the first runs are out, the allocator warmed up

        t0 = time.time()
        end = t0 + duration
        consumer = Consumer(rds)
        churn = Churn(db)
        samples: list[dict[str, Any]] = []
        threads = [
            threading.Thread(target=consumer.run, args=(stop,), daemon=True),
            threading.Thread(target=churn.run, args=(stop, t0 + CHURN_STOPS * duration),
                             daemon=True),
            threading.Thread(target=sampler, args=(daemon.pid, t0, samples, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()

        outages: list[dict[str, Any]] = []
        for fraction, service in RESTARTS:
            time.sleep(max(0.0, t0 + fraction * duration - time.time()))
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({daemon.returncode}) during the soak")
            outage: dict[str, Any] = {"service": service}
            if service == "redis":
                with churn.lock:   # the set of enabled schedules holds still while timed
                    _, enabled = db.names()
                    _mid_second()
                    with consumer.lock:
                        consumer.drain()
                        outage["down_at"] = time.time()
                        rds.stop()
                    time.sleep(DOWN_SECS)
                    rds.start()
                    outage["up_at"] = time.time()
                    took = wait_planned(r, enabled, 60)
                    outage["replanned_secs"] = None if took is None else round(took, 2)
                    outage["replanned_schedules"] = len(enabled)
            else:
                outage["down_at"] = time.time()
                mdb.stop()
                time.sleep(DOWN_SECS)
                mdb.start()
                outage["up_at"] = time.time()
            outage["t_down"] = round(outage["down_at"] - t0, 1)
            outage["t_up"] = round(outage["up_at"] - t0, 1)
            outages.append(outage)

        time.sleep(max(0.0, end - time.time()))
        stop.set()
        for thread in threads:
            thread.join(30)
        with consumer.lock:
            consumer.drain()
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited ({daemon.returncode}) during the soak")

        # -- readings at the end ---------------------------------------------------
        out["status"] = control_request(values["socket_path"], "status")
        everything, enabled = db.names()
        members = [(m.decode(), s) for m, s in r.zrange(SCHEDULE_SET, 0, -1, withscores=True)]
        now = time.time()

        def gone(name: str) -> bool:
            return name not in everything

        member_names = {m.rsplit("|", 1)[0] for m, _ in members}
        for _ in range(5):
            # An every-second run is out of the set between its claim and its
            # replan: a schedule seen planned in any of a few readings is.
            if enabled <= member_names:
                break
            time.sleep(0.2)
            member_names |= {m.decode().rsplit("|", 1)[0] for m in r.zrange(SCHEDULE_SET, 0, -1)}
        index = {k.decode() for k in r.hkeys(MEMBER_INDEX)}
        last = {k.decode() for k in r.hkeys(LAST_ENQUEUED)}
        out["leftovers"] = {
            "members_total": len(members),
            "members_of_deleted": sum(gone(m.rsplit("|", 1)[0]) for m, _ in members),
            "members_of_deleted_overdue": sum(
                gone(m.rsplit("|", 1)[0]) and s < now for m, s in members),
            "members_of_disabled": sum(
                m.rsplit("|", 1)[0] in everything - enabled for m, _ in members),
            "enabled_without_member": sorted(enabled - member_names),
            "member_index_of_deleted": sum(gone(n) for n in index),
            "last_enqueued_total": len(last),
            "last_enqueued_of_deleted": sum(gone(n) for n in last),
            # The refresh keeps a deleted schedule's last run for RECENT_SECS
            # (it may belong to one created after its SQL read); older ones
            # left behind would be a leak.
            "last_enqueued_of_deleted_past_grace": sum(
                gone(n) and now - float(r.hget(LAST_ENQUEUED, n) or 0) > RECENT_SECS
                for n in last),
            "keys": {k.decode(): r.type(k).decode() for k in r.scan_iter("btu_scheduler:*")},
            "redis_used_memory": int(r.info("memory")["used_memory"]),
        }
        out["churn"] = {"rounds": churn.rounds, "failed_rounds": churn.failed_rounds,
                        "inserted": churn.inserted, "deleted": len(churn.deleted),
                        "disabled_left": len(churn.disabled), "enabled_left": len(churn.alive)}
        out["outages"] = [{k: v for k, v in o.items() if k not in ("down_at", "up_at")}
                          for o in outages]
        windows = [(o["down_at"], o["up_at"] + OUTAGE_GRACE) for o in outages]
        out["runs"] = runs_report(
            consumer.runs, consumer.enqueued_at,
            {"jobs_read": consumer.jobs, "unreadable_jobs": consumer.unreadable,
             "failed_drains": consumer.failed_drains}, core_s, t0, end, windows)
        out["rss"] = rss_report(samples, duration, out["outages"])
        out["samples"] = samples
        out["redis_memory"] = [(round(t - t0, 1), m) for t, m in consumer.redis_memory]
        time.sleep(1)   # let the last lines reach the log
        out["log"] = read_log(log_path, windows)
        return out
    finally:
        stop.set()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        rds.stop()
        mdb.stop()
        remove_tree(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="length of the steady state (default 10; 2 for a quick check)")
    opts = parser.parse_args(argv)
    out = soak(opts.minutes)
    out["problems"] = verdict(out)
    out["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=1, default=str))
    print_table(out)
    print(f"full figures: {RESULTS / 'soak.json'}; daemon log: {RESULTS / 'soak.log'}")
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
