"""Schedule health end to end: ``twistd -n btu`` with a schedules file, real rq
workers (the rq installed here, 2.x, and Frappe v15's rq 1.15 in its own venv),
and ``btu health`` reading what the daemon followed.

- A schedule whose job raises every 2 s is critical within 14 s of the daemon's
  start, with the error's text, while a healthy one beside it stays ok; once the
  file is fixed and the daemon sent SIGHUP, it is ok within 10 s of its next success.
- A job whose worker is killed (SIGKILL) mid-job is reported stuck within its
  timeout + 30 s.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from btu_twisted.cli import main as btu_main
from tests.integration import rq_venvs
from tests.integration.daemon import ROOT, wait_for
from tests.integration.redis_servers import free_port
from tests.integration.test_exactly_once import Daemon, killed_at_cleanup, wait_answering
from tests.integration.test_file_schedules import FileDaemonCase, schedule

#: A worker that keeps listening (SimpleWorker: the job runs in this process,
#: so a SIGKILL ends the job with it, as a crashed machine would).
_WORKER = (
    "import sys, redis\n"
    "from rq import Queue, SimpleWorker\n"
    "c = redis.Redis.from_url(sys.argv[1])\n"
    "SimpleWorker([Queue(q, connection=c) for q in sys.argv[2:]], connection=c).work()\n"
)


def _venv_python(pin: str) -> str:
    if rq_venvs.skip_requested():
        raise unittest.SkipTest(f"{rq_venvs.SKIP_ENV}=1")
    return str(rq_venvs.ensure_venv(rq_venvs.PINS[pin]))


class ScheduleHealthCase(FileDaemonCase):
    timeout = 150

    def worker(self, python: str, *queues: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.dir / f"worker-{len(self.workers)}.log", "wb")
        with log:
            proc = subprocess.Popen([python, "-c", _WORKER, self.url, *queues], cwd=str(ROOT),
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    async def setUp(self) -> None:
        await super().setUp()
        self.workers: list[subprocess.Popen[bytes]] = []

        def stop_workers() -> None:
            for proc in self.workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)

        self.addCleanup(stop_workers)

    def daemon(self, **extra: Any) -> Daemon:
        values = self.values(**extra)
        values.pop("socket_path")
        daemon = killed_at_cleanup(self, Daemon(self.dir, 0, values))
        return daemon

    async def health(self, daemon: Daemon) -> tuple[int, dict[str, dict[str, Any]]]:
        """``btu health --json``: its exit status and its rows by name."""
        def run() -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            code = btu_main(["--config", str(daemon.config), "health", "--json"], out, err)
            return code, out.getvalue(), err.getvalue()

        code, out, err = await deferToThread(run)
        self.assertIn(code, (0, 1, 2), err)
        return code, {row["name"]: row for row in json.loads(out)}


class FailingScheduleTests(ScheduleHealthCase):
    async def check_failing_then_fixed(self, python: str) -> None:
        self.path.write_text(
            schedule("bad", "*/2 * * * * * *", queue="health").replace(
                "tests.jobfuncs.record", "tests.jobfuncs.fail")
            + schedule("good", "*/2 * * * * * *", queue="health"))
        self.worker(python, "health")
        port = free_port()
        daemon = self.daemon(health_follow_secs=2, metrics_port=port)
        started = time.monotonic()
        daemon.start()
        await wait_answering([daemon], timeout=30)

        async def critical() -> Any:
            code, rows = await self.health(daemon)
            bad = rows.get("bad")
            return (code, rows) if bad and bad["level"] == "critical" else None

        code, rows = await _poll(critical, 20)
        self.assertLess(time.monotonic() - started, 14, "critical later than 14 s after start")
        self.assertEqual(code, 2)
        bad, good = rows["bad"], rows["good"]
        self.assertEqual(bad["state"], "failing")
        self.assertGreaterEqual(bad["consecutive_failures"], 3)
        self.assertEqual(bad["last_error"], "RuntimeError: failing on purpose")
        self.assertIsNotNone(bad["last_failure"])
        self.assertEqual((good["state"], good["consecutive_failures"]), ("ok", 0))
        self.assertIsNotNone(good["last_success"])
        # The same on /metrics and first on the status page.
        metrics = await _get(f"http://127.0.0.1:{port}/metrics")
        self.assertRegex(metrics, r'btu_schedule_consecutive_failures\{schedule="bad"\} [3-9]')
        self.assertRegex(metrics,
                         r'btu_schedule_last_success_timestamp_seconds\{schedule="good"\} 1')
        page = await _get(f"http://127.0.0.1:{port}/")
        self.assertIn("Unwell schedules", page)
        self.assertIn("RuntimeError: failing on purpose", page)
        self.assertLess(page.index("Unwell schedules"), page.index("Dependencies"))

        self.path.write_text(schedule("bad", "*/2 * * * * * *", queue="health")
                             + schedule("good", "*/2 * * * * * *", queue="health"))
        daemon.kill(signal.SIGHUP)

        async def ok_again() -> Any:
            code, rows = await self.health(daemon)
            return (code, rows, time.time()) if rows["bad"]["state"] == "ok" else None

        code, rows, seen = await _poll(ok_again, 30)
        self.assertEqual(code, 0)
        success = _unix(rows["bad"]["last_success"])
        # last_success is whole seconds: 1 s of slack for the cut fraction.
        self.assertLess(seen - success, 10 + 1)
        self.assertTrue(daemon.answers())
        daemon.kill(signal.SIGTERM)
        await deferToThread(daemon.proc.wait, 30)  # type: ignore[union-attr]
        output = daemon.output()
        self.assertIn("schedule bad is failing", output)
        self.assertIn("schedule bad is ok again", output)
        self.assertNotIn("Traceback", output)

    async def test_rq_here(self) -> None:
        await self.check_failing_then_fixed(sys.executable)

    async def test_rq_1_15(self) -> None:
        python = await deferToThread(_venv_python, "1.15.1")
        await self.check_failing_then_fixed(python)


class StuckJobTests(ScheduleHealthCase):
    async def check_stuck(self, python: str) -> None:
        self.path.write_text(schedule(
            "slow", "*/20 * * * * * *", queue="slow", timeout=5, overlap="skip",
            kwargs={"seconds": 120}).replace("tests.jobfuncs.record",
                                             "tests.jobfuncs.sleep_then_record"))
        worker = self.worker(python, "slow")
        daemon = self.daemon(health_follow_secs=2)
        daemon.start()
        await wait_answering([daemon], timeout=30)

        def started_job() -> Any:
            for key in self.redis.scan_iter("rq:job:*"):
                if self.redis.hget(key, "status") == b"started":
                    return key
            return None

        await wait_for(started_job, timeout=40, step=0.02)
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        worker.wait(30)

        async def stuck() -> Any:
            code, rows = await self.health(daemon)
            return (code, rows) if rows.get("slow", {}).get("state") == "stuck" else None

        code, rows = await _poll(stuck, 50)
        self.assertLess(time.monotonic() - killed, 5 + 30, "stuck reported after timeout + 30 s")
        self.assertEqual(code, 2)
        self.assertIn("past its timeout of 5 s", rows["slow"]["reason"])

    async def test_rq_here(self) -> None:
        await self.check_stuck(sys.executable)

    async def test_rq_1_15(self) -> None:
        python = await deferToThread(_venv_python, "1.15.1")
        await self.check_stuck(python)


async def _poll(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout} s")
        await wait_for(lambda: True, timeout=1)  # yield to the reactor
        await deferToThread(time.sleep, 0.3)


async def _get(url: str) -> str:
    import treq

    response = await treq.get(url, persistent=False)
    return str(await treq.text_content(response))


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()



class HealthStoreTests(FileDaemonCase):
    """The FOLLOW_JOBS script and the records on a real Redis."""

    async def test_follow_answers_only_changes_with_both_error_forms(self) -> None:
        import base64
        import zlib

        from twisted.internet import reactor

        from btu_twisted.store.gateway import RedisGateway
        from btu_twisted.store.health_record import HealthRecord
        from btu_twisted.store.health_store import HealthStore
        from btu_twisted.store.keys import Keys

        gateway = RedisGateway(reactor, "127.0.0.1", self.server.port, database=0)
        gateway.start()
        self.addCleanup(gateway.stop)
        store = HealthStore(gateway, Keys("p:"))
        self.redis.hset("rq:job:q", mapping={"status": "queued", "timeout": "30",
                                             "enqueued_at": "2026-12-07T10:00:00.5Z"})
        self.redis.hset("rq:job:h", mapping={
            "status": "failed", "exc_info": zlib.compress(b"Traceback\n\xff\nKeyError: 'k'")})
        self.redis.hset("rq:job:s", mapping={"status": "failed",
                                             "started_at": "2026-12-07T10:00:01Z",
                                             "ended_at": "2026-12-07T10:00:03Z"})
        text = base64.b64encode(zlib.compress(b"Traceback\nValueError: from rq 2")).decode()
        self.redis.xadd("rq:results:s", {"type": "2", "exc_string": text})
        states = await store.follow([("q", "?"), ("h", "?"), ("s", "?"), ("gone", "?")])
        q, h, s, gone = states
        assert q is not None and h is not None and s is not None and gone is not None
        self.assertEqual((q.status, q.timeout), ("queued", 30.0))
        self.assertEqual(h.error, "KeyError: 'k'")
        self.assertEqual((s.error, s.ended - s.started), ("ValueError: from rq 2", 2.0))  # type: ignore[operator]
        self.assertEqual(gone.status, "")
        again = await store.follow([("q", "queued"), ("gone", "")])
        self.assertEqual(again, [None, None])
        many = [(f"x{i}", "?") for i in range(1200)]  # more than one call's batch
        self.assertEqual(len(await store.follow(many)), 1200)

        records = {f"s{i}": HealthRecord(last_enqueued=i, consecutive_failures=i % 4)
                   for i in range(1500)}
        await store.save(records)
        self.redis.hset("p:health", "broken", "not json")
        self.assertEqual(await store.load(), records)
