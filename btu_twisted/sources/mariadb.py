"""MariaDB access: an adbapi pool and the few parameterised queries we need.

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
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow, fingerprint

_R = TypeVar("_R")

_log = Logger()

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


class _QuietPool(adbapi.ConnectionPool):
    """adbapi's pool, without two tracebacks per dead connection.

    After any error adbapi rolls back; on a connection that died (MariaDB
    restarted, network cut) that rollback fails too and, with ``cp_reconnect``,
    adbapi logs "Rollback failed" twice, with tracebacks, for every pooled
    connection — an outage must be one log line (the ``Dependency``'s).  Our
    queries are autocommit reads, so there is nothing to roll back: a
    connection error just forgets this thread's connection (the next query
    opens a new one) and goes to the caller.  Other errors keep adbapi's path.
    """

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        conn = self.connectionFactory(self)  # type: ignore[no-untyped-call]  # adbapi is unannotated
        trans = self.transactionFactory(self, conn)  # type: ignore[no-untyped-call]  # adbapi is unannotated
        try:
            result = interaction(trans, *args, **kw)
            trans.close()  # type: ignore[no-untyped-call]  # adbapi is unannotated
            conn.commit()
            return result
        except Exception as e:
            if _is_connection_error(e):
                dead = self.connections.pop(self.threadID(), None)  # type: ignore[no-untyped-call]  # adbapi is unannotated
                if dead is not None:
                    try:
                        dead.close()
                    except Exception:
                        pass  # already closed by the driver
            else:
                try:
                    conn.rollback()  # type: ignore[no-untyped-call]  # adbapi is unannotated
                except Exception:
                    _log.failure("Rollback failed")
            raise


class Database:
    """The adbapi pool (its own small thread pool) and our queries."""

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
    ) -> None:
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
        self._max = max_connections
        self._pool: adbapi.ConnectionPool | None = None

    def start(self) -> None:
        """Start the thread pool; connections open on first use."""
        self._pool = _QuietPool(  # type: ignore[no-untyped-call]  # adbapi is unannotated
            "pymysql",
            cp_reactor=self._reactor,
            cp_min=1,
            cp_max=self._max,
            cp_reconnect=True,
            cp_noisy=False,
            **self._connect,
        )
        self._pool.start()  # type: ignore[no-untyped-call]  # adbapi is unannotated

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()  # type: ignore[no-untyped-call]  # adbapi is unannotated

    async def check(self) -> int:
        """Count DocTypes, as the Rust daemon did, to prove this is a Frappe database."""
        rows = await self._run(_fetch, "SELECT count(*) FROM `tabDocType`", ())
        return int(rows[0][0])

    def has_btu_tables(self) -> Deferred[bool]:
        """Whether BTU is installed on this site: its database has ``tabBTU Task Schedule``
        (``frappe_sites = ["*"]`` serves only such sites).

        One connection of its own in the reactor's thread pool, without
        :meth:`start`: a database that hangs holds a thread until its timeouts,
        where stopping a pool would join that thread in the reactor.
        """
        pool = self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, _probe_btu, dict(self._connect))

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
        if self._pool is None:
            raise RuntimeError("Database used before start()")
        started = self._reactor.seconds()
        try:
            result: _R = await self._pool.runInteraction(func, *args)  # type: ignore[no-untyped-call]  # adbapi is unannotated
        except Exception as e:
            if _is_connection_error(e):
                self.health.failed(e, started=started)
            raise
        self.health.succeeded()
        return result


def _probe_btu(connect: dict[str, Any]) -> bool:
    """Whether the database has BTU's tables; blocking, so it runs in a pool thread
    (``has_btu_tables`` hands it to ``deferToThreadPool``), never on the reactor."""
    connection = pymysql.connect(**connect)
    try:
        with connection.cursor() as cursor:
            cursor.execute(_HAS_BTU)
            return int(cursor.fetchone()[0]) > 0
    finally:
        connection.close()


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


def _is_connection_error(error: Exception) -> bool:
    if isinstance(error, pymysql.err.OperationalError):
        return True
    return isinstance(error, pymysql.err.InterfaceError | OSError | ConnectionError)


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
