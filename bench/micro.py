"""Where the time goes: the daemon's hot steps one at a time (``python -m bench.micro``).

Each figure is the best of a few repetitions on an otherwise idle reactor,
using the daemon's own classes against the real Redis (database 12, flushed
before and after):

* ``build_us``          one ``FunctionBuilder.build`` (rq's ``Job.create`` + ``to_dict``)
* ``next_run_us``       one ``cron.next_run`` (the planner's per-schedule CPU)
* ``claim_encode_ms``   txredisapi turning one 500-job CLAIM call into bytes (what
                        claiming cost before the timer framed claims ahead)
* ``frame_us``          ``store.framed`` of one built job (done when it is built)
* ``claim_500_ms``      ``ScheduleStore.claim`` of 500 prepared (framed) jobs, call to reply
* ``settle_log_us``     one "enqueued ..." INFO line through a twisted text file observer
* ``window_*_ms``       ``ScheduleStore.window(horizon, FETCH_LIMIT)`` (what the timer
                        reads at each wake-up: the count, the members due by the
                        horizon, the first one after) with 1,000 / 10,000 members
                        (about 17 due per second), horizon 1 s into them; and with
                        nothing due (the idle case)
* ``earliest_*_ms``     the old whole-head read, ``ScheduleStore.earliest(5000)``
                        (``ZRANGE 0 4999 WITHSCORES``), for comparison, while the
                        store still has it
* ``plan_500_ms``       ``ScheduleStore.plan`` of 500 names
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    textFileLogObserver,
)

from bench.burst import script_call
from bench.fixtures import (
    REDIS_DB_SPARE,
    REDIS_HOST,
    REDIS_PORT,
    flush,
    redis_dbs_locked,
    sync_redis,
)
from btu_twisted import cron
from btu_twisted.jobs.builders import FunctionBuilder
from btu_twisted.records import ScheduleRow
from btu_twisted.store.gateway import RedisGateway
from btu_twisted.store.schedule_store import SCHEDULE_SET, Claim, ScheduleStore, framed, member_for
from btu_twisted.timing.timer import FETCH_LIMIT

CRONS = ["*/5 * * * *", "0 13 * * *", "30 2 * * 1", "15 30 2 * * * *", "*/10 4 3 * * * *",
         "0 0 1,15 * *", "7 7 * * * 2099", "*/15 5 * * 1-5"]


def row(i: int) -> ScheduleRow:
    return ScheduleRow(
        name=f"TS-M{i:06d}", task="BTU-BENCH", enabled=True, cron_string="0 13 * * *",
        queue_name="default", argument_overrides=None, task_description="BTU-BENCH",
        schedule_description=None, cron_time_zone="UTC", function_string="bench.jobs.noop",
        task_arguments="{'source': 'btu bench'}", max_task_duration=600,
        task_queue_name="default", desc_short="Benchmark no-op",
    )


def best(fn: Callable[[], Any], repeat: int = 5, number: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t) / number)
    return min(times)


async def abest(make: Callable[[], Deferred[Any] | Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await make()
        times.append(time.perf_counter() - t)
    return min(times)


def claims(when: int, count: int, offset: int = 0) -> list[Claim]:
    builder = FunctionBuilder("")
    out = []
    for i in range(offset, offset + count):
        r = row(i)
        built: Any = []
        builder.build(r, when).addCallback(built.append)
        b = built[0]
        out.append(Claim(member=member_for(r.name, when), schedule=r.name, when=when,
                         job_id=b.job_id, origin=b.origin, fields=b.fields))
    return out


async def measure(reactor: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    builder = FunctionBuilder("")
    r0 = row(0)
    out["build_us"] = best(lambda: builder.build(r0, 2_000_000_000), number=200) * 1e6
    now = time.time()
    for c in CRONS:
        cron.next_run(c, "UTC", now)  # parse once, as the daemon's cache does
    out["next_run_us"] = best(
        lambda: [cron.next_run(c, "UTC", now) for c in CRONS], number=50) / len(CRONS) * 1e6

    with tempfile.NamedTemporaryFile("w", suffix=".log") as f:
        publisher = LogPublisher(FilteringLogObserver(
            textFileLogObserver(f), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]))
        log = Logger(observer=publisher)
        out["settle_log_us"] = best(lambda: log.info(
            "enqueued {schedule} run at {when} as job {job_id} on {origin}",
            schedule="TS-000123", when="2026-11-26T15:00:00Z",
            job_id="0f8e7f43-6f3c-4f0e-9d8e-3b9b0e3c9a11", origin="default"), number=500) * 1e6

    flush(REDIS_DB_SPARE)
    gateway = RedisGateway(reactor, REDIS_HOST, REDIS_PORT, database=REDIS_DB_SPARE)
    gateway.start()
    store = ScheduleStore(gateway)
    sync = sync_redis(REDIS_DB_SPARE)
    try:
        await gateway.command("PING")
        # Claim: 500 due members with their built jobs, as the timer sends them.
        when = int(time.time()) - 1
        batches = [claims(when, 500, offset=k * 500) for k in range(5)]
        encode_times = []
        try:
            import txredisapi

            from btu_twisted.store.schedule_store import CLAIM
            proto = txredisapi.RedisProtocol()
            keys, args = script_call(batches[0], daemon_keys=True)
            out["claim_args"] = len(keys) + len(args)
            encode_times.append(best(lambda: proto._build_command(
                "EVAL", CLAIM, len(keys), *keys, *args), number=3))
            out["claim_encode_ms"] = min(encode_times) * 1000
        except Exception as e:  # private API; the figure is optional
            out["claim_encode_error"] = str(e)  # type: ignore[assignment]
        one = batches[0][0]
        out["frame_us"] = best(lambda: framed(one), number=500) * 1e6
        claim_times = []
        for b in [[framed(c) for c in batch] for batch in batches]:
            sync.zadd(SCHEDULE_SET, {c.member: c.when for c in b})
            t = time.perf_counter()
            results = await store.claim(b, "2026-01-01T00:00:00.000000Z")
            claim_times.append(time.perf_counter() - t)
            assert all(x == 1 for x in results), results[:5]
        out["claim_500_ms"] = min(claim_times) * 1000
        out["claim_500_median_ms"] = sorted(claim_times)[len(claim_times) // 2] * 1000

        for size in (1000, 10000):
            flush(REDIS_DB_SPARE)
            base = int(time.time()) + 3600
            # Spread over a minute per 1,000 members (the spread case's density).
            span = 60 * size // 1000
            sync.zadd(SCHEDULE_SET, {member_for(f"TS-{i:06d}", base + i * span // size):
                                     base + i * span // size for i in range(size)})
            if hasattr(store, "earliest"):
                out[f"earliest_5000_of_{size}_ms"] = await abest(
                    lambda: store.earliest(5000)) * 1000
            # ~17 members per second, as in the spread case: the few due next.
            horizon = base + 1
            got = await store.window(horizon, FETCH_LIMIT)
            out[f"window_near_of_{size}_members"] = len(got.near)
            out[f"window_of_{size}_ms"] = await abest(
                partial(store.window, horizon, FETCH_LIMIT)) * 1000
            out[f"window_nothing_due_of_{size}_ms"] = await abest(
                partial(store.window, base - 60, FETCH_LIMIT)) * 1000
        plans = {f"TS-{i:06d}": int(time.time()) + 86400 for i in range(500)}
        out["plan_500_ms"] = await abest(lambda: store.plan(time.time(), plans)) * 1000
    finally:
        await gateway.stop()
        flush(REDIS_DB_SPARE)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    result: dict[str, float] = {}

    def go(reactor: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(measure(reactor)).addCallback(result.update)

    try:
        with redis_dbs_locked((REDIS_DB_SPARE,)):
            task.react(go)
    except SystemExit:
        print(json.dumps(result, indent=2))
        raise


if __name__ == "__main__":
    main()
    sys.exit(0)
