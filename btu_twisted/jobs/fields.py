"""The parts of a job every builder shares: the rq hash, the errors, the arguments.

Apart from the builders so that each builder module holds one way of making a
job and nothing else; rq's ``Job.create(...).to_dict()`` is called from here
only (:func:`rq_fields`), so there is one place that knows rq's format.
"""

from __future__ import annotations

import ast
import functools
import json
import uuid
from dataclasses import dataclass
from enum import Enum
from types import ModuleType
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow

#: rq job timeout when the task has no positive ``max_task_duration`` (BTU's field default).
DEFAULT_TIMEOUT = 600

_rq_job: ModuleType | None = None


def load_rq() -> ModuleType:
    """rq's job module, imported the first time it is needed.

    rq brings redis-py, and the two took 100-350 ms of the daemon's start on
    this host (a third to a half of exec to first ``pong``), for a module no
    builder uses before its first due run.  The timer imports it right after
    the daemon starts (:meth:`Timer.startService`), so that a first run does
    not pay for it either.
    """
    global _rq_job
    if _rq_job is None:
        import rq.job

        _rq_job = rq.job
    return _rq_job


@dataclass(frozen=True)
class BuiltJob:
    """An RQ job ready for the store to write.

    ``fields`` is the job hash exactly as the installed rq's ``Job.to_dict()``
    produces it, status ``queued``, with values narrowed to bytes/str/int/float
    (rq's ``JobStatus`` enum becomes its plain value) so any Redis client writes
    the same bytes.  The store adds ``enqueued_at`` when it claims the run.
    """

    job_id: str
    schedule: str
    when: int
    origin: str
    fields: dict[str, bytes | str | int | float]


class BuildError(Exception):
    """A job could not be built for a schedule.

    ``transient`` True: retry later (site down, timeout, 5xx).  False: the
    schedule's or task's data is wrong (bad arguments literal, missing
    function_string, 4xx).  ``str()`` is one line naming the schedule and the
    reason, and never contains the web server token.  ``site_refused``: the
    site refused the daemon itself (401/403), which the site's Dependency
    logs once for every schedule.
    """

    def __init__(
        self, schedule: str, reason: str, *, transient: bool, site_refused: bool = False
    ) -> None:
        self.schedule = schedule
        self.reason = " ".join(reason.split())
        self.transient = transient
        self.site_refused = site_refused
        super().__init__(f"schedule {schedule}: {self.reason}")


class _NoRedis:
    """Stands in for rq's Redis connection; any attribute use raises.

    It is truthy (rq's Job checks ``if not connection``) and nothing else.
    """

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"job builders must not do Redis I/O (rq tried connection.{name})")

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "<no Redis connection: builders do no I/O>"


NO_REDIS: Any = _NoRedis()


class _Unparsable(ValueError):
    """Why an arguments text is not a dict of keyword arguments."""


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> dict[str, Any]:
    """The dict an arguments text holds, cached by text: the schedules of one
    task share its arguments, and ``ast.literal_eval`` of even a short dict
    costs ~15 us a job in a 10,000-run burst.  Callers copy it; refusals raise
    and so are never cached."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise _Unparsable(
                f"is not a JSON object or Python dict literal ({type(exc).__name__})"
            ) from None
    if not isinstance(value, dict):
        raise _Unparsable(f"is a {type(value).__name__}, not a dict")
    bad = [key for key in value if not isinstance(key, str)]
    if bad:
        raise _Unparsable(f"has non-string keys such as {bad[0]!r:.40}")
    return value


def _parse_arguments(text: str | None, schedule: str, column: str) -> dict[str, Any]:
    """Parse one arguments column into a dict of keyword arguments (a new one:
    the caller may update it).

    JSON is tried first, then a Python literal, as BTU's own
    ``BTUTask.built_in_arguments`` does (JSON since mid-2025, so ``true``/``null``
    appear; older rows use ``True``/``None`` and single quotes).  Nothing is
    ever evaluated as code: ``ast.literal_eval`` accepts literals only.
    """
    if text is None or not text.strip():
        return {}
    try:
        return dict(_parsed(text))
    except _Unparsable as e:
        raise BuildError(schedule, f"{column} {e}", transient=False) from None


def merged_kwargs(row: ScheduleRow) -> dict[str, Any]:
    """Return the task's arguments updated by the schedule's ``argument_overrides``.

    Raises BuildError(transient=False) naming the schedule and the column when
    either is not a dict literal.
    """
    kwargs = _parse_arguments(row.task_arguments, row.name, "task arguments")
    kwargs.update(_parse_arguments(row.argument_overrides, row.name, "argument_overrides"))
    return kwargs


def queue_origin(row: ScheduleRow, prefix: str) -> str:
    """Return ``prefix`` + the schedule's queue, else the task's queue, else ``default``."""
    for name in (row.queue_name, row.task_queue_name):
        if name and name.strip():
            return prefix + name.strip()
    return prefix + "default"


def job_timeout(row: ScheduleRow) -> int:
    """The task's ``max_task_duration``, or :data:`DEFAULT_TIMEOUT` when unset or not positive."""
    duration = row.max_task_duration
    return duration if duration is not None and duration > 0 else DEFAULT_TIMEOUT


def job_description(row: ScheduleRow) -> str:
    """What rq dashboards show, e.g. ``BTU Task BTU-00001 (Ping Now) for schedule TS-000001``.

    A schedules_file row has no BTU Task: ``app.jobs.backup for schedule nightly-backup``,
    then its description.
    """
    if row.source == "file":
        about = (row.schedule_description or "").strip()
        return f"{row.function_string} for schedule {row.name}" + (f": {about}" if about else "")
    title = (row.desc_short or row.task_description or "").strip()
    titled = f"{row.task} ({title})" if title else row.task
    return f"BTU Task {titled} for schedule {row.name}"


def rq_fields(
    row: ScheduleRow,
    when: int,
    origin: str,
    func: str,
    kwargs: dict[str, Any] | None,
    data: bytes | None = None,
    *,
    args: tuple[Any, ...] = (),
    job_id: str | None = None,
    result_ttl: int | None = None,
    failure_ttl: int | None = None,
    on_failure: str | None = None,
) -> BuiltJob:
    """Let rq build the job hash; ``data`` (a pickled rq tuple) replaces func and kwargs.

    ``job_id`` defaults to a fresh uuid4.  The hash never holds the id (it
    names the key), so rq's Job is made with a valid placeholder and the id
    goes to the store only: Frappe's ``site::uuid`` ids, refused by the rq
    this daemon runs with, still reach the workers that read them.  The TTLs
    and the failure callback (a dotted name, run with rq's default callback
    timeout) are stored as rq 1.15 and 2.x both read them.
    """
    rq = _rq_job or load_rq()
    job = rq.Job.create(
        func,
        args=args,
        kwargs=kwargs,
        connection=NO_REDIS,
        id=str(uuid.uuid4()),
        origin=origin,
        timeout=job_timeout(row),
        description=job_description(row),
        meta={"task_schedule": row.name, "task": row.task, "scheduled_time": when},
        status=rq.JobStatus.QUEUED,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        on_failure=rq.Callback(on_failure) if on_failure else None,
    )
    if data is not None:
        job.data = data  # to_dict() stores it zlib-compressed, as rq stores its own
    fields = {
        key: value.value if isinstance(value, Enum) else value
        for key, value in job.to_dict().items()
    }
    return BuiltJob(
        job_id=job_id or job.id, schedule=row.name, when=when, origin=origin, fields=fields
    )


def _function_string(row: ScheduleRow) -> str:
    function = (row.function_string or "").strip()
    if not function:
        missing = "task row is missing" if row.function_string is None else "empty"
        raise BuildError(
            row.name, f"task {row.task} has no function_string ({missing})", transient=False
        )
    return function


def caught() -> Failure:
    """The exception being handled, as a Failure (the traceback kept for the log)."""
    return Failure()  # type: ignore[no-untyped-call]  # Twisted leaves Failure.__init__ unannotated


def failure_of(error: BaseException) -> Failure:
    """``error`` as a Failure, for an errback to hand on."""
    return Failure(error)  # type: ignore[no-untyped-call]  # Twisted leaves Failure.__init__ unannotated


class _Builder:
    """What the three builders share: a logger, the last-resort error conversion,
    and the JobBuilder attributes' defaults (built later, no site to watch)."""

    log = Logger()
    immediate: bool = False
    health: Dependency | None = None

    def _as_build_error(self, row: ScheduleRow, failure: Failure) -> Failure:
        """Keep a BuildError; log anything else (a bug, or an rq change) and report it as one."""
        if isinstance(failure.value, BuildError):
            return failure
        self.log.failure("building a job for {schedule} failed", failure, schedule=row.name)
        reason = f"unexpected {type(failure.value).__name__} while building the job"
        return failure_of(BuildError(row.name, reason, transient=False))

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return defer.succeed(None)
