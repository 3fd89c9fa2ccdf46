"""Throw-away MariaDB databases (``btu_bench_*``) and Redis databases (10-12).

Synchronous helpers for the orchestrator only; the daemon under test never
imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pymysql
import redis

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_CANDIDATES = (
    ROOT / "tests" / "fixtures" / "frappe_schema.sql",
    ROOT.parent / "shared" / "frappe_schema.sql",
)

MYSQL = dict(
    host=os.environ.get("BTU_BENCH_MYSQL_HOST", "127.0.0.1"),
    port=int(os.environ.get("BTU_BENCH_MYSQL_PORT", "3306")),
    user=os.environ.get("BTU_BENCH_MYSQL_USER", "root"),
    password=os.environ.get("BTU_BENCH_MYSQL_PASSWORD", ""),
)
REDIS_HOST = os.environ.get("BTU_BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BTU_BENCH_REDIS_PORT", "6379"))

#: Redis database numbers reserved for the benchmarks.
REDIS_DB_OURS = 10
REDIS_DB_ANCHOR = 11
REDIS_DB_SPARE = 12

TASK = "BTU-BENCH"
FUNCTION = "bench.jobs.noop"


def schema_sql() -> str:
    for path in SCHEMA_CANDIDATES:
        if path.exists():
            return path.read_text()
    raise FileNotFoundError("frappe_schema.sql not found in tests/fixtures or ../shared")


def _connect(database: str | None = None, **extra: object) -> pymysql.connections.Connection:
    return pymysql.connect(database=database, charset="utf8mb4", autocommit=True, **MYSQL, **extra)


class BenchDatabase:
    """A fresh database with the Frappe tables, no sample rows, zone UTC, one task."""

    def __init__(self, zone: str = "UTC") -> None:
        self.name = "btu_bench_" + uuid.uuid4().hex[:10]
        conn = _connect(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 "
                    "COLLATE utf8mb4_unicode_ci"
                )
                cur.execute(f"USE `{self.name}`")
                cur.execute(schema_sql())
                while cur.nextset():
                    pass
        finally:
            conn.close()
        self.execute("DELETE FROM `tabBTU Task Schedule`")
        self.execute("DELETE FROM `tabBTU Task`")
        self.execute(
            "UPDATE `tabSingles` SET value = %s"
            " WHERE doctype = 'BTU Configuration' AND field = 'cron_time_zone'",
            (zone,),
        )
        self.execute(
            "INSERT INTO `tabBTU Task` (name, docstatus, desc_short, function_string, arguments,"
            " queue_name, max_task_duration) VALUES (%s, 1, %s, %s, %s, 'default', 600)",
            (TASK, "Benchmark no-op", FUNCTION, "{'source': 'btu bench'}"),
        )

    def execute(self, sql: str, params: object = None) -> list[tuple[object, ...]]:
        conn = _connect(self.name)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def add_schedules(self, rows: Iterable[tuple[str, str]]) -> int:
        """Insert enabled schedules (name, cron string) on queue ``default``."""
        values = [(name, TASK, cron, TASK) for name, cron in rows]
        conn = _connect(self.name)
        try:
            with conn.cursor() as cur:
                for start in range(0, len(values), 2000):
                    cur.executemany(
                        "INSERT INTO `tabBTU Task Schedule` (name, task, cron_string, enabled,"
                        " queue_name, task_description) VALUES (%s, %s, %s, 1, 'default', %s)",
                        values[start:start + 2000],
                    )
        finally:
            conn.close()
        return len(values)

    def drop(self) -> None:
        conn = _connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        finally:
            conn.close()


def drop_leftover_databases() -> list[str]:
    """Drop ``btu_bench_*`` databases a crashed earlier run left behind."""
    conn = _connect()
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'btu\\_bench\\_%%'")
            for (name,) in cur.fetchall():
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                dropped.append(name)
    finally:
        conn.close()
    return dropped


def sync_redis(db: int) -> redis.Redis:
    if db not in (REDIS_DB_OURS, REDIS_DB_ANCHOR, REDIS_DB_SPARE):
        raise ValueError(f"benchmarks only use Redis databases 10-12, not {db}")
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


@contextlib.contextmanager
def redis_dbs_locked(dbs: Sequence[int] = (REDIS_DB_OURS, REDIS_DB_ANCHOR, REDIS_DB_SPARE),
                     wait: float = 600.0) -> Iterator[None]:
    """Hold the machine-wide locks the integration tests take on their Redis
    databases (``exclusive_redis_db`` in ``tests/integration/test_faults.py``:
    ``flock`` on ``$TMPDIR/btu_twisted-test-redis-db<N>.lock``), so that a test
    run using one of these databases and a benchmark case take turns instead
    of flushing each other's data."""
    handles = []
    try:
        for db in dbs:
            path = os.path.join(tempfile.gettempdir(), f"btu_twisted-test-redis-db{db}.lock")
            handle = open(path, "w")  # noqa: SIM115 - closed below, which releases the lock
            handles.append(handle)
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Redis db {db} stayed locked by another run") from None
                    time.sleep(0.25)
        yield
    finally:
        for handle in handles:
            handle.close()


def flush(db: int) -> None:
    sync_redis(db).flushdb()


def schedule_names(count: int, prefix: str = "TS-B") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(1, count + 1)]


def paired(names: Sequence[str], crons: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, crons[i % len(crons)]) for i, name in enumerate(names)]
