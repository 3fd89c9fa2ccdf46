"""Register the burst's jobs with rq-scheduler: ``python -m bench.rqscheduler_register SPEC.json``.

Runs with the interpreter of the separate rq-scheduler venv (see
:mod:`bench.rqscheduler`), so it imports nothing but redis, rq_scheduler and
:mod:`bench.jobs`.  For each ``[name, cron, due]`` of the spec it calls
``Scheduler.cron(cron, noop, ...)`` as an rq-scheduler user would, with the
schedule's name as job id and ``meta={"scheduled_time": due}``, then checks
that rq-scheduler itself scheduled each one at ``due`` (its ``crontab``
library reads 7 fields as ``sec min hour dom mon dow year``, as btu_twisted
does).  Prints one JSON line: ``{"registered": N, "at_due": M, "secs": S}``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

from redis import Redis
from rq_scheduler import Scheduler

from bench.jobs import noop


def main(argv: list[str]) -> None:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    warnings.simplefilter("ignore", FutureWarning)  # crontab's note on utcnow, once per job
    connection = Redis(host=spec["host"], port=spec["port"], db=int(spec["db"]))
    scheduler = Scheduler(queue_name="default", connection=connection, interval=1)
    t = time.time()
    for name, cron, due in spec["jobs"]:
        scheduler.cron(cron, noop, kwargs={"source": "rq-scheduler"}, queue_name="default",
                       id=name, timeout=600, meta={"scheduled_time": due})
    secs = time.time() - t
    scores = dict(connection.zrange(scheduler.scheduled_jobs_key, 0, -1, withscores=True))
    at_due = sum(1 for name, _, due in spec["jobs"] if scores.get(name.encode()) == due)
    print(json.dumps({"registered": len(scores), "at_due": at_due, "secs": round(secs, 3)}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
