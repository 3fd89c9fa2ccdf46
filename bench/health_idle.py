"""What following jobs costs an idle daemon with 10,000 schedules (schedule health).

Three runs of :func:`bench.idle.idle_daemon` with the schedules in a file, each
measured over the same window: ``schedule_health = false``; true with no job
out (the usual idle: every job has ended); true with 10,000 jobs out, queued
with no worker listening (the worst idle: every pass asks about 5,000 of them).
Run from the repository root::

    .venv/bin/python -m bench.health_idle [WINDOW_SECS]

One JSON line per run on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bench.fixtures import REDIS_DB_OURS, schedule_names, sync_redis
from bench.idle import idle_daemon, measure_idle
from btu_twisted.store.health_record import HealthRecord, PendingJob, encode
from btu_twisted.store.keys import Keys

N = 10_000


def _jobs_out(n: int) -> None:
    """A health record with a job out per schedule, and that job queued in rq."""
    r = sync_redis(REDIS_DB_OURS)
    pipe = r.pipeline(transaction=False)
    now = time.time()
    for i, name in enumerate(schedule_names(n)):
        job_id = f"bench-health-{i}"
        record = HealthRecord(last_enqueued=now, job=PendingJob(job_id, int(now), now))
        pipe.hset(Keys().health, name, encode(record))
        pipe.hset(f"rq:job:{job_id}", mapping={"status": "queued", "timeout": "180"})
    pipe.execute()


def run(case: str, window: float, health: bool, jobs_out: bool) -> dict[str, Any]:
    config = {"schedule_health": health, "tracing_level": "WARN"}
    prepare = (lambda: _jobs_out(N)) if jobs_out else None
    with idle_daemon(N, config, source="file", case=f"health_idle_{case}",
                     prepare=prepare) as facts:
        measured = measure_idle(facts["pid"], window, facts["alive"])
    return {"case": case, "schedules": N, **measured}


def main() -> None:
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    for case, health, jobs_out in (("off", False, False), ("on", True, False),
                                   ("on_10k_jobs_out", True, True)):
        print(json.dumps(run(case, window, health, jobs_out)), flush=True)


if __name__ == "__main__":
    main()
