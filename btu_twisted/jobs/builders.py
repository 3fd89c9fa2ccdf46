"""Job builders: turn one due (schedule, scheduled time) into an RQ job hash.

The store writes the hash and pushes the id in one atomic step, so a builder
only has to produce the fields, and produce them exactly as the installed
``rq`` would: they come from rq's own ``Job.create(...).to_dict()``.  That
keeps the hash readable by whatever rq version the workers run, instead of a
hand-written copy of rq's format going stale (the Rust daemon's did).

Three builders, chosen by ``job_builder``:

- ``function``: the job calls ``function_string`` with the merged kwargs.
- ``frappe_site``: the job calls Frappe's ``execute_job`` with the arguments
  ``frappe.enqueue`` would have queued; no web server needed.
- ``frappe``: the job's pickled data comes from the site's BTU endpoint (see
  :mod:`btu_twisted.jobs.frappe_http`); it is stored, never unpickled.

No builder touches Redis: rq's Job wants a connection object but
``create``/``to_dict`` do no I/O, so they get :data:`NO_REDIS`, which fails
loudly on any use (the daemon must never do synchronous Redis I/O).
"""

from __future__ import annotations

import ast
import functools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from rq.job import Callback, Job, JobStatus
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from btu_twisted.health import Dependency
from btu_twisted.records import ScheduleRow

if TYPE_CHECKING:
    # Loaded by the frappe builder only: the HTTP client and its TLS checks
    # (treq, service_identity) are memory and start-up time other builders
    # would spend for nothing.
    from btu_twisted.jobs.frappe_http import FetchError, SiteClient

__all__ = [
    "DEFAULT_TIMEOUT",
    "FRAPPE_EXECUTE_JOB",
    "FRAPPE_FAILURE_CALLBACK",
    "FRAPPE_FAILURE_TTL",
    "FRAPPE_JOB_ID_STYLES",
    "FRAPPE_RESULT_TTL",
    "NO_REDIS",
    "BuildError",
    "BuiltJob",
    "JobBuilder",
    "BySource",
    "frappe_job_id",
    "make_builder",
    "make_builders",
    "merged_kwargs",
    "queue_origin",
]

#: rq job timeout when the task has no positive ``max_task_duration`` (BTU's field default).
DEFAULT_TIMEOUT = 600

#: What ``frappe.enqueue`` puts on the queue: Frappe's job wrapper.
FRAPPE_EXECUTE_JOB = "frappe.utils.background_jobs.execute_job"

#: The on-failure callback ``frappe.enqueue`` gives every job (v15 and develop):
#: it keeps each failed registry at the site's ``rq_failed_jobs_limit``.
FRAPPE_FAILURE_CALLBACK = "frappe.utils.background_jobs.truncate_failed_registry"

#: Frappe's ``RQ_RESULTS_TTL`` (site conf ``rq_results_ttl``): a finished job's hash lives 10 minutes.
FRAPPE_RESULT_TTL = 600

#: Frappe's ``RQ_JOB_FAILURE_TTL`` (site conf ``rq_job_failure_ttl``): 7 days, not rq's year.
FRAPPE_FAILURE_TTL = 7 * 24 * 60 * 60

#: ``frappe_job_id_style`` -> the job id ``create_job_id`` would write for ``site``
#: (COMPAT.md section 7): v15 ``{site}::{uuid4}`` for rq 1.x workers; develop
#: ``{site}||{uuid4}``, since rq 2.x refuses ``:``; ``uuid`` a bare uuid4, the
#: only one of the three that rq 2.12 and later accept (letters, digits, ``_``,
#: ``-``), which Frappe's RQ Job list does not show.
FRAPPE_JOB_ID_STYLES: dict[str, Callable[[str, str], str]] = {
    "v15": lambda site, unique: f"{site}::{unique}",
    "develop": lambda site, unique: f"{site}||{unique}",
    "uuid": lambda site, unique: unique,
}

#: Placeholder function name for the ``frappe`` builder, whose data comes from the
#: site and replaces it (BTU's pickle names ``btu.btu_api.execute_job``).
_BTU_EXECUTE_JOB = "btu.btu_api.execute_job"


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


class JobBuilder(Protocol):
    """What the scheduler calls for each due run."""

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Build the job for ``row`` scheduled at unix time ``when``; fails with BuildError."""
        ...

    def close(self) -> Deferred[None]:
        """Release connections; called when the service stops."""
        ...


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
    job = Job.create(
        func,
        args=args,
        kwargs=kwargs,
        connection=NO_REDIS,
        id=str(uuid.uuid4()),
        origin=origin,
        timeout=job_timeout(row),
        description=job_description(row),
        meta={"task_schedule": row.name, "task": row.task, "scheduled_time": when},
        status=JobStatus.QUEUED,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        on_failure=Callback(on_failure) if on_failure else None,
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


def frappe_job_id(site: str, style: str) -> str:
    """A new job id for ``site`` as Frappe's ``create_job_id`` writes it in ``style``."""
    return FRAPPE_JOB_ID_STYLES[style](site, str(uuid.uuid4()))


def _function_string(row: ScheduleRow) -> str:
    function = (row.function_string or "").strip()
    if not function:
        missing = "task row is missing" if row.function_string is None else "empty"
        raise BuildError(
            row.name, f"task {row.task} has no function_string ({missing})", transient=False
        )
    return function


class _Builder:
    """What the three builders share: a logger and the last-resort error conversion."""

    log = Logger()

    def _as_build_error(self, row: ScheduleRow, failure: Failure) -> Failure:
        """Keep a BuildError; log anything else (a bug, or an rq change) and report it as one."""
        if failure.check(BuildError):
            return failure
        self.log.failure("building a job for {schedule} failed", failure, schedule=row.name)
        reason = f"unexpected {failure.type.__name__} while building the job"
        return Failure(BuildError(row.name, reason, transient=False))

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return defer.succeed(None)


class FunctionBuilder(_Builder):
    """``function``: the job calls the task's ``function_string`` with the merged kwargs.

    The TTLs are rq's own defaults unless configured: plain rq users expect rq's behaviour.
    """

    #: build() returns a fired Deferred: the timer builds it inline (no slot).
    immediate = True

    def __init__(
        self, prefix: str, *, result_ttl: int | None = None, failure_ttl: int | None = None
    ) -> None:
        self._prefix = prefix
        self._ttls = {"result_ttl": result_ttl, "failure_ttl": failure_ttl}

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Build synchronously; the Deferred has already fired."""
        try:
            origin = queue_origin(row, self._prefix)
            job = rq_fields(
                row, when, origin, _function_string(row), merged_kwargs(row),
                args=row.args, **self._ttls
            )
        except Exception:
            return defer.fail(self._as_build_error(row, Failure()))
        return defer.succeed(job)


class FrappeSiteBuilder(_Builder):
    """``frappe_site``: the job is what ``frappe.enqueue(function_string, **kwargs)`` queues.

    The kwargs of ``execute_job`` are those of Frappe v15/develop's ``enqueue``
    (``site, user, method, event, job_name, is_async, kwargs``), with the site
    and user from the configuration since the daemon has no Frappe session.
    So are the rest: a site-namespaced id (Frappe's RQ Job list and
    ``remove_failed_jobs`` only see those), Frappe's result and failure TTLs,
    and ``truncate_failed_registry`` on failure, so failed jobs are trimmed
    like the site's own.
    """

    immediate = True

    def __init__(
        self,
        prefix: str,
        site: str,
        user: str,
        *,
        id_style: str = "v15",
        result_ttl: int = FRAPPE_RESULT_TTL,
        failure_ttl: int = FRAPPE_FAILURE_TTL,
    ) -> None:
        if id_style not in FRAPPE_JOB_ID_STYLES:
            raise ValueError(
                f"frappe_job_id_style must be one of {', '.join(FRAPPE_JOB_ID_STYLES)},"
                f" got {id_style!r}"
            )
        self._prefix = prefix
        self._site = site
        self._user = user
        self._id_style = id_style
        self._result_ttl = result_ttl
        self._failure_ttl = failure_ttl

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Build synchronously; the Deferred has already fired."""
        try:
            method = _function_string(row)
            queue_args = {
                "site": self._site,
                "user": self._user,
                "method": method,
                "event": None,
                "job_name": (row.desc_short or "").strip() or method,
                "is_async": True,
                "kwargs": merged_kwargs(row),
            }
            origin = queue_origin(row, self._prefix)
            job = rq_fields(
                row, when, origin, FRAPPE_EXECUTE_JOB, queue_args,
                job_id=frappe_job_id(self._site, self._id_style),
                result_ttl=self._result_ttl,
                failure_ttl=self._failure_ttl,
                on_failure=FRAPPE_FAILURE_CALLBACK,
            )  # fmt: skip
        except Exception:
            return defer.fail(self._as_build_error(row, Failure()))
        return defer.succeed(job)


class FrappeBuilder(_Builder):
    """``frappe``: the job's data is the pickle BTU's ``get_pickled_task`` returns.

    The site's bytes become the job's ``data`` untouched (rq's hash holds them
    zlib-compressed); the daemon never unpickles them.
    """

    def __init__(self, prefix: str, client: SiteClient, clock: Any = None) -> None:
        self._prefix = prefix
        self._client = client
        self._clock = clock
        # The site's state for ``status`` and metrics: transient errors are an
        # outage, 401/403 a refusal (every run dropped), and any other answer
        # (a job, a 404, a bad body) means it answered and accepted the token.
        self.health = Dependency("Frappe site", clock) if clock is not None else None

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Fetch the pickle, then build; cancelling the result aborts the request."""
        origin = queue_origin(row, self._prefix)
        started = self._clock.seconds() if self._clock is not None else None
        d: Deferred[bytes] = self._client.fetch(row.task, row.name)

        def built(data: bytes) -> BuiltJob:
            if self.health is not None:
                self.health.succeeded()
            return rq_fields(row, when, origin, _BTU_EXECUTE_JOB, None, data=data)

        def failed(failure: Failure) -> Failure:
            from btu_twisted.jobs.frappe_http import FetchError  # loaded with the client

            if failure.check(FetchError):
                exc = failure.value
                self._record_site_state(exc, started)
                return Failure(BuildError(
                    row.name, exc.reason, transient=exc.transient, site_refused=exc.refused
                ))
            if failure.check(defer.CancelledError):
                return failure
            return self._as_build_error(row, failure)

        return d.addCallback(built).addErrback(failed)

    def _record_site_state(self, error: FetchError, started: float | None) -> None:
        """A 401/403 is a refusal, a transient error an outage, any other answer a working site."""
        if self.health is None:
            return
        if error.refused:
            self.health.refused(error.reason)
        elif error.transient:
            self.health.failed(error.reason, started=started)
        else:
            self.health.succeeded()

    def close(self) -> Deferred[None]:
        """Close the HTTP connection pool."""
        return self._client.close()


class BySource:
    """Schedules from ``schedules_file`` run with the ``function`` builder whatever
    ``job_builder`` says (they have no BTU Task to pickle, no Frappe site to run in);
    MariaDB's schedules with the configured one."""

    def __init__(self, function: JobBuilder, mariadb: JobBuilder | None) -> None:
        self._function = function
        self._mariadb = mariadb
        # The site's Dependency (frappe builder), reported in status and metrics.
        self.health = getattr(mariadb, "health", None)
        self.immediate = getattr(function, "immediate", False) and (
            mariadb is None or getattr(mariadb, "immediate", False))

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        if row.source == "file" or self._mariadb is None:
            return self._function.build(row, when)
        return self._mariadb.build(row, when)

    def close(self) -> Deferred[None]:
        return self._mariadb.close() if self._mariadb is not None else defer.succeed(None)


def make_builders(config: Any, reactor: Any) -> JobBuilder:
    """The builder for every schedule the config names (file and/or MariaDB)."""
    if not getattr(config, "schedules_file", None):
        return make_builder(config, reactor)
    function = FunctionBuilder(
        config.rq_queue_prefix or "",
        result_ttl=getattr(config, "result_ttl", None),
        failure_ttl=getattr(config, "failure_ttl", None),
    )
    mariadb = make_builder(config, reactor) if config.uses_mariadb else None
    return BySource(function, mariadb)


def make_builder(config: Any, reactor: Any) -> JobBuilder:
    """Return the builder ``config.job_builder`` names; raise ValueError on a bad config.

    Only the attributes documented in the project brief are read, so any
    object with them works (tests use a SimpleNamespace).
    """
    kind = config.job_builder
    prefix = config.rq_queue_prefix or ""
    # Keys added after the brief are optional on stand-in configs.
    result_ttl = getattr(config, "result_ttl", None)
    failure_ttl = getattr(config, "failure_ttl", None)
    if kind == "function":
        return FunctionBuilder(prefix, result_ttl=result_ttl, failure_ttl=failure_ttl)
    if kind == "frappe_site":
        if not config.frappe_site_name:
            raise ValueError("job_builder 'frappe_site' needs frappe_site_name")
        user = config.frappe_user or "Administrator"
        return FrappeSiteBuilder(
            prefix,
            config.frappe_site_name,
            user,
            id_style=getattr(config, "frappe_job_id_style", None) or "v15",
            result_ttl=FRAPPE_RESULT_TTL if result_ttl is None else result_ttl,
            failure_ttl=FRAPPE_FAILURE_TTL if failure_ttl is None else failure_ttl,
        )
    if kind == "frappe":
        from btu_twisted.jobs.frappe_http import SiteClient, load_trust_root, site_url

        if not config.webserver_ip or not config.webserver_port:
            raise ValueError("job_builder 'frappe' needs webserver_ip and webserver_port")
        ca_file = config.webserver_ca_file
        client = SiteClient(
            reactor,
            url=site_url(config.webserver_ip, int(config.webserver_port), config.webserver_scheme),
            token=config.webserver_token or "",
            host_header=config.webserver_host_header,
            tls_hostname=config.webserver_host_header or config.webserver_ip,
            trust_root=load_trust_root(ca_file) if ca_file else None,
            timeout=float(config.webserver_timeout_secs),
        )
        return FrappeBuilder(prefix, client, clock=reactor)
    raise ValueError(f"unknown job_builder {kind!r}")
