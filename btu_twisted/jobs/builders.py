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

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from btu_twisted.jobs.fields import (
    DEFAULT_TIMEOUT,
    NO_REDIS,
    BuildError,
    BuiltJob,
    _Builder,
    _function_string,
    caught,
    merged_kwargs,
    queue_origin,
    rq_fields,
)
from btu_twisted.jobs.frappe import (
    FRAPPE_EXECUTE_JOB,
    FRAPPE_FAILURE_CALLBACK,
    FRAPPE_FAILURE_TTL,
    FRAPPE_JOB_ID_STYLES,
    FRAPPE_RESULT_TTL,
    FrappeBuilder,
    FrappeEnqueue,
    FrappeSiteBuilder,
    frappe_job_id,
)
from btu_twisted.records import ScheduleRow
from btu_twisted.seams import BuilderSettings, JobBuilder

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
    "BySource",
    "FrappeBuilder",
    "FrappeEnqueue",
    "FrappeSiteBuilder",
    "FunctionBuilder",
    "frappe_enqueue",
    "frappe_job_id",
    "make_builder",
    "make_builders",
    "merged_kwargs",
    "queue_origin",
]


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
        self._result_ttl = result_ttl
        self._failure_ttl = failure_ttl

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        """Build synchronously; the Deferred has already fired."""
        try:
            origin = queue_origin(row, self._prefix)
            job = rq_fields(
                row, when, origin, _function_string(row), merged_kwargs(row),
                args=row.args, result_ttl=self._result_ttl, failure_ttl=self._failure_ttl,
            )
        except Exception:
            return defer.fail(self._as_build_error(row, caught()))
        return defer.succeed(job)


class BySource:
    """Schedules from ``schedules_file`` run with the ``function`` builder whatever
    ``job_builder`` says (they have no BTU Task to pickle, no Frappe site to run in);
    MariaDB's schedules with the configured one."""

    def __init__(self, function: JobBuilder, mariadb: JobBuilder | None) -> None:
        self._function = function
        self._mariadb = mariadb
        # The site's Dependency (frappe builder), reported in status and metrics.
        self.health = mariadb.health if mariadb is not None else None
        self.immediate = function.immediate and (mariadb is None or mariadb.immediate)

    def build(self, row: ScheduleRow, when: int) -> Deferred[BuiltJob]:
        if row.source == "file" or self._mariadb is None:
            return self._function.build(row, when)
        return self._mariadb.build(row, when)

    def close(self) -> Deferred[None]:
        return self._mariadb.close() if self._mariadb is not None else defer.succeed(None)


def make_builders(config: BuilderSettings, reactor: IReactorTime | None) -> JobBuilder:
    """The builder for every schedule the config names (file and/or MariaDB)."""
    if not config.schedules_file:
        return make_builder(config, reactor)
    function = FunctionBuilder(
        config.rq_queue_prefix or "",
        result_ttl=config.result_ttl,
        failure_ttl=config.failure_ttl,
    )
    mariadb = make_builder(config, reactor) if config.uses_mariadb else None
    return BySource(function, mariadb)


def make_builder(config: BuilderSettings, reactor: IReactorTime | None) -> JobBuilder:
    """Return the builder ``config.job_builder`` names; raise ValueError on a bad config.

    ``reactor`` may be None for the builders that do no I/O (the ``btu`` command's).
    """
    kind = config.job_builder
    prefix = config.rq_queue_prefix or ""
    result_ttl = config.result_ttl
    failure_ttl = config.failure_ttl
    if kind == "function":
        return FunctionBuilder(prefix, result_ttl=result_ttl, failure_ttl=failure_ttl)
    if kind == "frappe_site":
        if not config.frappe_site_name:
            raise ValueError("job_builder 'frappe_site' needs frappe_site_name")
        user = config.frappe_user or "Administrator"
        enqueue = frappe_enqueue(config)
        return FrappeSiteBuilder(
            prefix,
            config.frappe_site_name,
            user,
            id_style=enqueue.id_style,
            result_ttl=enqueue.result_ttl,
            failure_ttl=enqueue.failure_ttl,
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
        return FrappeBuilder(prefix, client, clock=reactor, enqueue=frappe_enqueue(config))
    raise ValueError(f"unknown job_builder {kind!r}")


def frappe_enqueue(config: BuilderSettings) -> FrappeEnqueue:
    """The ``frappe.enqueue`` shape of the config's Frappe jobs: the site is
    ``frappe_site_name``, else the site ``webserver_host_header`` names (what
    selects the site for the ``frappe`` builder's requests); the TTLs are the
    config's, else Frappe's."""
    site = config.frappe_site_name or config.webserver_host_header or None
    return FrappeEnqueue(
        site,
        id_style=config.frappe_job_id_style or "v15",
        result_ttl=FRAPPE_RESULT_TTL if config.result_ttl is None else config.result_ttl,
        failure_ttl=FRAPPE_FAILURE_TTL if config.failure_ttl is None else config.failure_ttl,
    )
