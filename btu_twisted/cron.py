"""Cron strings read as wall-clock times in a time zone (DESIGN.md, "Cron and time zones").

croniter does the calendar search.  What sits on top is what the Rust daemon got
wrong (COMPAT.md 6.13-6.16) and croniter does not do the BTU way:

* The field forms are ours: 5 fields, 5 + a trailing year, or seconds first + year
  last.  croniter reads 6 fields as 5 + trailing seconds, so every string is handed
  to it in one canonical 7-field form.
* Each field is expanded here into an explicit list of numbers.  That gives messages
  a person can act on, and keeps croniter quirks out of the schedule: it reads an
  equal range such as ``5-5`` or ``7-7`` as the *whole* field, accepts wrap-around
  ranges, and has extensions (``L``, ``W``, ``#``, ``?``, ``H``, ``R``) Vixie cron
  does not, ``R`` even being random.
* croniter only ever sees naive wall-clock datetimes, so it does no DST handling of
  its own; mapping a wall-clock time to real instants (gaps, repeated hours) is
  done here, where the rules of the contract live.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

__all__ = ["CronError", "get_zone", "next_run", "next_runs", "validate"]

_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
# Vixie cron's shortcuts.  @reboot has no place in a scheduler that never reboots.
_SHORTCUTS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TOKEN = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?", re.ASCII)
# A leap day needs at most 8 years (2096 -> 2104); without a year field, a string
# that has not matched within this many years never will.
_YEARS_WITHOUT_YEAR_FIELD = 10
# With a year field croniter jumps straight to listed years; 1970-2099 is its range.
_YEARS_WITH_YEAR_FIELD = 130


class CronError(ValueError):
    """A cron string or time zone we cannot use; ``str()`` is a short reason for people."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low_name + i
    first_name_value: int = 0


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31)
_MONTH = _Field(
    "month", 1, 12,
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1,
)
# 0 and 7 are both Sunday, as in Vixie cron and as the BTU app writes it.
_DAY_OF_WEEK = _Field("day-of-week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
_YEAR = _Field("year", 1970, 2099)
_FIELDS = (_SECOND, _MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK, _YEAR)


def _value(text: str, field: _Field) -> int:
    if text.isdigit():
        value = int(text)
        if not field.low <= value <= field.high:
            raise CronError(
                f"{field.name} field '{text}' out of range ({field.low}-{field.high})"
            )
        return value
    if text in field.names:
        return field.names.index(text) + field.first_name_value
    raise CronError(f"{field.name} field: cannot read '{text}'")


def _expand(text: str, field: _Field) -> str:
    """One field as croniter should see it: ``*`` only if written ``*``, else a list.

    Which day rule applies (both or either) is decided from the text as written,
    in ``_parse``, not from croniter's view of these lists.
    """
    if text == "*":
        return "*"
    values: set[int] = set()
    for token in text.lower().split(","):
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise CronError(f"{field.name} field: cannot read '{token}'")
        star, first, last, step = match.groups()
        if star:
            low, high = field.low, field.high
        else:
            low = _value(first, field)
            # "5/15" is read as "5-<max>/15", like croniter and cronie.
            high = _value(last, field) if last else (field.high if step else low)
            if low > high:
                raise CronError(f"{field.name} range '{token}' runs backwards")
        stride = int(step) if step else 1
        if stride == 0:
            raise CronError(f"{field.name} step in '{token}' must be at least 1")
        values.update(range(low, high + 1, stride))
    if field is _DAY_OF_WEEK and 7 in values:
        values = (values - {7}) | {0}
    return ",".join(str(v) for v in sorted(values))


@dataclass(frozen=True)
class _Schedule:
    template: croniter
    # An hour field starting with '*' follows real time through a repeated hour.
    follows_real_time: bool

    def after(self, wall: datetime) -> datetime | None:
        """First matching wall-clock time strictly after ``wall``, None if none is near.

        A shallow copy per call keeps the parsed template shareable across threads;
        croniter keeps its position on the instance.
        """
        walker = copy.copy(self.template)
        try:
            found: datetime = walker.get_next(datetime, start_time=wall)
        except CroniterBadDateError:
            return None
        return found


@functools.lru_cache(maxsize=4096)
def _parse_or_error(cron_string: str) -> _Schedule | CronError:
    """Parse once per distinct string, failures included: proving that an
    impossible string (``0 0 30 2 *``) never matches searches years ahead, and
    every refresh would search again."""
    try:
        return _parse(cron_string)
    except CronError as e:
        return e


def _parse(cron_string: str) -> _Schedule:
    """Parse one (whitespace-normalised) string; see :func:`_parse_or_error`."""
    fields = cron_string.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0].lower() not in _SHORTCUTS:
            raise CronError(f"unknown cron shortcut '{fields[0]}'")
        fields = _SHORTCUTS[fields[0].lower()].split()
    if len(fields) == 5:
        fields = ["0", *fields, "*"]
    elif len(fields) == 6:
        fields = ["0", *fields]
    elif len(fields) != 7:
        raise CronError(
            f"cron string '{cron_string}' has {len(fields)} fields; expected 5,"
            " 6 (year last) or 7 (seconds first, year last)"
        )
    expression = " ".join(_expand(text, field) for text, field in zip(fields, _FIELDS, strict=False))
    years = _YEARS_WITH_YEAR_FIELD if fields[6] != "*" else _YEARS_WITHOUT_YEAR_FIELD
    # cronie (DOM_STAR/DOW_STAR): a day field whose text starts with '*' is
    # unrestricted, and then both fields must match; only when neither starts
    # with '*' is either one enough.  So "*/2" with a weekday means odd days
    # that are that weekday, not every odd day plus every such weekday.
    either_day = not fields[3].startswith("*") and not fields[5].startswith("*")
    template = croniter(
        expression,
        _EPOCH,
        second_at_beginning=True,
        max_years_between_matches=years,
        day_or=either_day,
    )
    schedule = _Schedule(template, fields[2].startswith("*"))
    if schedule.after(_EPOCH - _ONE_SECOND) is None:
        raise CronError(f"cron string '{cron_string}' never matches")
    return schedule


def _schedule(cron_string: object) -> _Schedule:
    if not isinstance(cron_string, str):
        raise CronError(f"cron string must be text, not {cron_string!r}")
    normalised = " ".join(cron_string.split())
    if not normalised:
        raise CronError("cron string is empty")
    parsed = _parse_or_error(normalised)
    if isinstance(parsed, CronError):
        raise CronError(str(parsed))
    return parsed


@functools.cache
def get_zone(name: str) -> ZoneInfo:
    """The zone named ``name`` (surrounding blanks ignored), or CronError if unknown."""
    key = name.strip() if isinstance(name, str) else ""
    if not key:
        raise CronError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(f"unknown time zone {name!r}") from None


def validate(cron_string: str) -> None:
    """Raise CronError unless ``cron_string`` can be parsed and matches at some time.

    Accepted: 5 fields ``min hour dom mon dow``; 6 fields = those plus a year; 7 fields
    ``sec min hour dom mon dow year``; and the shortcuts @hourly, @daily, @midnight,
    @weekly, @monthly, @yearly, @annually.  Fields take ``*``, numbers, ``a-b``,
    ``/step`` and comma lists; months and days of week also take English
    three-letter names.  A string that can only have matched in the past is valid
    here; ``next_run`` reports that it never matches again.
    """
    _schedule(cron_string)


def _offset(moment: datetime) -> int:
    offset = moment.utcoffset()
    if offset is None:
        raise CronError(f"time zone {moment.tzinfo!r} gives no UTC offset")
    return offset // _ONE_SECOND


def _transition(zone: tzinfo, low: int, high: int) -> int:
    """First instant in (low, high] whose UTC offset differs from low's.

    zoneinfo does not publish its transition list; the span searched is one DST
    shift long, so a bisection costs about a dozen offset look-ups.
    """
    before = _offset(datetime.fromtimestamp(low, zone))
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(datetime.fromtimestamp(middle, zone)) == before:
            low = middle
        else:
            high = middle
    return high


def _instants(zone: tzinfo, wall: datetime) -> tuple[int, int | None]:
    """The real instants of a wall-clock time: (first, second pass or None).

    A wall time in a gap is moved to the instant the clock jumps (the first instant
    after the gap), so every matching time of one gap fires once, there.
    """
    seconds = (wall - _EPOCH) // _ONE_SECOND
    before = _offset(wall.replace(tzinfo=zone, fold=0))
    after = _offset(wall.replace(tzinfo=zone, fold=1))
    if before == after:
        return seconds - before, None
    if before < after:
        return _transition(zone, seconds - after, seconds - before), None
    return seconds - before, seconds - after


def _wall(instant: int, offset: int) -> datetime:
    return _EPOCH + timedelta(seconds=instant + offset)


def next_run(cron_string: str, zone: str | ZoneInfo, after: float) -> int:
    """Smallest instant (unix seconds) strictly greater than ``after`` at which it fires.

    Matching wall-clock times reach their first instants in wall order, so the first
    match after the wall time of ``after`` gives the answer, with two exceptions
    dealt with on the side.  In the second pass of a stretch of wall time lived
    twice, the walls up to the end of the stretch already fired in the first pass.
    A schedule following real time also fires at second-pass instants, which come
    after the first instants of walls later than themselves.  Either way croniter
    is asked for one or two candidates, so per-second schedules stay cheap.
    """
    schedule = _schedule(cron_string)
    tz = get_zone(zone) if isinstance(zone, str) else zone
    start = math.floor(after)  # instants are whole seconds
    local = datetime.fromtimestamp(start, tz)
    first_offset = _offset(local.replace(fold=0))
    second_offset = _offset(local.replace(fold=1))
    walk_from = local.replace(tzinfo=None)
    repeated = first_offset != second_offset  # `after` is in wall time lived twice
    jump = start  # the instant the clock is set back, if `repeated`
    if repeated:
        shift = first_offset - second_offset
        if local.fold:
            jump = _transition(tz, start - shift, start)
            # Walls up to the end of the stretch fired in its first pass.
            walk_from = _wall(jump, first_offset) - _ONE_SECOND
        elif schedule.follows_real_time:
            jump = _transition(tz, start, start + shift)
    best: int | None = None
    while best is None or best <= start:
        candidate = schedule.after(walk_from)
        if candidate is None:
            raise CronError(
                f"cron string '{' '.join(cron_string.split())}' never matches after"
                f" {local:%Y-%m-%d %H:%M:%S %Z}"
            )
        best, _ = _instants(tz, candidate)
        walk_from = candidate  # only if a zone shifts twice within one shift's span
    if repeated and schedule.follows_real_time:
        # Second-pass instants after `start` belong to walls after this one, but no
        # earlier than the start of the stretch (it can be shorter than an hour).
        stretch_start = _wall(jump, second_offset) - _ONE_SECOND
        candidate = schedule.after(max(_wall(start, second_offset), stretch_start))
        if candidate is not None:
            _, second_pass = _instants(tz, candidate)
            if second_pass is not None and start < second_pass < best:
                best = second_pass
    return best


def next_runs(
    cron_string: str, zone: str | ZoneInfo, after: float, count: int
) -> list[datetime]:
    """The next ``count`` runs as aware datetimes in ``zone``, for previews.

    Stops early, without error, when a year-limited schedule runs out after at
    least one run; raises CronError when there is none at all.
    """
    tz = get_zone(zone) if isinstance(zone, str) else zone
    runs: list[datetime] = []
    instant: float = after
    for _ in range(count):
        try:
            instant = next_run(cron_string, tz, instant)
        except CronError:
            if runs:
                break
            raise
        runs.append(datetime.fromtimestamp(instant, tz))
    return runs
