"""What the control socket asks of one site: plan, re-plan, cancel, pause, resume,
reload, status.

The socket only needs these (``protocol.SchedulerControl``); keeping them
apart from the service that starts and stops the site's parts keeps each one
small enough to read whole.

A pause lives in Redis (store/pauses.py), not here: plan.lua refuses to plan
a paused schedule, so full refreshes, reloads, restarts and the other daemons
of the prefix all honour it.  A schedule found deleted loses its history and
pause (``close_lives``): when the planner reads it gone, when a pause or
resume names it, and a few seconds after a cancel (the BTU app cancels a
schedule it is about to delete, before its transaction commits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from btu_twisted import __version__
from btu_twisted.clock import DelayedCall
from btu_twisted.config import Config
from btu_twisted.daemon import replies
from btu_twisted.daemon.framing import Declined, echo, shorten
from btu_twisted.fifo import ScheduleFifo
from btu_twisted.health import Dependency
from btu_twisted.ops.stats import lateness_summary
from btu_twisted.planning.planner import Planner
from btu_twisted.planning.refresh import FullRefresh
from btu_twisted.records import iso_utc
from btu_twisted.seams import ControlStore, UnknownSchedule, as_deferred
from btu_twisted.sources.combined import NameConflict, ScheduleSources
from btu_twisted.sources.job_ids import JobIdRecorder
from btu_twisted.sources.schedules_file import ScheduleFileError
from btu_twisted.timing.timer import Timer

if TYPE_CHECKING:
    from btu_twisted.sources.change_feed import ChangeFeed
    from btu_twisted.sources.combined import NoChangeFeed

__all__ = ["CANCEL_TIMEOUT", "GONE_CHECK_SECS", "SiteControl", "SiteParts", "UnknownSchedule"]
# UnknownSchedule lives in seams.py (the socket answers it too); re-exported here.

CANCEL_TIMEOUT = 5.0
#: Seconds a ``reload NAME`` may wait for its row, and ``status`` for Redis.
LOOKUP_TIMEOUT = 3.0

#: How long after a cancel the schedule's row is looked for: the BTU app sends
#: the cancel of a deleted schedule before the delete commits (COMPAT.md 8.1).
GONE_CHECK_SECS = 5.0


class SiteParts(Protocol):
    """The parts of a site's service the control reads (the service itself, in the daemon)."""

    @property
    def config(self) -> Config: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def fifo(self) -> ScheduleFifo: ...
    @property
    def changes(self) -> ChangeFeed | NoChangeFeed: ...
    @property
    def timer(self) -> Timer: ...
    @property
    def store(self) -> ControlStore: ...
    @property
    def sources(self) -> ScheduleSources: ...
    @property
    def planner(self) -> Planner: ...
    @property
    def refresh(self) -> FullRefresh: ...
    @property
    def job_ids(self) -> JobIdRecorder: ...


class SiteControl:
    """The socket's requests, answered from the site's parts."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        parts: SiteParts,
        dependencies: Callable[[], dict[str, Dependency]],
        site: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._parts = parts
        self._dependencies = dependencies
        self._site = site
        # What `status` says about the schedules file's reloads.
        self._file_state: dict[str, object] = {"last_reload_at": None, "last_reload_error": None}
        # Cancelled names whose rows are looked for again shortly (GONE_CHECK_SECS).
        self._gone_checks: dict[str, DelayedCall] = {}

    def stop(self) -> None:
        """Drop the pending looks for cancelled rows (the service is stopping)."""
        for call in self._gone_checks.values():
            if call.active():
                call.cancel()
        self._gone_checks.clear()

    def request_planning(self, name: str) -> bool:
        # The BTU app asks before it commits: plan now and again shortly after.
        # Added once, by the feed: a planner asleep on the FIFO takes a name
        # added twice now, then finds it again in the batch it drains.
        return self._parts.changes.requested(name)

    def cancel(self, name: str) -> Deferred[bool]:
        # A name still waiting to be planned would bring the member back.
        self._parts.fifo.discard(name)
        # The BTU app cancels a schedule it is about to delete: nothing would
        # tell the timer otherwise (the change feed sees no deleted rows).
        self._parts.timer.forget([name])
        d = as_deferred(self._parts.store.cancel(name))
        self._check_gone_later(name)
        # The socket holds the client's connection until this fires.
        return d.addTimeout(CANCEL_TIMEOUT, self._reactor)

    def replan(self, name: str) -> Deferred[str]:
        """``btu reload NAME``: plan one schedule again, if a source has it.

        Unlike ``create_task_schedule`` (which the BTU app sends before its
        row is committed, so it must take any name), this is asked by a person
        who expects the name to exist: an unknown one fails with
        UnknownSchedule (a full FIFO with Declined), and nothing is queued.
        """
        return Deferred.fromCoroutine(self._replan(name))

    async def _replan(self, name: str) -> str:
        sources = self._parts.sources
        read = as_deferred(sources.read_schedules([name]))
        rows = await read.addTimeout(LOOKUP_TIMEOUT, self._reactor)
        row = rows.get(name)
        if row is None:
            where = " or ".join(
                label for label, source in (("the schedules file", sources.file),
                                            ("MariaDB", sources.db)) if source is not None
            )
            raise UnknownSchedule(f"no Task Schedule {echo(name)} in {where}")
        if not self.request_planning(name):
            raise Declined(
                f"the planning queue is full; Task Schedule {shorten(name)} was not queued")
        self.log.info("{schedule} re-planned on request", schedule=shorten(name))
        line = replies.created(name)
        if await as_deferred(self._parts.store.is_paused(name)):
            line += f" It is paused: nothing is planned until 'btu resume {name}'."
        elif not row.enabled:
            line += " It is disabled: its planned run, if any, is removed."
        return line

    def cancel_note(self, name: str) -> str | None:
        """A file schedule is planned again by the next full refresh or reload:
        say so, and how to keep it from running."""
        file = self._parts.sources.file
        if file is None or name not in file.rows:
            return None
        return (f"It is in the schedules file and comes back at the next full refresh or "
                f"reload; to keep it from running, use 'btu pause {name}'.")

    def _check_gone_later(self, name: str) -> None:
        old = self._gone_checks.pop(name, None)
        if old is not None and old.active():
            old.cancel()
        self._gone_checks[name] = self._reactor.callLater(
            GONE_CHECK_SECS, self._check_gone, name)

    def _check_gone(self, name: str) -> None:
        self._gone_checks.pop(name, None)
        d = Deferred.fromCoroutine(self._exists(name))
        d.addErrback(lambda failure: self.log.warn(
            "could not look for cancelled schedule {schedule}: {error}",
            schedule=shorten(name), error=failure.getErrorMessage()))

    async def _exists(self, name: str) -> bool:
        """Whether ``name`` has a row; when not, its history and pause end."""
        rows = await self._parts.sources.read_schedules([name])
        if name in rows:
            return True
        if await self._parts.store.close_lives([name]):
            self.log.info("deleted schedule {schedule}: its run history and pause are cleared",
                          schedule=shorten(name))
        return False

    def pause(self, name: str) -> Deferred[str]:
        """Pause ``name``: the reply line, or UnknownSchedule."""
        return Deferred.fromCoroutine(self._pause(name))

    async def _pause(self, name: str) -> str:
        if not await self._exists(name):
            raise UnknownSchedule(f"no Task Schedule named {name}")
        # Neither a name waiting to be planned nor a run being built may bring it back.
        self._parts.fifo.discard(name)
        self._parts.timer.forget([name])
        store = self._parts.store
        if not await store.pause(name, self._reactor.seconds()):
            return f"Task Schedule {name} was already paused; 'btu resume {name}' resumes it."
        await store.fold_history()
        self.log.info("paused {schedule}", schedule=shorten(name))
        return f"Paused Task Schedule {name}: no run is planned until 'btu resume {name}'."

    def resume(self, name: str) -> Deferred[str]:
        """Resume ``name`` and plan its next run from now: the reply line, or UnknownSchedule."""
        return Deferred.fromCoroutine(self._resume(name))

    async def _resume(self, name: str) -> str:
        if not await self._exists(name):
            raise UnknownSchedule(f"no Task Schedule named {name}")
        store = self._parts.store
        if not await store.resume(name, self._reactor.seconds()):
            return f"Task Schedule {name} is not paused; nothing to resume."
        await store.fold_history()
        # From now: the runs missed while paused are not fired.
        self._parts.fifo.add(name)
        self.log.info("resumed {schedule}", schedule=shorten(name))
        return (f"Resumed Task Schedule {name}: its next run is planned from now "
                "(runs missed while it was paused are not fired).")

    def reload(self) -> Deferred[str]:
        """Re-read the schedules file (SIGHUP, the ``reload`` request): one line saying
        what changed, or ScheduleFileError / NameConflict with the old set still in use."""
        return Deferred.fromCoroutine(self._reload())

    async def _reload(self) -> str:
        self._file_state["last_reload_at"] = self._reactor.seconds()
        try:
            diff = await self._parts.sources.reload()
        except ScheduleFileError as e:
            for problem in e.problems:
                self.log.error("{problem}", problem=problem)
            self.log.error("schedules file not reloaded: {count} problem(s); the last good "
                           "schedules keep running", count=len(e.problems))
            self._file_state["last_reload_error"] = "; ".join(e.problems)
            raise
        except NameConflict as e:
            self.log.error("schedules file not reloaded: {error}", error=str(e))
            self._file_state["last_reload_error"] = str(e)
            raise
        self._file_state["last_reload_error"] = None
        # Removed names too: the planner unplans the names it cannot read.
        self._parts.fifo.extend(diff.names())
        self.log.info("schedules file reloaded: {summary}", summary=diff.summary())
        return diff.summary()

    def _file_status(self) -> dict[str, object] | None:
        """The schedules file in use: its schedules and how the last reload went."""
        file = self._parts.sources.file
        if file is None:
            return None
        at = self._file_state["last_reload_at"]
        return {
            "path": file.path,
            "schedules": len(file.rows),
            "enabled": sum(1 for row in file.rows.values() if row.enabled),
            "last_reload_at": iso_utc(at) if isinstance(at, int | float) else None,
            "last_reload_error": self._file_state["last_reload_error"],
        }

    def status(self) -> Deferred[dict[str, object]]:
        """The ``status`` request: :meth:`snapshot` with the sorted set counted
        now, not at the timer's last look (which may be a polling interval
        old: right after start-up it said 0 members while runs were planned)."""
        return Deferred.fromCoroutine(self._counted_status())

    async def _counted_status(self) -> dict[str, object]:
        status = self.snapshot()
        try:
            counted = as_deferred(self._parts.store.window(self._reactor.seconds(), 1))
            window = await counted.addTimeout(LOOKUP_TIMEOUT, self._reactor)
        except Exception as e:
            status["members_error"] = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            return status
        due = window.near[0] if window.near else window.beyond
        status["members"] = window.count
        status["members_counted_at"] = status["now"]
        status["next_due"] = None if due is None else {"member": due[0], "at": iso_utc(due[1])}
        return status

    def snapshot(self) -> dict[str, object]:
        """Every time is ISO 8601 UTC, every duration seconds in a ``_secs`` field.

        ``members`` and ``next_due`` are the timer's last look at the sorted set
        (``members_counted_at``); :meth:`status` counts them again.
        """
        now = self._reactor.seconds()
        started_at = self._parts.started_at
        stats = self._parts.timer.stats
        status: dict[str, object] = {
            "version": __version__,
            "name": self._parts.config.name,
            "environment": self._parts.config.environment_name,
            **({"site": self._site} if self._site is not None else {}),
            "started_at": iso_utc(started_at),
            "uptime_secs": None if started_at is None else round(now - started_at, 3),
            "fifo_length": len(self._parts.fifo),
            "members": stats.members_seen,
            "members_counted_at": iso_utc(stats.seen_at),
            # Due within the timer's lookahead at that look: the runs it prepares.
            "members_near": stats.near_seen,
            "next_due": None if stats.next_due is None else {
                "member": stats.next_due[0], "at": iso_utc(stats.next_due[1]),
            },
            "enqueued": stats.enqueued,
            "skipped": stats.skipped,
            "lost_to_other_daemons": stats.lost,
            "cancelled_while_claiming": stats.withdrawn,
            "last_enqueue": iso_utc(stats.last_enqueue),
            "last_enqueued_schedule": stats.last_schedule,
            "lateness": lateness_summary(stats.lateness),
            "planned": self._parts.planner.planned_total,
            "changes_seen": self._parts.changes.changes_seen,
            "redis_keys_lost": self._parts.refresh.keys_lost,
            "redis_job_ids_written": self._parts.job_ids.written,
            "last_run_ahead": {
                name: iso_utc(when) for name, when in sorted(self._parts.planner.ahead.items())
            },
            "last_full_refresh": self._parts.refresh.last,
            "schedules_file": self._file_status(),
            "services": {name: dep.snapshot() for name, dep in self._dependencies().items()},
            "now": iso_utc(now),
        }
        # Replaced here, not in the literal (which keeps the key's place in the JSON):
        # refresh.py's record holds raw unix seconds.
        status["last_full_refresh"] = _refresh_times(self._parts.refresh.last)
        return status


def _refresh_times(last: dict[str, object]) -> dict[str, object] | None:
    """The refresh's raw unix ``at`` and ``duration``, as ISO 8601 and ``duration_secs``."""
    if not last:
        return None
    at, duration = last.get("at"), last.get("duration")
    return {
        "at": iso_utc(at) if isinstance(at, int | float) else None,
        "duration_secs": round(duration, 3) if isinstance(duration, int | float) else None,
        **{key: value for key, value in last.items() if key not in ("at", "duration")},
    }
