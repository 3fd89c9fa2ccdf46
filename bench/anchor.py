"""The anchor: rq's own cron scheduler (``rq.cron.CronScheduler``) on the same jobs.

``python -m bench.anchor SPEC.json`` registers one cron job per entry of the
spec (``[name, cron, due]``) calling :func:`bench.jobs.noop` on queue
``default``, each named after its schedule and carrying
``meta={"scheduled_time": due}``, prints ``ready`` and runs
``CronScheduler.start()`` (what ``rq cron`` runs) until SIGTERM.

rq 2.x hands the cron string to croniter with an aware UTC ``now``; croniter
reads a 6-field string as ``min hour dom mon dow sec``, so second-level
schedules are expressible and both schedulers get exactly the same instants.
rq logs one INFO line per enqueue to stderr, which the orchestrator sends to a
file, as btu_twisted's log goes to a file.
"""

from __future__ import annotations

import json
import logging
import sys

from redis import Redis
from rq.cron import CronScheduler

from bench.fixtures import REDIS_HOST, REDIS_PORT
from bench.jobs import noop


def main(argv: list[str]) -> None:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    # rq would install its own handler on stdout; send its log to stderr (a file).
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    connection = Redis(host=REDIS_HOST, port=REDIS_PORT, db=int(spec["db"]))
    scheduler = CronScheduler(connection=connection, logging_level=logging.INFO)
    for name, cron, due in spec["jobs"]:
        scheduler.register(
            noop, "default", kwargs={"source": "rq cron"}, cron=cron,
            job_timeout=600, meta={"scheduled_time": due}, name=name,
        )
    print("ready", flush=True)
    scheduler.start()


if __name__ == "__main__":
    main(sys.argv[1:])
