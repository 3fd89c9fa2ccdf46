"""Throw-away MariaDB databases (``btu_bench_*``), schedules files and Redis databases (10-12).

Synchronous helpers for the orchestrator only; the daemon under test never
imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import redis

from tests.integration import support

ROOT = Path(__file__).resolve().parent.parent

# The same MariaDB and Redis the integration tests use (their BTU_TEST_* variables).
MYSQL = support.MYSQL
REDIS_HOST = support.REDIS_HOST
REDIS_PORT = support.REDIS_PORT
#: The port of a redis-server that the smoke (:mod:`bench.smoke`) started for
#: this process alone, or None: set only beside ``BTU_TEST_REDIS_PORT``.
PRIVATE_REDIS_PORT = os.environ.get("BTU_BENCH_PRIVATE_REDIS_PORT") or None

#: Redis database numbers reserved for the benchmarks.
REDIS_DB_OURS = 10
REDIS_DB_ANCHOR = 11
REDIS_DB_SPARE = 12

TASK = "BTU-BENCH"
FUNCTION = "bench.jobs.noop"
#: Where a daemon case reads its schedules from (``schedule_source``).
SOURCES = ("mariadb", "file")


class BenchDatabase(support.TestDatabase):
    """A fresh database with the Frappe tables, no sample rows, one task, in ``zone``."""

    #: Only a :class:`ScheduleFile` gives the daemon a ``schedules_file``.
    schedules_file: str | None = None

    def __init__(self, zone: str = "UTC") -> None:
        super().__init__(load_samples=False, prefix="btu_bench_")
        self.set_zone(zone)
        self.add_task(TASK, FUNCTION, "{'source': 'btu bench'}", desc="Benchmark no-op")

    def add_schedules(self, rows: Iterable[tuple[str, str]]) -> int:  # type: ignore[override]
        """Insert enabled schedules (name, cron string) on queue ``default``."""
        values = [(name, TASK, cron, True, "default", None) for name, cron in rows]
        for start in range(0, len(values), 2000):
            super().add_schedules(values[start:start + 2000])
        return len(values)


class ScheduleFile:
    """A case's schedules in a ``schedules_file`` instead of a database.

    Same ``add_schedules`` and ``drop`` as :class:`BenchDatabase`, so a case
    takes either; ``name`` is None because there is no database: the daemon's
    config then has no ``mysql_*`` key and nothing connects to MariaDB
    (``daemon_config`` in :mod:`bench.harness`).  Each schedule calls the same
    function with the same keyword arguments as the database's task, on queue
    ``default``, so the jobs differ only in where the schedule came from.
    """

    name: str | None = None

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="btu-bench-file-"))
        self.path = self.directory / "schedules.toml"
        self.schedules_file = str(self.path)
        self.path.write_text("")

    def add_schedules(self, rows: Iterable[tuple[str, str]]) -> int:
        """Append enabled schedules (name, cron string); one write, as an admin saves."""
        tables = [
            f"[[schedule]]\nname = {json.dumps(name)}\ncron = {json.dumps(cron)}\n"
            f"function = {json.dumps(FUNCTION)}\nkwargs = {{ source = \"btu bench\" }}\n"
            f"queue = \"default\"\n\n"
            for name, cron in rows
        ]
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write("".join(tables))
        return len(tables)

    def drop(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def schedule_source(source: str) -> BenchDatabase | ScheduleFile:
    """A fresh, empty place for a case's schedules: ``mariadb`` or ``file``."""
    if source not in SOURCES:
        raise ValueError(f"schedule source must be one of {SOURCES}, not {source!r}")
    return BenchDatabase() if source == "mariadb" else ScheduleFile()


def on_private_redis() -> bool:
    """Whether REDIS_HOST:REDIS_PORT is the smoke's own redis-server (nobody
    else's data there, no lock needed)."""
    return PRIVATE_REDIS_PORT is not None and int(PRIVATE_REDIS_PORT) == REDIS_PORT


def drop_leftover_databases() -> list[str]:
    """Drop ``btu_bench_*`` databases a crashed earlier run left behind (not
    ``btu_bench_scale_*`` ones: a ``bench.scale`` may be using one meanwhile)."""
    conn = support.admin_connection()
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE 'btu\\_bench\\_%%'")
            for (name,) in cur.fetchall():
                if name.startswith("btu_bench_scale_"):
                    continue
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                dropped.append(name)
    finally:
        conn.close()
    return dropped


def sync_redis(db: int) -> redis.Redis:
    if db not in (REDIS_DB_OURS, REDIS_DB_ANCHOR, REDIS_DB_SPARE):
        raise ValueError(f"benchmarks only use Redis databases 10-12, not {db}")
    # Its FLUSHDB refuses any Redis but the one started for the tests/benches.
    return support.OwnRedis(host=REDIS_HOST, port=REDIS_PORT, db=db)


@contextlib.contextmanager
def redis_dbs_locked(dbs: Sequence[int] = (REDIS_DB_OURS, REDIS_DB_ANCHOR, REDIS_DB_SPARE),
                     wait: float = 600.0) -> Iterator[None]:
    """Hold the machine-wide locks the integration tests take on their Redis
    databases (``exclusive_redis_db`` in ``tests/integration/support.py``:
    ``flock`` on ``$TMPDIR/btu_twisted-test-redis-db<N>.lock``), so that a test
    run using one of these databases and a benchmark case take turns instead
    of flushing each other's data.  On the smoke's private Redis nobody else
    flushes those databases: no lock then."""
    if on_private_redis():
        yield
        return
    handles = []
    try:
        for db in dbs:
            handle = support.open_redis_db_lock(db)
            handles.append(handle)
            deadline = time.monotonic() + wait
            while not support.try_lock(handle):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis db {db} stayed locked by another run")
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
