"""Exactly once with several daemons on one Redis and one MariaDB database.

Three ``twistd -n btu`` processes share Redis database 9, one MariaDB
database and one schedules_file, both holding schedules that fire every 1, 2
or 3 seconds; one daemon is
SIGKILLed mid-way and started again.  Afterwards every (schedule, scheduled
time) the crons imply inside the window is a job exactly once: none missing,
none doubled.  The job hashes themselves are the evidence (their ``meta``
names the schedule and the scheduled time).

A second, in-process test makes the nastiest instant of a kill repeatable:
the daemon that wins every claim never plans the next run (as if killed right
after each claim), and the others must keep every schedule going.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.store.schedule_store import MEMBER_INDEX
from tests.integration.daemon import ROOT, make_service, wait_for
from tests.integration.support import (
    TWISTD,
    config_values,
    exclusive_redis_db,
    fresh_services,
    write_config,
)
from tests.integration.test_faults import (
    EVERY,
    EVERY_2,
    EVERY_3,
    collect_jobs,
    duplicates,
    missing_runs,
    ping_once,
    sleep,
)

DB = 9
# 200 schedules at 1, 2 and 3 s: about 120 runs a second for three daemons
# sharing the machine's two cores with MariaDB, Redis and this test.
SCHEDULES = int(os.environ.get("BTU_EXACTLY_ONCE_SCHEDULES", "200"))
RUN_SECS = float(os.environ.get("BTU_EXACTLY_ONCE_SECS", "20"))
CRON_MIX = (EVERY, EVERY_2, EVERY_3)
FILE_SCHEDULES = 30


class Daemon:
    """One ``twistd -n --pidfile= btu --config X`` child, output to files."""

    def __init__(self, directory: Path, index: int, values: dict[str, Any]) -> None:
        self.directory = directory
        self.index = index
        self.socket = str(directory / f"btu{index}.sock")
        self.config = directory / f"btu{index}.toml"
        write_config(self.config, dict(values, socket_path=self.socket))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        out = open(self.directory / f"btu{self.index}.{self.starts}.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with out:
            self.proc = subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "btu", "--config", str(self.config)],
                cwd=str(self.directory), env=env, stdout=out, stderr=subprocess.STDOUT,
            )

    def answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"daemon {self.index} exited: {self.output()[-3000:]}")
        try:
            ping_once(self.socket, timeout=1)
        except OSError:
            return False
        return True

    def output(self) -> str:
        return (self.directory / f"btu{self.index}.{self.starts}.log").read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def killed_at_cleanup(case: Any, daemon: Daemon) -> Daemon:
    """``daemon``, killed (SIGKILL) and reaped when ``case`` ends, whatever happened."""

    def stop() -> None:
        daemon.kill(signal.SIGKILL)
        if daemon.proc is not None:
            daemon.proc.wait(30)

    case.addCleanup(stop)
    return daemon


async def wait_answering(daemons: list[Daemon], timeout: float = 60) -> None:
    async def check() -> bool:
        return all(await deferToThread(lambda: [d.answers() for d in daemons]))

    waited = time.monotonic()
    while not await check():
        if time.monotonic() - waited > timeout:
            raise AssertionError("daemons did not answer their sockets")
        await sleep(0.2)


class ThreeDaemonsTests(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:
        await exclusive_redis_db(self, DB, wait=170)
        self.dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="btu-once-"))
        self.db, self.redis = fresh_services(self, DB)
        self.db.add_task("BTU-REC", "tests.jobfuncs.record")
        self.crons = {f"TS-{i:04d}": CRON_MIX[i % 3] for i in range(SCHEDULES)}
        self.db.add_schedules(
            [(name, "BTU-REC", cron, True, "default", None) for name, cron in self.crons.items()]
        )
        # The same daemons also run schedules from a schedules_file (issue 13).
        self.file_crons = {f"F-{i:04d}": CRON_MIX[i % 3] for i in range(FILE_SCHEDULES)}
        self.schedules_file = self.dir / "schedules.toml"
        self.schedules_file.write_text("".join(
            f'[[schedule]]\nname = "{name}"\ncron = "{cron}"\n'
            f'function = "tests.jobfuncs.record"\nargs = [1]\n\n'
            for name, cron in self.file_crons.items()
        ))

    async def test_three_daemons_one_killed_every_run_exactly_once(self) -> None:
        """Three daemons, 200 MariaDB and 30 file schedules at 1-3 s, ~20 s, one
        daemon SIGKILLed at a random instant and restarted: every cron time from
        start + 3 s to stop - 3 s is enqueued exactly once, and no pair is ever
        enqueued twice."""
        values = config_values(self.db.name, redis_db=DB, tracing_level="INFO",
                               schedules_file=str(self.schedules_file))
        daemons = [Daemon(self.dir, i, values) for i in range(3)]
        self.addCleanup(self._cleanup, daemons)
        for d in daemons:
            d.start()
        await wait_answering(daemons)
        started = time.time()
        await sleep(RUN_SECS * 0.35 + random.random())
        victim = daemons[1]
        victim.kill(signal.SIGKILL)
        killed_at = time.time()
        await deferToThread(victim.proc.wait, 30)
        await sleep(1.5)
        victim.start()
        await wait_answering([victim])
        restarted_at = time.time()
        await sleep(max(0.0, started + RUN_SECS - time.time()))
        stopped = time.time()
        for d in daemons:
            d.kill(signal.SIGTERM)
        for d in daemons:
            await deferToThread(d.proc.wait, 60)
        jobs = await deferToThread(collect_jobs, self.redis)
        first, last = started + 3, stopped - 3
        doubled = duplicates(jobs)
        missing = missing_runs(jobs, {**self.crons, **self.file_crons}, first, last)
        context = (f"started {started:.1f}, killed {killed_at:.1f}, restarted "
                   f"{restarted_at:.1f}, stopped {stopped:.1f}; {len(jobs)} jobs")
        self.assertEqual(doubled, {}, f"enqueued twice; {context}")
        self.assertEqual(missing, {}, f"never enqueued; {context}")
        expected = sum(
            len(range(int(first) + (-int(first)) % p, int(last) + 1, p))
            for p in (1, 2, 3) for _ in range((SCHEDULES + FILE_SCHEDULES) // 3)
        )
        self.assertGreaterEqual(len(jobs), expected)
        self.assertTrue(any(name.startswith("F-") for name, _, _ in jobs))
        for d in daemons:
            self.assertIn(d.proc.returncode, (0, -signal.SIGTERM), d.output()[-3000:])
            self.assertNotIn("Traceback", d.output(), d.output()[-3000:])

    def _cleanup(self, daemons: list[Daemon]) -> None:
        for d in daemons:
            d.kill(signal.SIGKILL)
            if d.proc is not None:
                d.proc.wait(30)
        if os.environ.get("BTU_KEEP_LOGS"):
            return
        shutil.rmtree(self.dir, True)


class DyingWinnerTests(unittest.TestCase):
    """In process: two daemons on one Redis db and one MariaDB database."""

    timeout = 60

    async def setUp(self) -> None:
        await exclusive_redis_db(self, DB, wait=50)
        self.db, self.redis = fresh_services(self, DB)
        self.db.add_task("BTU-REC", "tests.jobfuncs.record")
        self.crons = {"TS-E1": EVERY, "TS-E2": EVERY, "TS-T2": EVERY_2, "TS-T3": EVERY_3}
        self.db.add_schedules(
            [(name, "BTU-REC", cron, True, "default", None) for name, cron in self.crons.items()]
        )
        self.services: list[Any] = []

    async def tearDown(self) -> None:
        for service in self.services:
            if service.running:
                await service.stopService()
        for service in self.services:
            path = service.config.socket_path
            if os.path.exists(path):
                os.unlink(path)

    async def start(self) -> Any:
        service, fatal = make_service(config_values(self.db.name, redis_db=DB))
        self.services.append(service)
        await service.startService()
        self.assertEqual(fatal, [])
        return service

    async def test_winner_dying_before_replanning_does_not_stall(self) -> None:
        """Daemon A wins every claim (B's Redis is 50 ms further away) but never
        plans the next run, as if killed right after each claim.  B loses every
        claim; the schedules must keep running, each run exactly once, rather
        than stop until the next full refresh."""
        survivor = await self.start()
        await wait_for(lambda: self.redis.hlen(MEMBER_INDEX) == len(self.crons), timeout=10)
        winner = await self.start()
        real_claim = survivor.store.claim

        async def slower_claim(*args: Any) -> Any:
            await deferLater(reactor, 0.05, lambda: None)
            return await real_claim(*args)

        survivor.store.claim = slower_claim
        winner.planner.stopService()
        began = time.time()
        await sleep(6)
        last = time.time() - 1
        for service in self.services:
            await service.stopService()
        jobs = collect_jobs(self.redis)
        self.assertGreater(winner.timer.stats.enqueued, 0, "the setup did not make A win")
        self.assertEqual(duplicates(jobs), {})
        self.assertEqual(missing_runs(jobs, self.crons, began + 1, last), {})
