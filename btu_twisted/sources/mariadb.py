"""MariaDB access: one site's few parameterised queries, run on a DbPool (db_pool.py).

Rows become ``ScheduleRow`` records inside the database thread.  Names are
always bound parameters, never formatted into SQL (COMPAT.md 6.3: the Rust
daemon returned TS-000001 for the name ``x' OR '1'='1``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pymysql
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore

from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow, fingerprint
from btu_twisted.sources.db_pool import DbPool, is_connection_error
from btu_twisted.sources.table_times import Look, TableTimes, read_times

_R = TypeVar("_R")

# One query reads a whole batch; MariaDB handles IN lists of this size easily.
BATCH_SIZE = 500

_SCHEDULES = """
SELECT s.`name`, s.`task`, s.`enabled`, s.`cron_string`, s.`queue_name`,
       s.`argument_overrides`, s.`task_description`, s.`schedule_description`,
       (SELECT v.`value` FROM `tabSingles` v
         WHERE v.`doctype` = 'BTU Configuration' AND v.`field` = 'cron_time_zone'
         LIMIT 1) AS cron_time_zone,
       t.`function_string`, t.`arguments`, t.`max_task_duration`, t.`queue_name`,
       t.`desc_short`, t.`name`, t.`docstatus`
  FROM `tabBTU Task Schedule` s
  LEFT JOIN `tabBTU Task` t ON t.`name` = s.`task`
 WHERE s.`name` IN ({placeholders})
"""


# The full refresh: every schedule, in name order, a chunk at a time (keyset
# paging on the primary key, so each query is an index range however far in),
# with just what a next run depends on (plan_memory.py).
_STATES = """
SELECT s.`name`, s.`enabled`, s.`cron_string`, t.`name`, t.`docstatus`
  FROM `tabBTU Task Schedule` s
  LEFT JOIN `tabBTU Task` t ON t.`name` = s.`task`
 WHERE s.`name` > %s
 ORDER BY s.`name`
 LIMIT %s
"""
#: Rows per chunk of the full refresh's read.
STATES_CHUNK = 5000


# The change feed: rows whose ``modified`` moved.  Both columns are indexed.
_CHANGED_SCHEDULES = (
    "SELECT `name`, `modified` FROM `tabBTU Task Schedule` WHERE `modified` >= %s"
)
_CHANGED_TASKS = """
SELECT s.`name`, t.`modified`
  FROM `tabBTU Task` t
  JOIN `tabBTU Task Schedule` s ON s.`task` = t.`name`
 WHERE t.`modified` >= %s
"""
_HAS_BTU = (
    "SELECT count(*) FROM information_schema.tables"
    " WHERE table_schema = DATABASE() AND table_name = 'tabBTU Task Schedule'"
)
_LATEST = {
    "schedule": "SELECT MAX(`modified`) FROM `tabBTU Task Schedule`",
    "task": "SELECT MAX(`modified`) FROM `tabBTU Task`",
}
_ZONE = (
    "SELECT `value` FROM `tabSingles`"
    " WHERE `doctype` = 'BTU Configuration' AND `field` = 'cron_time_zone' LIMIT 1"
)

# BTU's "Last Execution Results" reads redis_job_id.  `modified` is left
# alone: the row did not change for Frappe (and our own change feed would see
# every run as an edit).
_WRITE_JOB_IDS = (
    "UPDATE `tabBTU Task Schedule` SET `redis_job_id` = CASE `name` {cases} END"
    " WHERE `name` IN ({placeholders})"
)
# A row locked by the BTU app's open transaction must not hold a pool thread
# for innodb's default 50 s; the ids are written again with the next batch.
_LOCK_WAIT_SECS = 2
_LOCKED = (1205, 1213)  # lock wait timeout, deadlock


#: (name, enabled, fingerprint): a schedule as the full refresh compares it.
ScheduleState = tuple[str, bool, int]


class RowsLocked(Exception):
    """The job-id write waited too long for rows another transaction holds."""


@dataclass(frozen=True)
class Changes:
    """What moved in MariaDB since the change feed's last look.

    ``schedules``: (schedule name, modified) of edited schedule rows;
    ``tasks``: (schedule name, task's modified) of schedules whose task row
    was edited; ``zone``: BTU Configuration's cron_time_zone now.
    """

    schedules: list[tuple[str, datetime]]
    tasks: list[tuple[str, datetime]]
    zone: str | None


def schedules_query(count: int) -> str:
    return _SCHEDULES.format(placeholders=", ".join(["%s"] * count))


def row_from(values: Sequence[Any]) -> ScheduleRow:
    (name, task, enabled, cron, queue, overrides, task_desc, sched_desc, zone,
     function, arguments, duration, task_queue, desc_short, task_found, task_docstatus) = values
    return ScheduleRow(
        name=name,
        task=task,
        enabled=bool(enabled),
        cron_string=cron,
        queue_name=queue,
        argument_overrides=overrides,
        task_description=task_desc,
        schedule_description=sched_desc,
        cron_time_zone=(zone or None),
        function_string=function,
        task_arguments=arguments,
        max_task_duration=None if duration is None else int(duration),
        task_queue_name=task_queue,
        desc_short=desc_short,
        task_docstatus=None if task_found is None else int(task_docstatus or 0),
    )


class Database:
    """One site's queries, run on a :class:`DbPool`: the bench's shared one, or
    (one site) a small pool of its own."""

    def __init__(
        self,
        reactor: IReactorCore,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        database: str,
        timeout: float = 10.0,
        max_connections: int = 3,
        pool: DbPool | None = None,
    ) -> None:
        """``pool``: shared by every site of a bench (started and stopped by its
        owner); None gives the site a pool of ``max_connections`` of its own."""
        self.health = Dependency("MariaDB", reactor)
        self._reactor = reactor
        self._connect = dict(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=max(1, int(timeout)),
            read_timeout=max(1, int(timeout)),
            write_timeout=max(1, int(timeout)),
        )
        self._owns_pool = pool is None
        self.pool = DbPool(reactor, max_connections) if pool is None else pool
        self._started = False

    def start(self) -> None:
        """Start the pool (when the site owns it); connections open on first use."""
        if self._owns_pool:
            self.pool.start()
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._owns_pool:
            self.pool.stop()
        else:
            self.pool.forget(self._connect).addErrback(lambda _: None)  # closing never fails

    async def check(self) -> int:
        """Count DocTypes, as the Rust daemon did, to prove this is a Frappe database."""
        rows = await self._run(_fetch, "SELECT count(*) FROM `tabDocType`", ())
        return int(rows[0][0])

    def has_btu_tables(self) -> Deferred[bool]:
        """Whether BTU is installed on this site: its database has ``tabBTU Task Schedule``
        (``frappe_sites = ["*"]`` serves only such sites).

        Through the bench's shared pool (started before the sites are
        chosen), without :meth:`start`: the probe of 500 sites stays within
        the pool's bound, and a database that hangs holds one worker until its
        timeouts, not the others.
        """
        return self.pool.run(self._connect, _probe_btu)

    async def table_times(self, previous: TableTimes | None, digest_anyway: bool) -> Look:
        """The change feed's cheap look: InnoDB's UPDATE_TIME of the three tables
        it watches, and the digest of their rows when a time moved (or went
        NULL), or when ``digest_anyway`` — one connection, one or two statements."""
        return await self._run(read_times, previous, digest_anyway)

    async def schedule_states(self, after: str, limit: int = STATES_CHUNK) -> list[ScheduleState]:
        """Up to ``limit`` schedules named after ``after`` (collation order):
        (name, enabled, fingerprint of what their next run depends on)."""
        return await self._run(_read_states, after, limit)

    async def read_schedules(self, names: Sequence[str]) -> dict[str, ScheduleRow]:
        """Rows for ``names``, keyed by exact name.

        The column collation is case- and trailing-space-insensitive, so
        ``ts-000001`` would find ``TS-000001``; keying by the stored name and
        looking names up exactly keeps a name meaning exactly one schedule.
        """
        found: dict[str, ScheduleRow] = {}
        unique = list(dict.fromkeys(names))
        for start in range(0, len(unique), BATCH_SIZE):
            chunk = unique[start:start + BATCH_SIZE]
            rows = await self._run(_fetch_rows, schedules_query(len(chunk)), tuple(chunk))
            found.update((row.name, row) for row in rows)
        return found

    async def changes(
        self, since: Mapping[str, datetime | None], overlap: timedelta
    ) -> Changes:
        """Rows modified at or after ``since[kind]`` ("schedule", "task").

        A ``since`` of None means "the latest ``overlap``": the feed's first
        look after start-up, when the full refresh plans everything anyway.
        """
        return await self._run(_read_changes, dict(since), overlap)

    async def write_job_ids(self, job_ids: Mapping[str, str]) -> None:
        """Set ``redis_job_id`` of each schedule, in one statement per batch."""
        items = list(job_ids.items())
        for start in range(0, len(items), BATCH_SIZE):
            await self._run(_write_job_ids, items[start:start + BATCH_SIZE])

    async def _run(self, func: Callable[..., _R], *args: Any) -> _R:
        if not self._started:
            raise RuntimeError("Database used before start()")
        started = self._reactor.seconds()
        try:
            result: _R = await self.pool.run(self._connect, func, *args)
        except Exception as e:
            if is_connection_error(e):
                self.health.failed(e, started=started)
            raise
        self.health.succeeded()
        return result


def _probe_btu(cursor: Any) -> bool:
    cursor.execute(_HAS_BTU)
    return int(cursor.fetchone()[0]) > 0


def _fetch(cursor: Any, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor.execute(query, params)
    return list(cursor.fetchall())


def _fetch_rows(cursor: Any, query: str, params: tuple[Any, ...]) -> list[ScheduleRow]:
    cursor.execute(query, params)
    return [row_from(r) for r in cursor.fetchall()]


def _read_states(cursor: Any, after: str, limit: int) -> list[ScheduleState]:
    cursor.execute(_ZONE)
    found = cursor.fetchone()
    zone = (found[0] or None) if found else None
    cursor.execute(_STATES, (after, limit))
    return [
        (name, bool(enabled), fingerprint(cron, zone, None if task is None else int(status or 0)))
        for name, enabled, cron, task, status in cursor.fetchall()
    ]


def _read_changes(
    cursor: Any, since: dict[str, datetime | None], overlap: timedelta
) -> Changes:
    found: dict[str, list[tuple[str, datetime]]] = {}
    for kind, query in (("schedule", _CHANGED_SCHEDULES), ("task", _CHANGED_TASKS)):
        mark = since.get(kind)
        if mark is None:
            cursor.execute(_LATEST[kind])
            latest = cursor.fetchone()[0]
            if latest is None:
                found[kind] = []
                continue
            mark = latest - overlap
        cursor.execute(query, (mark,))
        found[kind] = [(name, modified) for name, modified in cursor.fetchall()]
    cursor.execute(_ZONE)
    zone = cursor.fetchone()
    return Changes(found["schedule"], found["task"], (zone[0] or None) if zone else None)


def _write_job_ids(cursor: Any, items: list[tuple[str, str]]) -> None:
    cases = " ".join(["WHEN %s THEN %s"] * len(items))
    query = _WRITE_JOB_IDS.format(
        cases=cases, placeholders=", ".join(["%s"] * len(items))
    )
    params: list[str] = []
    for name, job_id in items:
        params += [name, job_id]
    params += [name for name, _ in items]
    cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (_LOCK_WAIT_SECS,))
    try:
        cursor.execute(query, tuple(params))
    except pymysql.err.OperationalError as e:
        if e.args and e.args[0] in _LOCKED:
            raise RowsLocked(str(e)) from None
        raise
