"""bench/ on tiny N, so that a broken case fails the suite instead of a full run.

The benchmarks themselves take minutes and are run by hand; their non-timing
code (claims built like the daemon's, both claim scripts' key and argument
layouts, the exactly-once check, the micro steps, the command line and its
case table) is what broke silently before: ceiling10k sent CLAIM one key too
few after CLAIM took a new key, and the full run stopped there.  Everything
runs against a private redis-server; the bench modules' Redis helpers (fixed
to the shared server's databases 10-12, and its locks) are patched to it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from twisted.internet import reactor
from twisted.trial import unittest

from bench import burst, fixtures, micro, report
from bench import run as bench_run
from btu_twisted.store.schedule_store import CLAIM, CLAIMED
from btu_twisted.timing.timer import CLAIM_BATCH
from tests.integration.redis_servers import RedisServer, server_directory, start_server

N = CLAIM_BATCH + 5  # two claim calls: a key or argument off by one in the second shows


@contextlib.contextmanager
def unlocked(dbs: Sequence[int] = (), wait: float = 0.0) -> Iterator[None]:
    """The private server is ours alone: no machine-wide lock to take."""
    yield


class BenchSmokeTests(unittest.TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.server: RedisServer = await start_server(self, server_directory(self), "bench")

    def private(self, db: int) -> redis.Redis:
        client = self.server.client(db=db)
        self.addCleanup(client.close)
        return client

    def use_private_server(self, *modules: Any) -> None:
        """Point the bench modules' Redis helpers at the private server."""
        for module in modules:
            if hasattr(module, "sync_redis"):
                self.patch(module, "sync_redis", self.private)
            if hasattr(module, "flush"):
                self.patch(module, "flush", lambda db: self.private(db).flushdb())
            if hasattr(module, "redis_dbs_locked"):
                self.patch(module, "redis_dbs_locked", unlocked)
            if hasattr(module, "REDIS_PORT"):
                self.patch(module, "REDIS_HOST", "127.0.0.1")
                self.patch(module, "REDIS_PORT", self.server.port)

    def test_both_claim_scripts_land_every_job_once(self) -> None:
        """The minimal script and the daemon's CLAIM, in bench.burst's layouts,
        over N built claims: every job on the queue once, each reply what the
        script promises (MINIMAL: how many; CLAIM: a CLAIMED digit per claim)."""
        when = int(time.time()) - 1
        claims = burst.built_claims(N, when)
        self.assertEqual(len({c.job_id for c in claims}), N)
        r = self.private(12)
        for script, daemon_keys in ((burst.MINIMAL, False), (CLAIM, True)):
            r.flushdb()
            r.zadd(burst.SCHEDULE_SET, {c.member: c.when for c in claims})
            if daemon_keys:
                r.hset(burst.MEMBER_INDEX, mapping={c.schedule: c.member for c in claims})
            replies = []
            for start in range(0, N, CLAIM_BATCH):
                keys, args = burst.script_call(claims[start:start + CLAIM_BATCH], daemon_keys)
                replies.append(r.eval(script, len(keys), *keys, *args))
            if daemon_keys:
                # One result digit per claim, then a reason per blocked one.
                self.assertEqual([reply[0].decode() for reply in replies],
                                 [str(CLAIMED) * CLAIM_BATCH, str(CLAIMED) * (N - CLAIM_BATCH)])
                self.assertEqual([len(reply) for reply in replies], [1, 1])
            else:
                self.assertEqual(replies, [CLAIM_BATCH, N - CLAIM_BATCH])
            queue = [i.decode() for i in r.lrange(burst.QUEUE_PREFIX + burst.QUEUE, 0, -1)]
            self.assertEqual(sorted(queue), sorted(c.job_id for c in claims), script[:40])
            self.assertEqual(r.zcard(burst.SCHEDULE_SET), 0)
            job = r.hgetall(burst.JOB_PREFIX + claims[-1].job_id)
            self.assertEqual(job[b"enqueued_at"].decode(), burst.ENQUEUED_AT)
            self.assertEqual(job[b"origin"], b"default")

        # The checker burst10k_x3 ends with reads the queue CLAIM just filled.
        self.use_private_server(burst)
        self.patch(burst, "REDIS_DB_OURS", 12)
        names = [c.schedule for c in claims]
        checked = burst.exactly_once(N, names, when, burst.QUEUE_PREFIX + burst.QUEUE)
        self.assertEqual(checked, {"queue_length": N, "doubles": 0, "missing": 0,
                                   "unexpected": 0, "exactly_once": True})
        checked = burst.exactly_once(N, names, when + 1, burst.QUEUE_PREFIX + burst.QUEUE)
        self.assertFalse(checked["exactly_once"])

    def test_ceiling_case_on_tiny_n(self) -> None:
        """case_ceiling (time_script with both scripts) as the full run calls
        it: every call measured, every job landed, and the table and ratios
        take its result."""
        self.use_private_server(burst)
        got = burst.case_ceiling(N)
        calls = math.ceil(N / CLAIM_BATCH)
        for which in ("minimal", "claim_script"):
            shape = got[which]
            self.assertEqual(
                (shape["calls"], shape["jobs"], shape["landed"]), (calls, N, N), which)
            self.assertGreater(shape["usec"], 0)
            self.assertEqual(shape["calls_measured_again"], 0)
            for key in ("us_per_job", "jobs_per_s", "call_ms_max", "call_ms_median"):
                self.assertIsNotNone(shape[key], key)
        self.assertEqual((got["expected"], got["batch"]), (N, CLAIM_BATCH))
        self.assertEqual(self.private(12).dbsize(), 0)

        results = {"cases": {"ceiling10k": got}, "machine": {
            "commit": "abc1234", "btu_twisted_dirty": False, "btu_twisted_diff_sha1": "",
            "nproc": 2, "date": "2026-01-01 00:00 UTC", "python": "3.11", "rq": "2",
            "Twisted": "25", "redis_server": "7", "mariadb_server": "11"}}
        self.assertIn("ceiling10k", report.table(results))
        self.assertEqual(report.ratios(results["cases"]), {})

    async def test_micro_steps(self) -> None:
        """bench.micro's steps, each once through, against the private server."""
        self.use_private_server(micro)
        out = await micro.measure(reactor)
        self.assertNotIn("claim_encode_error", out)
        for key in ("build_us", "next_run_us", "settle_log_us", "claim_encode_ms", "frame_us",
                    "claim_500_ms", "window_of_10000_ms", "window_nothing_due_of_1000_ms",
                    "plan_500_ms"):
            self.assertGreater(out[key], 0, key)
        self.assertGreater(out["window_near_of_1000_members"], 0)
        self.assertEqual(self.private(12).dbsize(), 0)

    def test_command_line_and_case_table(self) -> None:
        """``--help`` works from a shell, an unknown case is refused before
        anything runs, and every case ``--only`` accepts has a runner (and
        every runner a case)."""
        shown = subprocess.run(
            [sys.executable, "-m", "bench.run", "--help"], cwd=str(fixtures.ROOT),
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        self.assertIn("--only", shown)
        for case in bench_run.CASES:
            self.assertIn(case, shown)
        errors = io.StringIO()
        with self.assertRaises(SystemExit) as refused, contextlib.redirect_stderr(errors):
            bench_run.main(["--only", "burst,no_such_case"])
        self.assertEqual(refused.exception.code, 2)
        self.assertIn("unknown cases: no_such_case", errors.getvalue())

        for quick in (False, True):
            opts = argparse.Namespace(quick=quick, profile=False, trace=False, only="")
            runners = bench_run.case_runners(opts, list(bench_run.CASES))
            self.assertEqual(sorted(runners), sorted(bench_run.CASES))
            self.assertTrue(all(callable(r) for r in runners.values()))
        named = {case for pair in report.ANCHORED + report.FILE_VS_MARIADB
                 for case in pair}
        self.assertLessEqual(named | set(report.FILE_LATENESS_CASES), set(bench_run.CASES))
