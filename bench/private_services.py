"""A private ``redis-server`` and ``mariadbd`` in a temporary directory.

The soak (:mod:`bench.soak`) restarts its Redis and MariaDB for real; the
machine's shared instances (127.0.0.1:3306 and :6379) serve other people's
tests and must never be stopped, so the soak runs its own, on free loopback
ports, as child processes of its own (stopped by their process handles).

Redis runs without persistence (``--save "" --appendonly no``): a restart
brings it back empty, like a Redis restarted without persistence in
production.  MariaDB keeps its data directory across restarts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pymysql
import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Terminate our own child ``proc`` (SIGTERM, then SIGKILL after ``timeout``)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PrivateRedis:
    """``redis-server`` on a free port, no persistence: a restart comes back empty."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def run_id(self) -> str:
        """This server's ``run_id``: what a flush checks it is talking to (OwnRedis)."""
        client = self.client()
        try:
            return str(client.info("server")["run_id"])
        finally:
            client.close()

    def start(self, wait: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait
        while True:
            try:
                if self.client(0.5).ping():
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Redis shuts down; with no save points and no AOF it saves nothing,
        so every key is lost (a SHUTDOWN through redis-py waits out its retries)."""
        _stop(self.proc, 10)


class PrivateMariaDB:
    """``mariadbd`` on a free port with its own data directory; root, no password."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.datadir = directory / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        with open(self.directory / "install.log", "wb") as log:
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                 "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"],
                stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120,
            )

    def connection(self, database: str | None = None, timeout: float = 5.0,
                   **extra: object) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                               database=database, charset="utf8mb4", autocommit=True,
                               connect_timeout=timeout, read_timeout=timeout * 2,
                               write_timeout=timeout * 2, **extra)  # type: ignore[arg-type]

    def start(self, wait: float = 60.0) -> None:
        daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [daemon, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.directory / 'mysqld.sock'}",
             f"--pid-file={self.directory / 'mysqld.pid'}", "--user=root", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M", f"--log-error={self.directory / 'mysqld.err'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait
        while True:
            try:
                self.connection(timeout=1.0).close()
                return
            except pymysql.MySQLError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private mariadbd on port {self.port} did not start "
                                   f"(see {self.directory / 'mysqld.err'})")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM: MariaDB's normal shutdown."""
        _stop(self.proc, 60)


def remove_tree(directory: Path) -> None:
    if directory.exists() and str(directory).startswith(("/tmp/", os.environ.get("TMPDIR", "/tmp/"))):
        shutil.rmtree(directory, ignore_errors=True)
