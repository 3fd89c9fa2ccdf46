"""Where schedule rows come from: a schedules file, a Frappe site's MariaDB, or both.

The planner, the timer, the full refresh and the job-id writer ask one object
for rows, in the shape :class:`btu_twisted.sources.mariadb.Database` answers them; this is
that object.  File schedules are served from memory (the last good file,
``file_schedules.py``), every other name from MariaDB when one is configured.
Without MariaDB nothing here opens a connection: there is no pool, no health
of it, no change feed and no ``redis_job_id`` write.

Names are unique across the sources (a name in both is refused, at start and
at each reload), so a full refresh can page through both: first the file's
names (a snapshot taken when the refresh starts), then MariaDB's keyset pages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow, row_fingerprint
from btu_twisted.sources.change_feed import ChangeFeed
from btu_twisted.sources.mariadb import STATES_CHUNK, Changes, Database, ScheduleState
from btu_twisted.sources.schedules_file import (
    ScheduleFileError,
    SchedulesDiff,
    diff_schedules,
    read_schedules_file,
)

__all__ = ["FileSchedules", "NameConflict", "NoChangeFeed", "ScheduleSources"]


class NameConflict(Exception):
    """Schedule names in both the file and MariaDB; the message names them."""


class FileSchedules:
    """The schedules file's last good schedules, by name."""

    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[str, ScheduleRow] = {}
        self.loaded = False

    def read(self) -> dict[str, ScheduleRow]:
        """Read and check the file (blocking: call it in a thread once running)."""
        return read_schedules_file(self.path)

    def replace(self, rows: Mapping[str, ScheduleRow]) -> SchedulesDiff:
        """Use ``rows`` from now on; returns what changed."""
        diff = diff_schedules(self.rows, rows)
        self.rows = dict(rows)
        self.loaded = True
        return diff


class NoChangeFeed(Service):
    """The change feed where there is no MariaDB: a socket request is planned once.

    File schedules change only by a reload, which queues what it changed.
    """

    name = "changes"
    changes_seen = 0
    interval = 0.0  # nothing to look at

    def __init__(self, fifo: ScheduleFifo) -> None:
        self._fifo = fifo

    def requested(self, name: str) -> bool:
        return self._fifo.add(name)


class ScheduleSources:
    """Rows for names, states for the refresh, job ids back: from the file and/or MariaDB."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        db: Database | None = None,
        file: FileSchedules | None = None,
        run_in_thread: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        if db is None and file is None:
            raise ValueError("a schedule source needs MariaDB, a schedules file or both")
        self.db = db
        self.file = file
        self._run_in_thread = run_in_thread or _thread_runner(clock)
        # Without MariaDB nothing can be down: the file is read into memory.
        self.health = db.health if db is not None else Dependency("schedules file", clock)
        # The file's states as the running refresh saw them at its start.
        self._file_states: list[ScheduleState] = []
        self._file_positions: dict[str, int] = {}
        self._in_mariadb = False  # the running refresh has reached MariaDB's pages
        self._shadowed: set[str] = set()  # MariaDB names hidden by the file's, warned about

    @property
    def dependencies(self) -> tuple[Dependency, ...]:
        return (self.db.health,) if self.db is not None else ()

    def _file_rows(self) -> dict[str, ScheduleRow]:
        return self.file.rows if self.file is not None else {}

    # -- start-up and reload ------------------------------------------------------
    def load_file(self) -> SchedulesDiff:
        """Read the file now (start-up, before the reactor is busy); ScheduleFileError."""
        if self.file is None:
            return SchedulesDiff()
        return self.file.replace(self.file.read())

    async def check_names(self) -> None:
        """NameConflict when a file schedule's name is also a MariaDB schedule's."""
        if self.db is not None and self.file is not None:
            await self._check_against_db(self.file.rows)

    async def _check_against_db(self, rows: Mapping[str, ScheduleRow]) -> None:
        if self.db is None or not rows:
            return
        found = await self.db.read_schedules(list(rows))
        if found:
            names = ", ".join(sorted(found)[:10])
            more = f" and {len(found) - 10} more" if len(found) > 10 else ""
            raise NameConflict(
                f"schedules_file {self.file.path if self.file else ''}: schedule names also "
                f"in MariaDB: {names}{more}; a name may be in one source only"
            )

    async def reload(self) -> SchedulesDiff:
        """Re-read the file: the diff, or ScheduleFileError / NameConflict (nothing changes)."""
        if self.file is None:
            raise ScheduleFileError(["no schedules_file is configured; nothing to reload"])
        rows = await self._run_in_thread(self.file.read)
        await self._check_against_db(rows)
        return self.file.replace(rows)

    # -- what Database answers -------------------------------------------------
    async def read_schedules(self, names: Sequence[str]) -> dict[str, ScheduleRow]:
        rows = self._file_rows()
        found = {name: rows[name] for name in names if name in rows}
        rest = [name for name in names if name not in rows]
        if rest and self.db is not None:
            from_db = await self.db.read_schedules(rest)
            found.update(from_db)
        return found

    async def schedule_states(self, after: str, limit: int | None = None) -> list[ScheduleState]:
        """A chunk of the full refresh's read: the file's names first, then MariaDB's.

        ``after`` is the last name of the previous chunk ("" to start a
        refresh).  The file's names come from a snapshot taken at the start;
        once they run out the chunk is topped up from MariaDB's first page,
        and from then on ``after`` is a MariaDB keyset cursor.
        """
        if limit is None:
            limit = STATES_CHUNK  # read now, so a test may make the chunks small
        if after == "":
            self._file_states = [
                (name, row.enabled, row_fingerprint(row))
                for name, row in sorted(self._file_rows().items())
            ]
            self._file_positions = {s[0]: i for i, s in enumerate(self._file_states)}
            self._in_mariadb = False
        if self._in_mariadb:
            return self._shadow(await self.db.schedule_states(after, limit)) if self.db else []
        start = 0 if after == "" else self._file_positions[after] + 1
        chunk = self._file_states[start:start + limit]
        if len(chunk) < limit and self.db is not None:
            self._in_mariadb = True
            chunk += self._shadow(await self.db.schedule_states("", limit - len(chunk)))
        return chunk

    def _shadow(self, states: list[ScheduleState]) -> list[ScheduleState]:
        """A schedule saved in MariaDB under a file schedule's name after start-up does
        not run (the file's does), and is said so once.  Its state is replaced by the
        file's, not dropped: the page keeps its length and last name for the paging."""
        if not self._file_positions:
            return states
        shown = []
        for state in states:
            position = self._file_positions.get(state[0])
            if position is None:
                shown.append(state)
                continue
            if state[0] not in self._shadowed:
                self._shadowed.add(state[0])
                self.log.warn(
                    "schedule {schedule} is in MariaDB and in the schedules file; only the "
                    "file's runs (rename one of them)", schedule=state[0],
                )
            shown.append(self._file_states[position])
        return shown

    def keeps_job_ids(self, name: str) -> bool:
        """True when ``name``'s job ids go back to a MariaDB row (BTU's redis_job_id)."""
        return self.db is not None and name not in self._file_rows()

    async def write_job_ids(self, job_ids: Mapping[str, str]) -> int:
        """The one filter on job ids: how many went to a MariaDB row."""
        wanted = {name: job for name, job in job_ids.items() if self.keeps_job_ids(name)}
        if wanted and self.db is not None:
            await self.db.write_job_ids(wanted)
            return len(wanted)
        return 0

    async def changes(
        self, since: Mapping[str, datetime | None], overlap: timedelta
    ) -> Changes:
        if self.db is None:
            return Changes([], [], None)
        return await self.db.changes(since, overlap)

    def change_feed(
        self, clock: IReactorTime, fifo: ScheduleFifo, on_zone_changed: Callable[[], object]
    ) -> ChangeFeed | NoChangeFeed:
        """MariaDB's change feed, or a stand-in when every schedule is in the file."""
        if self.db is None:
            return NoChangeFeed(fifo)
        return ChangeFeed(clock, self.db, fifo, on_zone_changed=on_zone_changed)


def _thread_runner(clock: Any) -> Callable[..., Deferred[Any]]:
    """Run blocking work in the reactor's thread pool; a test Clock runs it inline."""
    if hasattr(clock, "getThreadPool"):
        return lambda func, *args: deferToThreadPool(clock, clock.getThreadPool(), func, *args)

    def inline(func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return succeed(func(*args))
        except Exception:
            return fail()

    return inline
