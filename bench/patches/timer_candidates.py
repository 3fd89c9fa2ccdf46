"""Candidate btu_twisted timer changes, for measuring their gain without editing the tree.

Use: ``BTU_BENCH_PATCH=bench/patches/timer_candidates.py BTU_EXP=p1,p4 python -m bench.run --only spread``
(``BTU_EXP`` defaults to all five).  Each is applied on the service's instances by
:mod:`bench.daemon_case` before the service starts; they lean on private names of
``btu_twisted.timer`` as of commit 95e2b41 and will need updating when it changes.

p1  ``Timer._step``: arm the next wake from the time after ``store.earliest`` returned,
    not from ``now`` taken before it (removes a late wake equal to that call's duration).
p2  ``Timer._claim_due``: hand claimed names to the FIFO after the whole claim round, so
    the planner (SQL, cron, PLAN script) does not run between claim batches.
p3  ``Timer._settle``: one INFO line per claim batch instead of one per job.
p4  ``ScheduleStore.earliest``: ``ZRANGEBYSCORE -inf now+lookahead LIMIT`` plus the first
    member beyond, instead of ``ZRANGE 0 4999 WITHSCORES``.
p5  ``timer.FETCH_LIMIT`` = 20,000 (stand-in for paging past the first 5,000 due members).
"""
import os

import btu_twisted.timer as timer_mod
from btu_twisted.store import SCHEDULE_SET

WANT = set(filter(None, os.environ.get("BTU_EXP", "p1,p2,p3,p4,p5").split(",")))


class Collect:
    def __init__(self):
        self.names = []

    def add(self, name):
        self.names.append(name)
        return True


def patch_service(service, reactor):
    timer, store = service.timer, service.store
    clock = reactor
    state = {"earliest_start": None}
    orig_earliest = store.earliest

    if "p4" in WANT:
        async def earliest(limit):
            state["earliest_start"] = clock.seconds()
            horizon = clock.seconds() + timer._lookahead
            flat = list(await service.redis.command(
                "ZRANGEBYSCORE", SCHEDULE_SET, "-inf", horizon, "WITHSCORES", "LIMIT", 0, limit) or [])
            if len(flat) // 2 < limit:
                flat += list(await service.redis.command(
                    "ZRANGEBYSCORE", SCHEDULE_SET, f"({horizon}", "+inf", "WITHSCORES", "LIMIT", 0, 1) or [])
            return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
    else:
        async def earliest(limit):
            state["earliest_start"] = clock.seconds()
            return await orig_earliest(limit)
    store.earliest = earliest

    if "p1" in WANT:
        orig_step = timer._step

        async def step():
            state["earliest_start"] = None
            delay = await orig_step()
            if state["earliest_start"] is not None and delay > 0:
                delay = max(0.0, delay - (clock.seconds() - state["earliest_start"]))
            return delay
        timer._step = step

    if "p2" in WANT or "p3" in WANT:
        orig_claim_due = timer._claim_due
        orig_settle = timer._settle
        real_log = timer.log

        async def claim_due():
            real_fifo = timer._fifo
            collect = Collect()
            if "p2" in WANT:
                timer._fifo = collect
            try:
                await orig_claim_due()
            finally:
                timer._fifo = real_fifo
                real_fifo.extend(collect.names)
        timer._claim_due = claim_due

        if "p3" in WANT:
            class Quiet:
                def __getattr__(self, name):
                    return getattr(real_log, name)

                def info(self, fmt, **kw):
                    if not fmt.startswith("enqueued "):
                        real_log.info(fmt, **kw)

            def settle(batch, results, now):
                timer.log = Quiet()
                try:
                    orig_settle(batch, results, now)
                finally:
                    timer.log = real_log
                real_log.info("enqueued {count} runs", count=sum(1 for r in results if r == 1))
            timer._settle = settle

    if "p5" in WANT:
        timer_mod.FETCH_LIMIT = 20000
