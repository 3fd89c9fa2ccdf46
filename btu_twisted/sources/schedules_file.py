"""Schedules from a TOML file (``schedules_file``): the scheduler without Frappe.

Plain RQ users keep their recurring jobs in a file of ``[[schedule]]`` tables
instead of MariaDB rows.  Each table becomes a :class:`ScheduleRow` (``source
= "file"``), so the planner, the timer and the full refresh treat it like a
BTU Task Schedule; the ``function`` builder runs it.

Every entry is checked before any is used, and every problem is reported,
one line each naming the file's line and the key: the file is usually edited
by hand and re-read with SIGHUP, and fixing one mistake per reload is a slow
loop.  A file with any problem is not used at all (the caller keeps the last
good schedules): half a file would silently drop schedules.  tomllib gives no
line numbers, so they come from scanning the text for the ``[[schedule]]``
headers and the keys under them.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import math
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from btu_twisted import cron
from btu_twisted.records import ScheduleRow, echo

__all__ = [
    "OVERLAP_CHOICES",
    "ScheduleFileError",
    "SchedulesDiff",
    "diff_schedules",
    "parse_schedules",
    "read_schedules_file",
]

#: ``overlap`` values: run regardless, or hold a run back while the last job is unfinished.
OVERLAP_CHOICES = ("allow", "skip")

_REQUIRED = ("name", "cron", "function")
_KEYS = (*_REQUIRED, "kwargs", "args", "queue", "timezone", "timeout", "enabled", "overlap",
         "description")
# A dotted path rq can import: at least "module.function".
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*(?:schedule|\"schedule\"|'schedule')[ \t]*\]\]")
_ANY_HEADER = re.compile(r"^[ \t]*\[")
# The member in Redis is "<name>|<unix seconds>"; Frappe's name column is varchar(140).
_MAX_NAME = 140
_UNSAFE_NAME = re.compile(r"[|\x00-\x1f\x7f]")


class ScheduleFileError(Exception):
    """The file cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class _Problem(Exception):
    """One value is unusable; the message follows ``KEY: ``."""


@dataclass(frozen=True)
class SchedulesDiff:
    """Which names a new set of schedules adds, changes or removes."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def names(self) -> list[str]:
        """Every name the planner must look at again."""
        return [*self.added, *self.changed, *self.removed]

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.changed)} changed, "
                f"{len(self.removed)} removed")


def diff_schedules(
    old: Mapping[str, ScheduleRow], new: Mapping[str, ScheduleRow]
) -> SchedulesDiff:
    return SchedulesDiff(
        added=tuple(sorted(n for n in new if n not in old)),
        changed=tuple(sorted(n for n in new if n in old and old[n] != new[n])),
        removed=tuple(sorted(n for n in old if n not in new)),
    )


@dataclass
class _Lines:
    """Where each ``[[schedule]]`` table and its keys start in the text."""

    text: str
    headers: list[int] = field(default_factory=list)  # 0-based line index per table

    def __post_init__(self) -> None:
        self.lines = self.text.splitlines()
        self.headers = [i for i, line in enumerate(self.lines) if _HEADER.match(line)]

    def of_table(self, index: int) -> int:
        """1-based line of table ``index`` (1 when it cannot be found)."""
        return self.headers[index] + 1 if index < len(self.headers) else 1

    def of_key(self, index: int, key: str) -> int:
        """1-based line of ``key`` in table ``index``, else the table's line."""
        if index >= len(self.headers):
            return self._top_level(key)
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines)
        pattern = re.compile(
            rf"^[ \t]*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')[ \t]*[.=]"
            rf"|^[ \t]*\[[ \t]*schedule[ \t]*\.[ \t]*{re.escape(key)}[ \t]*[.\]]"
        )
        for i in range(self.headers[index] + 1, end):
            if pattern.match(self.lines[i]):
                return i + 1
        return self.of_table(index)

    def _top_level(self, key: str) -> int:
        pattern = re.compile(rf"^[ \t]*(?:\[+[ \t]*)?[\"']?{re.escape(key)}[\"']?[ \t]*[.=\]]")
        for i, line in enumerate(self.lines):
            if pattern.match(line):
                return i + 1
            if _ANY_HEADER.match(line) and not line.lstrip().startswith(f"[{key}"):
                break
        return 1


def read_schedules_file(path: str) -> dict[str, ScheduleRow]:
    """Read and check the file at ``path``; ScheduleFileError lists every problem."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as error:
        raise ScheduleFileError([f"{path}: cannot read: {error.strerror or error}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScheduleFileError([f"{path}: not UTF-8 (byte {error.start})"]) from None
    return parse_schedules(text, path)


def parse_schedules(text: str, source: str = "<schedules>") -> dict[str, ScheduleRow]:
    """The schedules in ``text``, by name; ScheduleFileError lists every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScheduleFileError([f"{source}: TOML syntax error: {error}"]) from None
    lines = _Lines(text)
    problems: list[str] = []
    for key in data:
        if key != "schedule":
            problems.append(f"{source}:{lines.of_key(len(lines.headers), key)}: {key}: "
                            f"unknown key{_hint(key, ['schedule'])} (write [[schedule]] tables)")
    tables = data.get("schedule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(f"{source}:{lines.of_key(len(lines.headers), 'schedule')}: schedule: "
                        "expected [[schedule]] tables")
        tables = []
    rows: dict[str, ScheduleRow] = {}
    first_line: dict[str, int] = {}
    # Schedules of one file mostly share their function, queue, zone and
    # arguments: one copy of each text is kept for all the rows that hold it
    # (the rows stay in memory; about 2 MiB at 10,000 schedules).
    texts: dict[object, Any] = {}

    def same(value: Any) -> Any:
        return texts.setdefault(value, value) if isinstance(value, str) else value

    for index, table in enumerate(tables):
        where = lines.of_table(index)
        found: list[tuple[int, str]] = []
        label = table.get("name") if isinstance(table.get("name"), str) else None
        named = f"schedule {echo(label)}" if label else f"schedule #{index + 1}"

        def problem(
            key: str, message: str, index: int = index, named: str = named,
            found: list[tuple[int, str]] = found,
        ) -> None:
            line = lines.of_key(index, key)
            found.append((line, f"{source}:{line}: {named}: {key}: {message}"))

        row = _row(table, problem, same)
        if row is not None and row.name in rows:
            problem("name", f"duplicate schedule name {row.name!r} "
                            f"(first at line {first_line[row.name]})")
        elif row is not None and not found:
            rows[row.name] = row
            first_line[row.name] = where
        problems += [text for _, text in sorted(found)]
    if problems:
        raise ScheduleFileError(problems)
    return rows


def _hint(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _row(table: Mapping[str, Any], problem: Any,
         same: Callable[[Any], Any] = lambda value: value) -> ScheduleRow | None:
    """Check one table, reporting each problem; the row, or None when any key
    is unusable.  ``same`` gives the one copy kept of each text."""
    values: dict[str, Any] = {}
    ok = True
    for key in table:
        if key not in _KEYS:
            problem(key, f"unknown key{_hint(key, _KEYS)}")
            ok = False
    for key in _REQUIRED:
        if key not in table:
            problem(key, "required key is missing")
            ok = False
    for key in _KEYS:
        if key not in table:
            continue
        try:
            values[key] = _CHECKS[key](table[key])
        except _Problem as error:
            problem(key, str(error))
            ok = False
    if not ok:
        return None
    values = {key: same(value) for key, value in values.items()}
    function = values["function"]
    return ScheduleRow(
        name=values["name"],
        task=function,
        enabled=values.get("enabled", True),
        cron_string=values["cron"],
        queue_name=values.get("queue"),
        argument_overrides=None,
        task_description=values.get("description"),
        schedule_description=values.get("description"),
        cron_time_zone=values.get("timezone"),
        function_string=function,
        # JSON text, as BTU keeps arguments: the builders parse it (merged_kwargs).
        task_arguments=same(json.dumps(values.get("kwargs", {}))),
        max_task_duration=values.get("timeout"),
        task_queue_name=None,
        desc_short=None,
        task_docstatus=1,
        overlap=values.get("overlap", "allow"),
        args=tuple(values.get("args", ())),
        source="file",
    )


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Problem(f"expected a string, got {_type(value)}")
    return value


def _non_empty(value: Any) -> str:
    text = _string(value)
    if not text.strip():
        raise _Problem("must not be empty")
    return text.strip()


def _name(value: Any) -> str:
    text = _non_empty(value)
    if len(text) > _MAX_NAME:
        raise _Problem(f"longer than {_MAX_NAME} characters")
    if _UNSAFE_NAME.search(text):
        raise _Problem("must not contain '|' or control characters")
    return text


def _cron(value: Any) -> str:
    """A cron string that will fire: one whose matches all lie in the past
    (``* * * * * * 1999``) is refused like one that never matches at all
    (``0 0 29 2 * 2027``), not accepted to sit idle forever."""
    text = _non_empty(value)
    try:
        cron.validate(text)
        cron.next_run(text, "UTC", time.time())
    except cron.CronError as error:
        raise _Problem(str(error)) from None
    return text


def _function(value: Any) -> str:
    text = _non_empty(value)
    if not _DOTTED.fullmatch(text):
        raise _Problem(f"expected a dotted path such as 'package.module.function', got {text!r}")
    return text


def _plain(value: Any, key: str) -> None:
    """Arguments travel as JSON: TOML dates and times (and NaN/inf) cannot."""
    if isinstance(value, _dt.date | _dt.time | _dt.datetime):
        raise _Problem(f"{key} holds a TOML date or time; pass it as a string")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Problem(f"{key} holds {value!r}, which JSON cannot carry")
    if isinstance(value, dict):
        for inner in value.values():
            _plain(inner, key)
    elif isinstance(value, list):
        for inner in value:
            _plain(inner, key)


def _kwargs(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Problem(f"expected a table of keyword arguments, got {_type(value)}")
    for key in value:
        if not key.isidentifier():
            raise _Problem(f"{key!r} is not a Python keyword argument name")
    _plain(value, "the table")
    return value


def _args(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Problem(f"expected an array of positional arguments, got {_type(value)}")
    _plain(value, "the array")
    return value


def _queue(value: Any) -> str:
    text = _non_empty(value)
    if any(c.isspace() for c in text):
        raise _Problem(f"must not contain blanks, got {text!r}")
    return text


def _timezone(value: Any) -> str:
    text = _non_empty(value)
    try:
        cron.get_zone(text)
    except cron.CronError as error:
        raise _Problem(str(error)) from None
    return text


def _timeout(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem(f"expected a whole number of seconds, got {_type(value)}")
    seconds: int = value
    if seconds <= 0:
        raise _Problem(f"must be greater than 0, got {seconds}")
    return seconds


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Problem(f"expected true or false, got {_type(value)}")
    return value


def _overlap(value: Any) -> str:
    text = _string(value)
    if text not in OVERLAP_CHOICES:
        raise _Problem(f"must be 'allow' or 'skip', got {text!r}")
    return text


def _type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    for kind, label in names.items():
        if type(value) is kind:
            return f"{label} ({value!r:.40})" if kind is not dict else label
    return f"a {type(value).__name__}"


_CHECKS = {
    "name": _name,
    "cron": _cron,
    "function": _function,
    "kwargs": _kwargs,
    "args": _args,
    "queue": _queue,
    "timezone": _timezone,
    "timeout": _timeout,
    "enabled": _enabled,
    "overlap": _overlap,
    "description": _string,
}
