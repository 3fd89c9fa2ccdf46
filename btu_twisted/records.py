"""Plain records passed between the SQL layer, the planner and the builders.

They are frozen dataclasses built inside the database thread, so nothing that
crosses back to the reactor thread holds a cursor or a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

#: Characters of a text from outside (a schedule name, a job id, a cron string)
#: that a log line or an error message repeats: names of up to 64 KiB once
#: made 48 MB of log in two seconds, and a 20,000-character name a whole screen.
ECHO_CHARS = 80


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """One ``tabBTU Task Schedule`` row joined with its ``tabBTU Task``.

    ``cron_time_zone`` is the ``BTU Configuration`` single value, or ``None``
    when the site has not set one (the daemon then falls back to
    ``time_zone_string``).  Text columns that Frappe allows to be NULL are
    ``None`` here rather than empty strings, so that callers can tell the two
    apart in their error messages.
    """

    name: str
    task: str
    enabled: bool
    cron_string: str | None
    queue_name: str | None
    argument_overrides: str | None
    task_description: str | None
    schedule_description: str | None
    cron_time_zone: str | None
    # From tabBTU Task (None when the task row is missing).
    function_string: str | None
    task_arguments: str | None
    max_task_duration: int | None
    task_queue_name: str | None
    desc_short: str | None
    # The task's docstatus: 0 draft, 1 submitted, 2 cancelled; None when the
    # task row is missing.  BTU lets a schedule link a draft or submitted task
    # (Frappe refuses links to cancelled documents), so 0 and 1 run.
    task_docstatus: int | None = 1
    # "allow" (default) or "skip": hold back a run while the previous job is
    # still queued or started (DESIGN.md "Schedules without Frappe").
    overlap: str = "allow"
    # Positional arguments of the job (schedules_file only; BTU has none).
    args: tuple[object, ...] = ()
    # Where the row comes from: "mariadb" or "file" (schedules_file).
    source: str = "mariadb"

    def inactive_reason(self) -> str | None:
        """Why this schedule must not run at all, or None when it may."""
        if not self.enabled:
            return "the schedule is disabled"
        if self.task_docstatus is None:
            return f"its task {self.task} does not exist"
        if self.task_docstatus == 2:
            return f"its task {self.task} is cancelled"
        return None


def fingerprint(cron_string: str | None, zone: str | None, task_docstatus: int | None) -> int:
    """What a schedule's next run depends on, as one int (Python's hash: a
    per-process value, which is all the memory needs)."""
    return hash((cron_string, zone or None, task_docstatus))


def row_fingerprint(row: ScheduleRow) -> int:
    return fingerprint(row.cron_string, row.cron_time_zone, row.task_docstatus)


def shorten(value: str) -> str:
    """``value`` cut to :data:`ECHO_CHARS` characters, saying how much was cut."""
    if len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]}...[{len(value) - ECHO_CHARS} more characters]"
    return value


def echo(value: str) -> str:
    """``value`` quoted (``repr``) for a message, shortened like :func:`shorten`."""
    if len(value) > ECHO_CHARS:
        return f"{value[:ECHO_CHARS]!r}...[{len(value) - ECHO_CHARS} more characters]"
    return repr(value)


def iso_utc(unix: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``2026-11-28T18:47:51Z``), as ``status`` and the
    CLI's tables show times (None: None).  Here, not in health.py: the CLI imports
    no Twisted."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
