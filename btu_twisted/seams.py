"""The typed seams where the rooms meet, in one place.

Each Protocol says what one part needs of another, named for its user: the
timer, the planner, the refresh and the socket each see the store through the
few methods they call, so a fake in the tests (``tests/fakes.py``) and the real
object are held to the same shape.  Types that cross a seam (a ``Claim``, a
``BuiltJob``) are named here for annotations only: this module imports nothing
of the rooms at run time, so every room may import it.

The reactor's clock, as mypy can check it, is in ``clock.py``; the store's own
connection (``RedisCommands``) in ``store/gateway.py``: neither is a meeting point
of two rooms.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred, ensureDeferred

if TYPE_CHECKING:
    from btu_twisted.health import Dependency
    from btu_twisted.jobs.fields import BuiltJob
    from btu_twisted.records import ScheduleRow
    from btu_twisted.store.claims import Claim
    from btu_twisted.store.keys import Keys
    from btu_twisted.store.pauses import Paused
    from btu_twisted.store.schedule_store import Window

__all__ = [
    "BuilderSettings",
    "ControlStore",
    "JobBuilder",
    "MetricsSink",
    "PlannerStore",
    "RefreshStore",
    "RowReader",
    "SchedulerControl",
    "ScriptRunner",
    "TimerStore",
    "UnknownSchedule",
    "as_deferred",
]

T = TypeVar("T")


class RowReader(Protocol):
    """Where the planner and the timer read rows: MariaDB (sql.Database) or
    every configured source (sources.ScheduleSources)."""

    async def read_schedules(self, names: Sequence[str]) -> dict[str, ScheduleRow]:
        """Rows for ``names`` that exist, keyed by exact name."""
        ...


class JobBuilder(Protocol):
    """What the scheduler calls for each due run."""

    @property
    def immediate(self) -> bool:
        """True when build() returns an already-fired Deferred: the timer builds inline."""
        ...

    @property
    def health(self) -> Dependency | None:
        """The outside service the builder asks (the Frappe site), for status and metrics."""
        ...

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Build the job for ``row`` scheduled at unix time ``when``; fails with BuildError."""
        ...

    def close(self) -> Deferred[None]:
        """Release connections; called when the service stops."""
        ...


class BuilderSettings(Protocol):
    """The settings the builders read: a :class:`~btu_twisted.config.Config`, or any
    object with these attributes (tests use a SimpleNamespace)."""

    @property
    def job_builder(self) -> str: ...
    @property
    def rq_queue_prefix(self) -> str | None: ...
    @property
    def result_ttl(self) -> int | None: ...
    @property
    def failure_ttl(self) -> int | None: ...
    @property
    def schedules_file(self) -> str | None: ...
    @property
    def uses_mariadb(self) -> bool: ...
    @property
    def frappe_site_name(self) -> str | None: ...
    @property
    def frappe_user(self) -> str | None: ...
    @property
    def frappe_job_id_style(self) -> str | None: ...
    @property
    def webserver_ip(self) -> str | None: ...
    @property
    def webserver_port(self) -> int | None: ...
    @property
    def webserver_scheme(self) -> str | None: ...
    @property
    def webserver_token(self) -> str | None: ...
    @property
    def webserver_host_header(self) -> str | None: ...
    @property
    def webserver_ca_file(self) -> str | None: ...
    @property
    def webserver_timeout_secs(self) -> float: ...


class ScriptRunner(Protocol):
    """What the reader needs of :class:`btu_twisted.store.schedule_store.ScheduleStore`."""

    keys: Keys

    async def evaluate(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any: ...


class UnknownSchedule(Exception):
    """No source has a schedule of that name (``btu pause NOSUCH``): the socket
    answers it with an error line, the ``btu`` command exits 1."""


class SchedulerControl(Protocol):
    """What the socket needs from the scheduler service (faked in tests)."""

    def request_planning(self, name: str) -> bool:
        """Put ``name`` on the planning FIFO; False if the FIFO is full."""

    def cancel(self, name: str) -> Deferred[bool]:
        """Remove the schedule's member: True if one was removed."""

    def status(self) -> dict[str, object] | Deferred[dict[str, object]]:
        """A JSON-able summary for the ``status`` request (now or once read)."""

    def replan(self, name: str) -> Deferred[str]:
        """``reload NAME``: plan a schedule a source has (one reply line), or
        fail with a message that is the reply (unknown name, FIFO full)."""

    def reload(self) -> Deferred[str]:
        """Re-read the schedules file: a one-line summary, or a failure whose
        ``problems`` (or message) say why the old schedules stay."""

    def pause(self, name: str) -> Deferred[str]:
        """Pause the schedule: the reply line, or a failure (UnknownSchedule)."""

    def resume(self, name: str) -> Deferred[str]:
        """Resume the schedule, planned from now: the reply line, or a failure."""

    def cancel_note(self, name: str) -> str | None:
        """What to add to a cancel's reply: a file schedule comes back at the next
        refresh (the BTU app never cancels one, so its replies stay as they were)."""


def as_deferred(awaitable: Awaitable[T]) -> Deferred[T]:
    """A store call's answer as a Deferred: the real store's methods are coroutines,
    the fake's Deferreds, and ``ensureDeferred`` takes either (its signature says
    coroutine, hence the cast)."""
    return ensureDeferred(cast(Any, awaitable))


# -- The store, as each of its users sees it ---------------------------------------
# ScheduleStore (store/schedule_store.py) is all four; tests/fakes.py's FakeStore
# too, its methods answering with Deferreds where the real ones are coroutines.


class TimerStore(Protocol):
    """What the timer reads and writes: the near members, the claims, the history."""

    @property
    def health(self) -> Dependency | None: ...

    def window(self, horizon: float, limit: int) -> Awaitable[Window]:
        """The members due before ``horizon`` (at most ``limit``), the count and the next one."""
        ...

    def claim(self, claims: Sequence[Claim], enqueued_at: str) -> Awaitable[list[int]]:
        """Claim and enqueue, one result code each (CLAIMED, LOST, STALE, ...)."""
        ...

    def discard(self, members: Sequence[str]) -> Awaitable[None]:
        """Drop members whose schedule name cannot be read."""
        ...

    def fold_history(self) -> Awaitable[int]:
        """File the history inbox into each schedule's run list."""
        ...


class PlannerStore(Protocol):
    """What the planner writes: each schedule's one member."""

    def plan(
        self, now: float, plans: Mapping[str, int], unplans: Iterable[str] = ()
    ) -> Awaitable[dict[str, int]]:
        """Replace the members; the schedules refused because their time is not after
        their last enqueued run, with that run's time, and the paused ones with
        ``store.pauses.PAUSED_RUN``."""
        ...

    def close_lives(self, schedules: Sequence[str]) -> Awaitable[int]:
        """Drop the history and pause of schedules found deleted."""
        ...


class RefreshStore(Protocol):
    """What the full refresh reads and prunes."""

    @property
    def health(self) -> Dependency | None: ...

    def prune(
        self,
        enabled: Collection[str],
        existing: Iterable[str] | None = None,
        seen: Callable[[str, str], object] | None = None,
    ) -> Awaitable[list[str]]:
        """Remove members of schedules not in ``enabled``; the names removed."""
        ...

    def count(self) -> Awaitable[int]: ...

    def paused(self, limit: int = ...) -> Awaitable[Paused]:
        """The paused schedules (store/pauses.py), to clear those of deleted schedules."""
        ...

    def close_lives(self, schedules: Sequence[str]) -> Awaitable[int]: ...

    def mark_planned(self) -> Awaitable[None]:
        """Set the marker whose loss says Redis lost the daemon's keys."""
        ...

    def keys_present(self) -> Awaitable[bool]: ...


class ControlStore(Protocol):
    """What the socket's ``cancel_task_schedule``, ``pause``/``resume`` and ``status`` need."""

    def cancel(self, schedule: str) -> Awaitable[bool]: ...

    def pause(self, schedule: str, now: float) -> Awaitable[bool]: ...

    def resume(self, schedule: str, now: float) -> Awaitable[bool]: ...

    def is_paused(self, schedule: str) -> Awaitable[bool]: ...

    def close_lives(self, schedules: Sequence[str]) -> Awaitable[int]: ...

    def fold_history(self) -> Awaitable[int]: ...

    def window(self, horizon: float, limit: int) -> Awaitable[Window]:
        """The member count and the next member, read now (``status``)."""
        ...


class MetricsSink(Protocol):
    """Where the parts report what Prometheus shows (ops/metrics.py), or nothing
    when ``metrics_port`` is unset."""

    def watch(self, fifo_length: Callable[[], int],
              dependencies: Mapping[str, Dependency]) -> None: ...

    def job_enqueued(self, queue: str, lateness: float) -> None: ...

    def failure(self, reason: str) -> None: ...

    def refreshed(self, at: float, duration: float, members: int) -> None: ...
