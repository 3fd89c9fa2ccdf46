"""``btu list-jobs|show-job|queue-job-now``: RQ jobs as the workers will see them.

Queues and jobs are found with rq's own ``Queue``/``Job`` so the CLI reads
them exactly as the installed rq does.  Two places go around rq on purpose:

* Listing reads each job's few display fields with one pipelined ``HMGET``:
  rq 2 refuses to even construct a ``Job`` for Frappe v15's ``site::uuid``
  ids, and one such job must not make the whole listing fail.
* A job's function is read from its pickled ``data`` without importing
  anything (:func:`read_job_call`).  The pickle names the site's own code
  (BTU's TaskRunner, Frappe), which the admin running ``btu`` usually does not
  have installed, and unpickling would run that code's import side effects.
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import io
import json
import pickle
import zlib
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JOB_ID_PATTERN, Job, JobStatus
from rq.queue import Queue
from rq.registry import ScheduledJobRegistry

from btu_twisted.cli.common import FAILED, OK, CliError, Context
from btu_twisted.store import QUEUE_PREFIX, RQ_QUEUES

__all__ = ["cmd_list_jobs", "cmd_queue_job_now", "cmd_show_job", "fetch_job", "read_job_call"]

_LISTED_FIELDS = ("status", "enqueued_at", "created_at", "description")

# Classes a job's arguments commonly hold that are plain data and safe to rebuild.
_SAFE_CLASSES: dict[tuple[str, str], Any] = {
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("decimal", "Decimal"): decimal.Decimal,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _Opaque:
    """Stands for any other class or function a pickle names; nothing is imported or run."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self.qualified_name}>"


class _NoImportUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        safe = _SAFE_CLASSES.get((module, name))
        if safe is not None:
            return safe
        return type(name, (_Opaque,), {"qualified_name": f"{module}.{name}"})


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-able copy of unpickled arguments; anything else becomes its repr."""
    if depth > 20:
        return "..."
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes) and len(value) > 120:
        return f"<{len(value)} bytes>"
    return repr(value)


def read_job_call(data: bytes) -> dict[str, Any]:
    """``func_name``, ``args`` and ``kwargs`` of rq's pickled ``data`` tuple, imports refused.

    ``data`` may be zlib-compressed (rq's own jobs) or raw (the Rust daemon's).
    """
    try:
        data = zlib.decompress(data)
    except zlib.error:
        pass
    try:
        func_name, _instance, args, kwargs = _NoImportUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # any malformed pickle: report, never crash
        reason = f"{type(error).__name__}: {error}"[:160]
        return {"func_name": None, "args": None, "kwargs": None, "data_error": reason}
    return {"func_name": _plain(func_name), "args": _plain(args), "kwargs": _plain(kwargs)}


def fetch_job(connection: redis.Redis, job_id: str) -> Job:
    """rq's Job for ``job_id``; CliError (exit 1) when there is none.

    rq 2's ``Job.fetch`` cuts an id at its first ``:`` and will not construct
    a Job whose id has other characters than letters, digits, ``_`` and ``-``,
    so Frappe's ``site::uuid`` ids are read by giving an empty Job that id.
    """
    try:
        if JOB_ID_PATTERN.fullmatch(job_id):
            return Job.fetch(job_id, connection=connection)
        job = Job(connection=connection)
        job._id = job_id
        job.refresh()
        return job
    except NoSuchJobError:
        raise CliError(f"no rq job with id {job_id!r}", FAILED) from None
    except (ValueError, TypeError, KeyError) as error:
        raise CliError(f"rq job {job_id!r} cannot be read by rq: {error}", FAILED) from None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _queues(connection: redis.Redis) -> list[Queue]:
    """The queues named in ``rq:queues``, sorted; stray members are skipped."""
    keys = sorted(_text(k) or "" for k in connection.smembers(RQ_QUEUES))
    return [Queue.from_queue_key(key, connection=connection)
            for key in keys if key.startswith(QUEUE_PREFIX)]


def cmd_list_jobs(ctx: Context, args: argparse.Namespace) -> int:
    """List the jobs waiting in every rq queue, in queue order."""
    connection = ctx.redis()
    jobs: list[dict[str, Any]] = []
    for queue in _queues(connection):
        ids = queue.get_job_ids()
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(Job.key_for(job_id), list(_LISTED_FIELDS))
            replies = pipe.execute()
        for job_id, values in zip(ids, replies):
            fields = dict(zip(_LISTED_FIELDS, (_text(v) for v in values)))
            jobs.append({"queue": queue.name, "id": job_id, **fields})
            if values[0] is None and values[3] is None:
                jobs[-1]["status"] = "missing"  # the id is queued but its hash is gone
    if ctx.json:
        ctx.emit_json(jobs)
    else:
        rows = [(j["queue"], j["id"], j["status"], j["enqueued_at"], j["description"])
                for j in jobs]
        ctx.table(("QUEUE", "JOB ID", "STATUS", "ENQUEUED AT", "DESCRIPTION"), rows,
                  "No jobs are waiting in any rq queue.")
    return OK


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def describe_job(connection: redis.Redis, job: Job) -> dict[str, Any]:
    """The job's fields as a JSON-able dict, in the order people read them."""
    origin = job.origin or None
    position = Queue(origin, connection=connection).get_job_position(job.id) if origin else None
    described: dict[str, Any] = {
        "id": job.id,
        "status": job.get_status(refresh=False),
        "origin": origin,
        "position_in_queue": position,
        "description": job.description,
    }
    described.update(read_job_call(job.data))
    described.update({
        "meta": _plain(job.meta),
        "created_at": _iso(job.created_at),
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
        "timeout": job.timeout,
        "result_ttl": job.result_ttl,
        "failure_ttl": job.failure_ttl,
        "ttl": job.ttl,
        "worker_name": job.worker_name,
    })
    return described


def cmd_show_job(ctx: Context, args: argparse.Namespace) -> int:
    """Show every field of one rq job."""
    connection = ctx.redis()
    described = describe_job(connection, fetch_job(connection, args.job_id))
    if ctx.json:
        ctx.emit_json(described)
    else:
        shown = {
            key: json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            for key, value in described.items()
        }
        shown["status"] = str(described["status"].value)
        ctx.pairs(shown)
    return OK


def _requeue(connection: redis.Redis, job: Job) -> str:
    """Put the job on its queue now; returns what was done."""
    status = job.get_status(refresh=False)
    queue = Queue(job.origin or "default", connection=connection)
    if status == JobStatus.STARTED:
        raise CliError(f"rq job {job.id} is running now; not queued again", FAILED)
    if status == JobStatus.QUEUED and queue.get_job_position(job.id) is not None:
        return "already_queued"
    if status == JobStatus.FAILED:
        try:
            job.requeue()  # also takes it out of the failed registry
            return "requeued"
        except InvalidJobOperation:
            pass  # not in the registry (expired): enqueue it as any other job
    # A scheduled job left in its registry would be enqueued a second time by rq's scheduler.
    ScheduledJobRegistry(queue=queue).remove(job)
    queue.enqueue_job(job)
    return "enqueued"


def cmd_queue_job_now(ctx: Context, args: argparse.Namespace) -> int:
    """Put an existing rq job back on its queue, to run as soon as a worker is free."""
    connection = ctx.redis()
    job = fetch_job(connection, args.job_id)
    action = _requeue(connection, job)
    job.refresh()
    status = job.get_status(refresh=False)
    queue = job.origin or "default"
    position = Queue(queue, connection=connection).get_job_position(job.id)
    if ctx.json:
        ctx.emit_json({"job_id": job.id, "queue": queue, "action": action,
                       "status": status, "position_in_queue": position})
    elif action == "already_queued":
        ctx.line(f"rq job {job.id} is already waiting on queue {queue} at position {position}.")
    else:
        ctx.line(f"rq job {job.id} {action} on queue {queue}"
                 f" (status {status.value}, position {position}).")
    return OK
