"""MariaDB access: an adbapi pool and the few parameterised queries we need.

Rows become ``ScheduleRow`` records inside the database thread.  Names are
always bound parameters, never formatted into SQL (COMPAT.md 6.3: the Rust
daemon returned TS-000001 for the name ``x' OR '1'='1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pymysql
from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow

_log = Logger()

# One query reads a whole batch; MariaDB handles IN lists of this size easily.
BATCH_SIZE = 500

ENABLED_NAMES = "SELECT `name` FROM `tabBTU Task Schedule` WHERE `enabled` = 1 ORDER BY `name`"

_SCHEDULES = """
SELECT s.`name`, s.`task`, s.`enabled`, s.`cron_string`, s.`queue_name`,
       s.`argument_overrides`, s.`task_description`, s.`schedule_description`,
       (SELECT v.`value` FROM `tabSingles` v
         WHERE v.`doctype` = 'BTU Configuration' AND v.`field` = 'cron_time_zone'
         LIMIT 1) AS cron_time_zone,
       t.`function_string`, t.`arguments`, t.`max_task_duration`, t.`queue_name`,
       t.`desc_short`
  FROM `tabBTU Task Schedule` s
  LEFT JOIN `tabBTU Task` t ON t.`name` = s.`task`
 WHERE s.`name` IN ({placeholders})
"""


def schedules_query(count: int) -> str:
    return _SCHEDULES.format(placeholders=", ".join(["%s"] * count))


def row_from(values: Sequence[Any]) -> ScheduleRow:
    (name, task, enabled, cron, queue, overrides, task_desc, sched_desc, zone,
     function, arguments, duration, task_queue, desc_short) = values
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
        conn = self.connectionFactory(self)
        trans = self.transactionFactory(self, conn)
        try:
            result = interaction(trans, *args, **kw)
            trans.close()
            conn.commit()
            return result
        except Exception as e:
            if _is_connection_error(e):
                dead = self.connections.pop(self.threadID(), None)
                if dead is not None:
                    try:
                        dead.close()
                    except Exception:
                        pass  # already closed by the driver
            else:
                try:
                    conn.rollback()
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
        self.health = Dependency("MariaDB", reactor)  # type: ignore[arg-type]
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
        self._pool = _QuietPool(
            "pymysql",
            cp_reactor=self._reactor,
            cp_min=1,
            cp_max=self._max,
            cp_reconnect=True,
            cp_noisy=False,
            **self._connect,
        )
        self._pool.start()

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def check(self) -> int:
        """Count DocTypes, as the Rust daemon did, to prove this is a Frappe database."""
        rows = await self._run(_fetch, "SELECT count(*) FROM `tabDocType`", ())
        return int(rows[0][0])

    async def enabled_names(self) -> list[str]:
        rows = await self._run(_fetch, ENABLED_NAMES, ())
        return [r[0] for r in rows]

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

    async def _run(self, func: Any, *args: Any) -> Any:
        if self._pool is None:
            raise RuntimeError("Database used before start()")
        started = self._reactor.seconds()  # type: ignore[attr-defined]
        try:
            result = await self._pool.runInteraction(func, *args)
        except Exception as e:
            if _is_connection_error(e):
                self.health.failed(e, started=started)
            raise
        self.health.succeeded()
        return result


def _fetch(cursor: Any, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    cursor.execute(query, params)
    return list(cursor.fetchall())


def _fetch_rows(cursor: Any, query: str, params: tuple[Any, ...]) -> list[ScheduleRow]:
    cursor.execute(query, params)
    return [row_from(r) for r in cursor.fetchall()]


def _is_connection_error(error: Exception) -> bool:
    if isinstance(error, pymysql.err.OperationalError):
        return True
    return isinstance(error, (pymysql.err.InterfaceError, OSError, ConnectionError))
