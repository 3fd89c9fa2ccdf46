"""The two builders whose jobs run inside a Frappe site: ``frappe_site`` and ``frappe``.

``frappe_site`` writes what ``frappe.enqueue`` would have queued; ``frappe``
stores the pickle the site's BTU endpoint returns.  Frappe's ids, TTLs and
failure callback live here so the Frappe-compatible choices sit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from btu_twisted.clock import as_clock
from btu_twisted.health import Dependency
from btu_twisted.jobs.fields import (
    BuildError,
    BuiltJob,
    _Builder,
    _function_string,
    caught,
    failure_of,
    merged_kwargs,
    queue_origin,
    rq_fields,
)
from btu_twisted.records import ScheduleRow

if TYPE_CHECKING:
    # Loaded by the frappe builder only: the HTTP client and its TLS checks
    # (treq, service_identity) are memory and start-up time other builders
    # would spend for nothing.
    from btu_twisted.jobs.frappe_answers import FetchError


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


def frappe_job_id(site: str, style: str) -> str:
    """A new job id for ``site`` as Frappe's ``create_job_id`` writes it in ``style``."""
    return FRAPPE_JOB_ID_STYLES[style](site, str(uuid.uuid4()))


@dataclass(frozen=True)
class FrappeEnqueue:
    """What ``frappe.enqueue`` gives every job besides its call (COMPAT.md 8.2): an id
    in the site's namespace, the site's TTLs and ``truncate_failed_registry`` on
    failure.  Both Frappe builders' jobs get it, so that Frappe's RQ Job list and
    ``remove_failed_jobs`` see them, and a failed one is kept days, not rq's year.

    ``site`` None (a ``frappe`` builder whose config names no site): bare uuid
    ids, the TTLs and the callback still.  The callback reads the site from the
    job's kwargs, which BTU's pickle holds too.
    """

    site: str | None
    id_style: str = "v15"
    result_ttl: int = FRAPPE_RESULT_TTL
    failure_ttl: int = FRAPPE_FAILURE_TTL

    def __post_init__(self) -> None:
        if self.id_style not in FRAPPE_JOB_ID_STYLES:
            raise ValueError(
                f"frappe_job_id_style must be one of {', '.join(FRAPPE_JOB_ID_STYLES)},"
                f" got {self.id_style!r}"
            )

    def job(
        self, row: ScheduleRow, when: int, origin: str, func: str,
        kwargs: dict[str, Any] | None, data: bytes | None = None,
    ) -> BuiltJob:
        """:func:`rq_fields` for a job of this shape (a new id each call)."""
        return rq_fields(
            row, when, origin, func, kwargs, data,
            job_id=frappe_job_id(self.site, self.id_style) if self.site else None,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
            on_failure=FRAPPE_FAILURE_CALLBACK,
        )


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
        self._prefix = prefix
        self._site = site
        self._user = user
        self._enqueue = FrappeEnqueue(site, id_style, result_ttl, failure_ttl)

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
            job = self._enqueue.job(row, when, origin, FRAPPE_EXECUTE_JOB, queue_args)
        except Exception:
            return defer.fail(self._as_build_error(row, caught()))
        return defer.succeed(job)


class PickleSource(Protocol):
    """Where the frappe builder gets a task's pickle: the daemon's SiteClient, or the
    ``btu`` command's blocking client (the same requests, without a reactor)."""

    def fetch(self, task: str, schedule: str | None) -> Deferred[bytes]:
        """The pickled job data; fails with FetchError (or CancelledError)."""
        ...

    def close(self) -> Deferred[None]:
        """Drop the connections."""
        ...


class FrappeBuilder(_Builder):
    """``frappe``: the job's data is the pickle BTU's ``get_pickled_task`` returns.

    The site's bytes become the job's ``data`` untouched (rq's hash holds them
    zlib-compressed); the daemon never unpickles them.  The rest of the job is
    ``frappe.enqueue``'s, as ``frappe_site``'s (``enqueue``): the id, the TTLs,
    the failure callback.
    """

    def __init__(
        self, prefix: str, client: PickleSource, clock: IReactorTime | None = None,
        enqueue: FrappeEnqueue | None = None,
    ) -> None:
        self._prefix = prefix
        self._client = client
        self._enqueue = enqueue if enqueue is not None else FrappeEnqueue(None)
        self._clock = as_clock(clock) if clock is not None else None
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
            return self._enqueue.job(row, when, origin, _BTU_EXECUTE_JOB, None, data=data)

        def failed(failure: Failure) -> Failure:
            from btu_twisted.jobs.frappe_answers import FetchError  # loaded with the client

            exc = failure.value
            if isinstance(exc, FetchError):
                self._record_site_state(exc, started)
                return failure_of(BuildError(
                    row.name, exc.reason, transient=exc.transient, site_refused=exc.refused
                ))
            if isinstance(exc, defer.CancelledError):
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
