"""The change feed's cheap look: has anything been written to the site's BTU tables?

Asking every site every 2 s which rows moved cost 3-4 queries per look: 1.5
SELECT/s per site, 750/s on a bench of 500.  InnoDB keeps, per table, the time
of its last committed write (``information_schema.TABLES.UPDATE_TIME``; it
moves at the commit, on MariaDB 10.11, and also for our own ``redis_job_id``
writes): one statement says whether ``tabBTU Task Schedule``, ``tabBTU Task``
or ``tabSingles`` moved.  Only then is the digest read, one more statement:
the count and CRC32 XOR of the schedule names (a plain SQL ``DELETE`` changes
it, where no ``modified`` moves), the XOR of every (name, modified) pair of
schedules and tasks, and the site's ``cron_time_zone``; only when the digest
moved are the rows that changed looked for.

UPDATE_TIME is NULL after a MariaDB restart until the next write, and after
InnoDB evicts the table from its dictionary cache (a bench has more tables
than ``table_definition_cache``): then a move is invisible, so the feed reads
the digest every so often anyway (``ChangeFeed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["WATCHED", "Digest", "Look", "TableTimes", "moved", "read_times"]

#: The tables watched, in the order of :data:`TableTimes`.
WATCHED = ("tabBTU Task Schedule", "tabBTU Task", "tabSingles")

#: UPDATE_TIME of each table of :data:`WATCHED` (None: NULL, or no such table).
TableTimes = tuple[datetime | None, ...]

# Whether a time is this second's too: a write later in the same second would
# not move it, so the next look must read the digest anyway.
_TIMES = (
    "SELECT `TABLE_NAME`, `UPDATE_TIME`, `UPDATE_TIME` >= NOW() - INTERVAL 1 SECOND"
    " FROM information_schema.`TABLES`"
    " WHERE `TABLE_SCHEMA` = DATABASE() AND `TABLE_NAME` IN (%s, %s, %s)"
)
_DIGEST = """
SELECT s.n, s.names, s.pairs, t.pairs,
       (SELECT v.`value` FROM `tabSingles` v
         WHERE v.`doctype` = 'BTU Configuration' AND v.`field` = 'cron_time_zone'
         LIMIT 1)
  FROM (SELECT COUNT(*) AS n, BIT_XOR(CRC32(`name`)) AS names,
               BIT_XOR(CRC32(CONCAT(`name`, '|', `modified`))) AS pairs
          FROM `tabBTU Task Schedule`) s,
       (SELECT BIT_XOR(CRC32(CONCAT(`name`, '|', `modified`))) AS pairs
          FROM `tabBTU Task`) t
"""


@dataclass(frozen=True)
class Digest:
    """What the feed compares from one look to the next.

    ``names``: (count, XOR of CRC32) of the schedule names — it moves when a
    schedule is added or deleted; ``rows``: XOR of CRC32(name|modified) of
    the schedules and of the tasks — it moves on every edit that bumps
    ``modified``; ``zone``: BTU Configuration's cron_time_zone.
    """

    names: tuple[int, int]
    rows: tuple[int, int]
    zone: str | None


def moved(previous: TableTimes | None, now: TableTimes) -> bool:
    """A write since ``previous``; a time gone NULL counts (it may hide one)."""
    return previous is None or previous != now


@dataclass(frozen=True)
class Look:
    """One look: the times; the digest when read; ``recent``: a time is of this very
    second, so a write later in it would go unseen by the times alone."""

    times: TableTimes
    digest: Digest | None
    recent: bool


def read_times(cursor: Any, previous: TableTimes | None, digest_anyway: bool) -> Look:
    """In a pool thread: the times, and the digest when they moved or when asked."""
    cursor.execute(_TIMES, WATCHED)
    rows = cursor.fetchall()
    found = {name: when for name, when, _ in rows}
    recent = any(bool(flag) for _, _, flag in rows)
    times = tuple(found.get(name) for name in WATCHED)
    if not (digest_anyway or moved(previous, times)):
        return Look(times, None, recent)
    cursor.execute(_DIGEST)
    n, names, pairs, task_pairs, zone = cursor.fetchone()
    digest = Digest((int(n), int(names or 0)), (int(pairs or 0), int(task_pairs or 0)),
                    zone or None)
    return Look(times, digest, recent)
