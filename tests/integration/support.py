"""Real MariaDB and Redis for integration tests: a fresh database per test.

Each test gets its own MariaDB database (named ``btu_test_*``: nothing else is
ever dropped) loaded from the Frappe schema fixture and a Redis database number
of its own, flushed before and after, so tests never see each other's
schedules.  That Redis is a redis-server the run starts for itself, never the
machine's: see :func:`_own_redis_server`.  These helpers are synchronous: they run in
test set-up, never inside the daemon.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pymysql
import redis

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCHEMA = FIXTURES / "frappe_schema.sql"

MYSQL = dict(
    host=os.environ.get("BTU_TEST_MYSQL_HOST", "127.0.0.1"),
    port=int(os.environ.get("BTU_TEST_MYSQL_PORT", "3306")),
    user=os.environ.get("BTU_TEST_MYSQL_USER", "root"),
    password=os.environ.get("BTU_TEST_MYSQL_PASSWORD", ""),
)


def _own_redis_server() -> int:
    """Start a redis-server of this test run's own on a free port; its port.

    The tests flush and fill Redis databases: on the machine's Redis (6379)
    that would destroy somebody's data.  So every run gets a throw-away
    server, stopped when the run ends (and, through PR_SET_PDEATHSIG, when the
    run is killed).  The port goes into the environment, with the server's
    ``run_id`` (``BTU_TEST_REDIS_RUN_ID``), so the processes the tests start (and
    benchmarks' children) use the same server and can tell it is the one
    started for them; see :func:`_redis_port` and :class:`OwnRedis`.
    """
    import atexit
    import ctypes
    import shutil
    import signal
    import socket
    import subprocess

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server): "
                           "the tests start one of their own, the only Redis they flush")
    directory = tempfile.mkdtemp(prefix="btu-test-redis-")

    def die_with_parent() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    for _ in range(5):  # a free port can be taken between the probe and the bind
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", directory, "--logfile", os.path.join(directory, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        for _ in range(200):
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            continue
        if proc.poll() is not None:
            continue

        def stop(proc: subprocess.Popen[bytes] = proc) -> None:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(directory, ignore_errors=True)

        atexit.register(stop)
        os.environ["BTU_TEST_REDIS_PORT"] = str(port)
        os.environ[RUN_ID] = run_id_of(port)
        return port
    raise RuntimeError(f"could not start a redis-server for the tests (see {directory})")


#: The ``run_id`` of the server named by BTU_TEST_REDIS_PORT, set beside it by
#: whoever started that server for the tests (this module, the bench smoke): a
#: server that does not answer with it was not started for them.
RUN_ID = "BTU_TEST_REDIS_RUN_ID"


def run_id_of(port: int) -> str:
    """The ``run_id`` of the redis-server on ``port`` of loopback (one per process start)."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=5)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def _redis_port() -> int:
    """The port of a Redis the tests may flush: one started for them, never another.

    ``BTU_TEST_REDIS_PORT`` is taken only beside ``BTU_TEST_REDIS_RUN_ID``, which
    this module and the bench smoke set for the servers they start; a port named
    without it is refused rather than flushed.
    """
    port = os.environ.get("BTU_TEST_REDIS_PORT")
    if not port:
        return _own_redis_server()
    if not os.environ.get(RUN_ID):
        raise RuntimeError(
            f"BTU_TEST_REDIS_PORT={port} names a Redis the tests did not start, and they "
            "flush its databases: unset it (the tests start their own)")
    return int(port)


REDIS_PORT = _redis_port()
# Every server started for the tests listens on loopback.
REDIS_HOST = "127.0.0.1"


class OwnRedis(redis.Redis):
    """A client of the tests' Redis whose FLUSHDB/FLUSHALL refuse any other server:
    every flush in the tests and benchmarks goes through :func:`sync_redis`, so a
    client pointed elsewhere (by a patch, a URL, a changed global) flushes nothing.
    The server must also answer with the ``run_id`` its starter recorded: a
    server on that port that the tests did not start (theirs stopped, another
    took the port) is refused too."""

    def _ours(self) -> None:
        kwargs = self.connection_pool.connection_kwargs
        where = (kwargs.get("host"), int(kwargs.get("port") or 0))
        if where != (REDIS_HOST, REDIS_PORT) or not os.environ.get(RUN_ID) \
                or str(self.info("server").get("run_id")) != os.environ[RUN_ID]:
            raise RuntimeError(f"refusing to flush the Redis at {where[0]}:{where[1]}: "
                               "not one started for the tests")

    def flushdb(self, *args: Any, **kwargs: Any) -> Any:
        self._ours()
        return super().flushdb(*args, **kwargs)

    def flushall(self, *args: Any, **kwargs: Any) -> Any:
        self._ours()
        return super().flushall(*args, **kwargs)
# ``twistd`` of this interpreter, as a command line that works without the script.
TWISTD = [
    sys.executable, "-c",
    "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
]

# Redis database numbers by test module family, so suites never collide.
REDIS_DB_DAEMON = 2


def admin_connection(database: str | None = None, **extra: Any) -> pymysql.connections.Connection:
    return pymysql.connect(
        database=database, charset="utf8mb4", autocommit=True, **MYSQL, **extra
    )


class TestDatabase:
    """A throw-away database holding the Frappe tables and sample rows."""

    def __init__(self, load_samples: bool = True, prefix: str = "btu_test_") -> None:
        self.name = prefix + uuid.uuid4().hex[:12]
        conn = admin_connection(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_unicode_ci"
                )
                cur.execute(f"USE `{self.name}`")
                cur.execute(SCHEMA.read_text())
                while cur.nextset():
                    pass
                if not load_samples:
                    cur.execute("DELETE FROM `tabBTU Task Schedule`")
                    cur.execute("DELETE FROM `tabBTU Task`")
        finally:
            conn.close()

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = admin_connection(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        conn = admin_connection(self.name)
        try:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
        finally:
            conn.close()

    def add_task(self, name: str, function: str, arguments: str | None = None,
                 queue: str = "default", max_duration: int = 600, desc: str | None = None) -> None:
        self.execute(
            "INSERT INTO `tabBTU Task` (name, docstatus, desc_short, function_string, arguments,"
            " queue_name, max_task_duration) VALUES (%s, 1, %s, %s, %s, %s, %s)",
            (name, desc or name, function, arguments, queue, max_duration),
        )

    def add_schedule(self, name: str, task: str, cron: str | None, enabled: bool = True,
                     queue: str | None = "default", overrides: str | None = None) -> None:
        self.add_schedules([(name, task, cron, enabled, queue, overrides)])

    def add_schedules(self, rows: list[tuple[Any, ...]]) -> None:
        self.executemany(
            "INSERT INTO `tabBTU Task Schedule` (name, task, cron_string, enabled, queue_name,"
            " argument_overrides, task_description) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(n, t, c, int(e), q, o, t) for n, t, c, e, q, o in rows],
        )

    def set_zone(self, zone: str | None) -> None:
        self.execute(
            "DELETE FROM `tabSingles`"
            " WHERE doctype = 'BTU Configuration' AND field = 'cron_time_zone'"
        )
        if zone is not None:
            self.execute(
                "INSERT INTO `tabSingles` (doctype, field, value) VALUES"
                " ('BTU Configuration', 'cron_time_zone', %s)",
                (zone,),
            )

    def drop(self) -> None:
        conn = admin_connection()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            conn.close()


def parse_rq_time(value: bytes | None) -> float | None:
    """rq's ``enqueued_at`` (``2026-01-01T00:00:00.123456Z``) as unix seconds."""
    if not value:
        return None
    text = value.decode().rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def sync_redis(db: int = REDIS_DB_DAEMON) -> OwnRedis:
    return OwnRedis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def open_redis_db_lock(db: int) -> IO[str]:
    """The machine-wide lock file of Redis database ``db``, shared by tests and benchmarks.

    Concurrent runs (several people on one machine and its Redis) would flush
    and fill each other's database; holding this file's flock they take turns.
    Closing the file releases the lock.
    """
    path = os.path.join(tempfile.gettempdir(), f"btu_twisted-test-redis-db{db}.lock")
    return open(path, "w")


def try_lock(handle: IO[str]) -> bool:
    """Take the flock on ``handle`` if it is free, without waiting."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def exclusive_redis_db(case: Any, db: int, wait: float = 80.0) -> None:
    """Hold the machine-wide lock on Redis database ``db`` until ``case`` ends.

    Two runs of the tests at once (several people sharing one machine and its
    Redis) would flush and fill each other's database; with the lock they take
    turns, test by test.  Register it before any other cleanup so it is
    released last.  (Waiting is the one asynchronous helper here.)
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    handle = open_redis_db_lock(db)
    deadline = time.monotonic() + wait
    while not try_lock(handle):
        if time.monotonic() > deadline:
            handle.close()
            raise AssertionError(f"Redis db {db} stayed locked by another test run")
        await deferLater(reactor, 0.25, lambda: None)
    case.addCleanup(handle.close)  # closing the file releases the lock


def clean_redis(case: Any, db: int) -> redis.Redis:
    """A client on Redis database ``db``, flushed now and again when ``case`` ends."""
    client = sync_redis(db)
    client.flushdb()
    case.addCleanup(client.close)
    case.addCleanup(client.flushdb)
    return client


def fresh_services(case: Any, redis_db: int) -> tuple[TestDatabase, redis.Redis]:
    """An empty Frappe database and a flushed Redis database, both cleaned up after ``case``."""
    db = TestDatabase(load_samples=False)
    case.addCleanup(db.drop)
    return db, clean_redis(case, redis_db)


def toml_text(values: dict[str, Any]) -> str:
    """Just enough TOML for config_values() output (str, int, float, bool); None is left out."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_config(path: str | os.PathLike[str], values: dict[str, Any]) -> None:
    """Write a config file the way an admin should: readable by its owner only."""
    Path(path).write_text(toml_text(values))
    os.chmod(path, 0o600)


def config_values(
    database: str, redis_db: int = REDIS_DB_DAEMON, **overrides: Any
) -> dict[str, Any]:
    """A complete config dict (as TOML would give) for a daemon under test."""
    values: dict[str, Any] = dict(
        full_refresh_internal_secs=3600,
        scheduler_polling_interval=5,
        time_zone_string="UTC",
        tracing_level="INFO",
        startup_without_database_connections=False,
        mysql_user=MYSQL["user"],
        mysql_password=MYSQL["password"],
        mysql_host=MYSQL["host"],
        mysql_port=MYSQL["port"],
        mysql_database=database,
        rq_host=REDIS_HOST,
        rq_port=REDIS_PORT,
        rq_database=redis_db,
        socket_path="/tmp/btu-test-" + uuid.uuid4().hex[:8] + ".sock",
        job_builder="function",
    )
    values.update(overrides)
    return values
