"""``twistd -n btu`` as systemd runs it: a start that cannot succeed ends the
process with one line and exit status 1 (systemd must see the failure), and
SIGHUP (``systemctl reload``) re-reads what it can and never ends the process,
in every mode: one site from MariaDB, a schedules file, a bench of sites.

Each daemon is a real ``twistd`` child on a redis-server of the test's own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.integration.bench_sites import bench_path, make_bench, site_database
from tests.integration.daemon import ROOT, wait_for
from tests.integration.redis_servers import free_port, server_directory, start_server
from tests.integration.support import TWISTD, TestDatabase, config_values, write_config

#: Generous for a loaded 2-core host; an admin's start measures 0.4-1.0 s (see the note).
EXIT_WITHIN = 15.0


def twistd(directory: Path, config: Path, log: str) -> subprocess.Popen[bytes]:
    """A ``twistd -n btu`` child; its stdout (the log) to ``log``, stderr kept apart."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(directory / log, "wb") as out:
        return subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "btu", "--config", str(config)],
            cwd=str(directory), env=env, stdout=out, stderr=subprocess.PIPE,
        )


def answers(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b'{"request_type": "ping", "request_content": null}\n')
            return s.recv(64) == b"pong\n"
    except OSError:
        return False


class StartFailureTests(unittest.TestCase):
    """Each way a start can fail: exit 1, one ``btu:`` line on stderr, no traceback."""

    timeout = 120

    async def setUp(self) -> None:
        self.dir = server_directory(self)
        self.server = await start_server(self, self.dir, "lifecycle")
        (self.dir / "schedules.toml").write_text(
            '[[schedule]]\nname = "a"\ncron = "0 0 1 1 *"\nfunction = "os.getcwd"\n')

    def values(self, **extra: Any) -> dict[str, Any]:
        values = config_values("unused", **{
            "rq_port": self.server.port, "rq_database": 0, "socket_path": str(self.dir / "d.sock"),
            "schedules_file": str(self.dir / "schedules.toml"), **extra})
        return {key: value for key, value in values.items() if not key.startswith("mysql_")}

    async def fails(self, reason: str, **extra: Any) -> str:
        config = self.dir / "btu.toml"
        write_config(config, self.values(**extra))
        started = time.monotonic()
        proc = twistd(self.dir, config, "failed.log")
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        try:
            _, err = await deferToThread(proc.communicate, timeout=EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            self.fail(f"still running {EXIT_WITHIN} s after a failed start ({reason})")
        took = time.monotonic() - started
        text = err.decode(errors="replace")
        self.assertEqual(proc.returncode, 1, text)
        lines = text.strip().splitlines()
        self.assertEqual(len(lines), 1, text)
        self.assertTrue(lines[0].startswith("btu: "), text)
        self.assertIn(reason, lines[0])
        self.assertNotIn("Traceback", text + (self.dir / "failed.log").read_text())
        self.assertLess(took, EXIT_WITHIN)
        return lines[0]

    async def test_invalid_schedules_file(self) -> None:
        (self.dir / "schedules.toml").write_text("garbage [[[\n")
        await self.fails("schedules_file has 1 problem(s)")

    async def test_socket_directory_missing(self) -> None:
        await self.fails("does not exist", socket_path=str(self.dir / "nowhere" / "d.sock"))

    async def test_socket_path_is_a_regular_file(self) -> None:
        (self.dir / "plain").write_text("")
        await self.fails("is not a socket", socket_path=str(self.dir / "plain"))

    async def test_socket_held_by_a_running_daemon(self) -> None:
        config = self.dir / "first.toml"
        write_config(config, self.values())
        first = twistd(self.dir, config, "first.log")
        self.addCleanup(lambda: first.poll() is None and first.kill())
        await wait_for(lambda: answers(str(self.dir / "d.sock")) or first.poll() is not None,
                       timeout=30)
        self.assertIsNone(first.poll(), (self.dir / "first.log").read_text())
        await self.fails("in use by a running daemon")
        self.assertTrue(answers(str(self.dir / "d.sock")), "the first daemon lost its socket")

    async def test_metrics_port_taken(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            line = await self.fails("cannot serve metrics", metrics_port=port)
        self.assertIn(str(port), line)
        self.assertFalse((self.dir / "d.sock").exists())

    async def test_redis_refusing_connections(self) -> None:
        """A refused connection is said as such, at once: not a 5 s timeout."""
        line = await self.fails("cannot reach Redis", rq_port=free_port())
        self.assertIn("refused", line)
        self.assertNotIn("Deferred", line)

    async def test_redis_refusing_the_password(self) -> None:
        line = await self.fails("Redis refused the password", rq_password="wrong")
        self.assertNotIn("within", line)


class SighupTests(unittest.TestCase):
    """``systemctl reload`` sends SIGHUP: the daemon says what it re-read and keeps serving."""

    timeout = 120

    async def setUp(self) -> None:
        self.dir = server_directory(self)
        self.server = await start_server(self, self.dir, "sighup")
        self.redis = self.server.client()
        self.addCleanup(self.redis.close)
        self.sock = str(self.dir / "d.sock")
        self.config = self.dir / "btu.toml"

    async def run_daemon(self, values: dict[str, Any]) -> subprocess.Popen[bytes]:
        write_config(self.config, values)
        proc = twistd(self.dir, self.config, "daemon.log")

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)

        self.addCleanup(stop)
        await wait_for(lambda: answers(self.sock) or proc.poll() is not None, timeout=30)
        self.assertIsNone(proc.poll(), self.log())
        return proc

    def log(self) -> str:
        return (self.dir / "daemon.log").read_text(errors="replace")

    async def hup(self, proc: subprocess.Popen[bytes], expect: str) -> None:
        """SIGHUP; the log says ``expect`` and the daemon still answers."""
        proc.send_signal(signal.SIGHUP)
        try:
            await wait_for(lambda: expect in self.log() or proc.poll() is not None, timeout=15)
        except AssertionError:
            self.fail(f"no {expect!r} in the log: {self.log()[-3000:]}")
        self.assertIsNone(proc.poll(), f"SIGHUP ended the daemon: {self.log()[-3000:]}")
        self.assertIn(expect, self.log())
        self.assertTrue(await deferToThread(answers, self.sock))

    async def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        await deferToThread(proc.wait, 30)
        self.assertNotIn("Traceback", self.log())

    async def test_one_site_from_mariadb(self) -> None:
        """The default mode: a reload reads every schedule again, applies a new
        tracing_level, names keys that take a restart, and shrugs off a broken file."""
        db = TestDatabase(load_samples=False)
        self.addCleanup(db.drop)
        db.add_task("T1", "os.getcwd")
        db.add_schedule("S1", "T1", "0 0 1 1 *")
        values = config_values(db.name, rq_port=self.server.port, rq_database=0,
                               socket_path=self.sock)
        proc = await self.run_daemon(values)
        await wait_for(lambda: self.redis.zcard("btu_scheduler:task_execution_times") == 1)
        db.add_schedule("S2", "T1", "0 0 1 1 *")
        await self.hup(proc, "reloaded: config unchanged; every schedule in MariaDB read again")
        await wait_for(lambda: self.redis.zcard("btu_scheduler:task_execution_times") == 2,
                       timeout=10)
        write_config(self.config, dict(values, tracing_level="DEBUG", socket_mode="0600"))
        await self.hup(proc, "reloaded: tracing_level is now 'DEBUG'; changed, taking effect "
                             "at the next restart: socket_mode")
        self.config.write_text("this is not = = toml\n")
        await self.hup(proc, "not reloaded: ")
        await self.stop(proc)

    async def test_schedules_file(self) -> None:
        path = self.dir / "schedules.toml"
        path.write_text('[[schedule]]\nname = "a"\ncron = "0 0 1 1 *"\nfunction = "os.getcwd"\n')
        values = config_values("unused", rq_port=self.server.port, rq_database=0,
                               socket_path=self.sock, schedules_file=str(path))
        values = {key: value for key, value in values.items() if not key.startswith("mysql_")}
        proc = await self.run_daemon(values)
        path.write_text('[[schedule]]\nname = "b"\ncron = "0 0 1 1 *"\nfunction = "os.getcwd"\n')
        await self.hup(proc, "reloaded: config unchanged; schedules file: 1 added, 0 changed, "
                             "1 removed")
        path.write_text("broken [[[\n")
        await self.hup(proc, "reloaded: config unchanged; schedules file not reloaded")
        await self.stop(proc)

    async def test_bench_sites(self) -> None:
        """``frappe_sites``: the reload looks at the bench again and keeps serving."""
        db, site = site_database(self)
        db.add_task("T1", "os.getcwd")
        db.add_schedule("S1", "T1", "0 0 1 1 *")
        bench = make_bench(bench_path(self), {
            "redis_queue": f"redis://127.0.0.1:{self.server.port}", "bench_id": "b"},
            {"a.test": site})
        values = {"frappe_bench_path": str(bench), "frappe_sites": ["*"],
                  "socket_path": str(self.dir / "{site}.sock"),
                  "full_refresh_internal_secs": 3600, "scheduler_polling_interval": 5,
                  "time_zone_string": "UTC", "job_builder": "function"}
        self.sock = str(self.dir / "a.test.sock")
        proc = await self.run_daemon(values)
        await self.hup(proc, "sites reloaded: 0 started, 0 stopped; serving 1 (a.test); "
                             "config unchanged")
        await self.stop(proc)
