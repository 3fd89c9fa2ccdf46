"""``btu show-scheduled|next-runs``: what the daemon has planned, and what a cron string means.

``next-runs`` calls :func:`btu_twisted.cron.next_runs`, the very code the
daemon plans with, so a preview can never disagree with what will happen;
it needs no config file, so it also works on a laptop.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timezone
from typing import TypedDict, cast
from zoneinfo import ZoneInfo

from btu_twisted.cli.arguments import MAX_RUNS, parse_after
from btu_twisted.cli.common import FAILED, OK, CliError, Context, load_pymysql
from btu_twisted.cli.sql import cron_time_zone
from btu_twisted.cron import CronError, get_zone, next_runs
from btu_twisted.store.keys import Keys
from btu_twisted.store.pauses import read_paused

__all__ = ["MAX_RUNS", "cmd_next_runs", "cmd_show_scheduled", "parse_after"]


def _relative(seconds: float) -> str:
    """``in 4m 10s`` / ``5s ago``: how far a run is from now, to the second."""
    whole = int(round(abs(seconds)))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    if secs or not parts:
        parts.append(f"{secs}s")
    text = " ".join(parts[:2])
    return f"in {text}" if seconds >= 0 else f"{text} ago"


def _display_zone(ctx: Context) -> ZoneInfo:
    """The zone the daemon reads cron strings in: the site's cron_time_zone, else time_zone_string.

    The database only names the zone here, so when it cannot be read the
    listing still works, with a warning, in the config's zone.
    """
    config = ctx.config()
    if not config.uses_mariadb:  # schedules_file only: no site zone to read
        return get_zone(config.time_zone_string)
    load_pymysql()
    import pymysql

    try:
        site_zone = cron_time_zone(ctx)
    except (pymysql.err.MySQLError, OSError) as error:
        ctx.warn(f"cannot read cron_time_zone from MariaDB ({_one_line(error)}); "
                 f"showing times in time_zone_string {config.time_zone_string}")
        site_zone = None
    if site_zone:
        try:
            return get_zone(site_zone)
        except CronError:
            ctx.warn(f"the site's cron_time_zone {site_zone!r} is not a known zone; "
                     f"showing times in time_zone_string {config.time_zone_string}")
    return get_zone(config.time_zone_string)


class _Planned(TypedDict):
    """One member of the schedule set, as show-scheduled prints it (and --json emits it)."""

    member: str
    schedule: str | None
    unix: int
    local: str
    utc: str


def _one_line(error: BaseException) -> str:
    args: tuple[object, ...] = getattr(error, "args", ())
    text = args[1] if len(args) == 2 and isinstance(args[1], str) else str(error)
    return " ".join(text.split())[:200] or type(error).__name__


def cmd_show_scheduled(ctx: Context, args: argparse.Namespace) -> int:
    """List every planned run in the sorted set, earliest first, then the paused schedules."""
    from btu_twisted.store.schedule_store import split_member  # Twisted: not for next-runs

    keys = Keys(ctx.config().redis_key_prefix)
    connection = ctx.redis()
    # withscores=True without decode_responses: (member bytes, score) pairs; redis-py's
    # return type covers every form ZRANGE can take.
    entries = cast(
        "list[tuple[bytes, float]]", connection.zrange(keys.schedule_set, 0, -1, withscores=True)
    )
    paused = read_paused(connection, keys)
    zone = _display_zone(ctx)
    now = time.time()
    planned: list[_Planned] = []
    for raw, score in entries:
        member = raw.decode("utf-8", "replace")
        parsed = split_member(member)
        schedule, unix = parsed if parsed else (None, int(score))
        planned.append({
            "member": member,
            "schedule": schedule,
            "unix": unix,
            "local": datetime.fromtimestamp(unix, zone).isoformat(),
            "utc": datetime.fromtimestamp(unix, UTC).isoformat(),
        })
    planned.sort(key=lambda p: (p["unix"], p["member"]))
    if ctx.json:
        ctx.emit_json({"zone": zone.key, "planned": planned, "paused": [
            {"schedule": name, "since": datetime.fromtimestamp(since, UTC).isoformat()}
            for name, since in sorted(paused.since.items())]})
        return OK
    utc_too = not _is_utc(zone)  # a second column of the same times says nothing
    rows = [
        (p["schedule"] or f"(unreadable member {p['member']!r})",
         _short(p["unix"], zone), *([_short(p["unix"], UTC)] if utc_too else []),
         _relative(p["unix"] - now))
        for p in planned
    ]
    # Paused schedules have no run planned: listed after the runs, saying since when.
    rows += [(name, "paused", *(["paused"] if utc_too else []),
              f"since {_short(since, zone)} ({_relative(since - now)})")
             for name, since in sorted(paused.since.items())]
    ctx.table(("SCHEDULE", f"NEXT RUN ({zone.key})", *(["NEXT RUN (UTC)"] if utc_too else []),
               "WHEN"), rows, "No runs are planned.")
    return OK


def _is_utc(zone: ZoneInfo) -> bool:
    return zone.key in ("UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu",
                        "GMT", "Etc/GMT", "Etc/UCT", "UCT")


def _short(unix: float, zone: ZoneInfo | timezone) -> str:
    return datetime.fromtimestamp(unix, zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def cmd_next_runs(ctx: Context, args: argparse.Namespace) -> int:
    """Preview the next runs of a cron string, computed as the daemon computes them."""
    config = ctx.optional_config()  # an explicit --config must load even with --tz
    try:
        if args.tz is not None:
            zone = get_zone(args.tz)
        elif config is not None and not (config.is_multi_site and ctx.site is None):
            zone = _display_zone(ctx)  # the site's cron_time_zone, as the daemon plans
        elif config is not None:  # several sites and none chosen: the config's zone
            zone = get_zone(config.time_zone_string)
        else:
            zone = get_zone("UTC")
        after = args.after or datetime.now(UTC)
        if after.tzinfo is None:
            after = after.replace(tzinfo=zone)
        runs = next_runs(args.cron, zone, after.timestamp(), args.count)
    except CronError as error:
        raise CliError(str(error), FAILED) from None
    if ctx.json:
        ctx.emit_json([run.isoformat() for run in runs])
        return OK
    utc_too = not _is_utc(zone)
    rows = [(i, _short(run.timestamp(), zone), *([_short(run.timestamp(), UTC)] if utc_too else []))
            for i, run in enumerate(runs, 1)]
    ctx.table(("#", f"RUN ({zone.key})", *(["RUN (UTC)"] if utc_too else [])), rows, "No runs.")
    return OK
