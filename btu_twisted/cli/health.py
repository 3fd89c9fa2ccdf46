"""``btu health [NAME...]``: is each schedule working, and if not, why.

Reads the records the daemon keeps in ``<prefix>health`` (store/health_record.py)
and works out each state now, with the config's thresholds, so it answers
whether or not the daemon is running (a stuck job shows even then).  Exit
status as a Nagios plugin's: 0 all ok (paused and never run count as ok), 1
any warning, 2 any critical, so a systemd timer or any monitoring system can
run it.  With ``frappe_sites`` and no ``--site``, every site is shown.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Container, Sequence

from btu_twisted.cli.common import Context
from btu_twisted.records import iso_utc
from btu_twisted.store.health_record import (
    LEVELS,
    NEVER_RUN,
    Health,
    HealthRecord,
    classify,
    decode,
    thresholds_of,
)
from btu_twisted.store.keys import Keys
from btu_twisted.store.pauses import read_paused

__all__ = ["cmd_health", "paused_names", "read_records"]

_PAGE = 1000


def read_records(connection: object, keys: Keys, names: Sequence[str]) -> dict[str, HealthRecord
                                                                                   | None]:
    """The named schedules' records (None: none kept), or every record (HSCAN)."""
    if names:
        raw = connection.hmget(keys.health, list(names))  # type: ignore[attr-defined]
        return {name: decode(value) if value else None for name, value in zip(names, raw,
                                                                               strict=True)}
    found: dict[str, HealthRecord | None] = {}
    for field, value in connection.hscan_iter(keys.health, count=_PAGE):  # type: ignore[attr-defined]
        name = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
        found[name] = decode(value)
    return dict(sorted(found.items()))


def paused_names(connection: object, keys: Keys) -> Container[str]:
    """The schedules paused with ``btu pause``: shown as paused, never alarming."""
    return frozenset(read_paused(connection, keys).since)


def _row(site: str | None, name: str, record: HealthRecord | None,
         health: Health) -> dict[str, object]:
    r = record or HealthRecord()
    row: dict[str, object] = {} if site is None else {"site": site}
    row.update({
        "name": name,
        "state": health.state,
        "level": LEVELS[health.level],
        "reason": health.reason,
        "consecutive_failures": r.consecutive_failures,
        "last_success": iso_utc(r.last_success),
        "last_failure": iso_utc(r.last_failure),
        "last_error": r.last_error,
        "last_enqueued": iso_utc(r.last_enqueued),
        "last_started": iso_utc(r.last_started),
        "queue_secs": r.queue_secs,
        "run_secs": r.run_secs,
        "missed": r.missed,
        "missed_times": list(r.missed_times),
        "job_id": r.job.job_id if r.job else None,
    })
    return row


def _site_rows(ctx: Context, site: str | None, names: Sequence[str],
               now: float) -> list[tuple[int, dict[str, object]]]:
    config = ctx.config()
    keys = Keys(config.redis_key_prefix)
    connection = ctx.redis()
    records = read_records(connection, keys, names)
    paused = paused_names(connection, keys)
    thresholds = thresholds_of(config)
    rows = []
    for name, record in records.items():
        health = classify(record, now, thresholds, name in paused)
        rows.append((health.level, _row(site, name, record, health)))
    return rows


def cmd_health(ctx: Context, args: argparse.Namespace) -> int:
    """Each schedule's state; exit 0 ok, 1 warning, 2 critical."""
    names: list[str] = list(args.names)
    now = time.time()
    file_config = ctx._file_config()
    if file_config.is_multi_site and ctx.site is None:
        rows = []
        for site in sorted(file_config.site_configs):
            rows += _site_rows(dataclasses.replace(ctx, site=site, _config=None), site, names,
                               now)
    else:
        rows = _site_rows(ctx, ctx.site if file_config.is_multi_site else None, names, now)
    worst = max((level for level, _ in rows), default=0)
    if ctx.json:
        ctx.emit_json([row for _, row in rows])
        return worst
    shown = sorted(rows, key=lambda item: (-item[0], str(item[1].get("site", "")),
                                          str(item[1]["name"])))
    with_site = any("site" in row for _, row in rows)
    headers = (("SITE",) if with_site else ()) + (
        "SCHEDULE", "STATE", "FAILS", "LAST SUCCESS", "LAST FAILURE", "WHY / LAST ERROR")
    ctx.table(headers, [
        ((row["site"],) if with_site else ()) + (
            row["name"], _state(row), row["consecutive_failures"],
            row["last_success"] or "-", row["last_failure"] or "-", _why(row))
        for _, row in shown], "no schedule health recorded yet (no run enqueued, or "
        "schedule_health = false)")
    return worst


def _state(row: dict[str, object]) -> str:
    level = row["level"]
    return str(row["state"]) if level == "ok" else f"{row['state']} ({level})"


def _why(row: dict[str, object]) -> str:
    reason = str(row["reason"] or "")
    if row["state"] == NEVER_RUN:
        return reason
    error = row["last_error"]
    if error and row["consecutive_failures"]:
        return f"{reason}: {error}" if reason else str(error)
    return reason
