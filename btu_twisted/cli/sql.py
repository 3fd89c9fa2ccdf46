"""The CLI's few reads from the Frappe database (synchronous PyMySQL).

Names are bound parameters, never formatted into the SQL (COMPAT.md 6.3).
The name columns compare case-insensitively, so a lookup keeps only the row
whose name is exactly the one asked for, as the daemon's own reads do.
"""

from __future__ import annotations

import argparse
from typing import Any

from btu_twisted.cli.common import OK, Context
from btu_twisted.records import ScheduleRow

__all__ = ["MANUAL_SCHEDULE", "cmd_list_tasks", "cron_time_zone", "read_task"]

#: The schedule name a job queued by hand carries (there is no schedule row).
MANUAL_SCHEDULE = "manual"

LIST_TASKS = (
    "SELECT `name`, `desc_short` FROM `tabBTU Task`"
    " WHERE `docstatus` = 1 AND `is_transient` = 0 ORDER BY `name`"
)
READ_TASK = (
    "SELECT `name`, `desc_short`, `function_string`, `arguments`, `max_task_duration`,"
    " `queue_name` FROM `tabBTU Task` WHERE `name` = %s"
)
CRON_TIME_ZONE = (
    "SELECT `value` FROM `tabSingles`"
    " WHERE `doctype` = 'BTU Configuration' AND `field` = 'cron_time_zone' LIMIT 1"
)


def _query(ctx: Context, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    connection = ctx.mariadb()
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def cmd_list_tasks(ctx: Context, args: argparse.Namespace) -> int:
    """List the submitted, non-transient BTU Tasks (what the Rust CLI listed)."""
    rows = _query(ctx, LIST_TASKS)
    if ctx.json:
        ctx.emit_json([{"name": name, "desc_short": desc} for name, desc in rows])
    else:
        ctx.table(("TASK", "DESCRIPTION"), rows, "No submitted BTU Tasks.")
    return OK


def read_task(ctx: Context, task: str) -> ScheduleRow | None:
    """The task as a schedule-less row for the job builders, or None if there is no such task.

    The row has no cron string and no queue of its own, so the builders take
    the task's queue, and its schedule name marks the job as queued by hand.
    """
    for name, desc, function, arguments, duration, queue in _query(ctx, READ_TASK, (task,)):
        if name != task:
            continue
        return ScheduleRow(
            name=MANUAL_SCHEDULE,
            task=name,
            enabled=True,
            cron_string=None,
            queue_name=None,
            argument_overrides=None,
            task_description=desc,
            schedule_description=None,
            cron_time_zone=None,
            function_string=function,
            task_arguments=arguments,
            max_task_duration=None if duration is None else int(duration),
            task_queue_name=queue,
            desc_short=desc,
        )
    return None


def cron_time_zone(ctx: Context) -> str | None:
    """The site's ``cron_time_zone`` setting, or None when it is unset."""
    rows = _query(ctx, CRON_TIME_ZONE)
    value = rows[0][0] if rows else None
    return value.strip() or None if isinstance(value, str) else None
