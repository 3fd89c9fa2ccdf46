"""``btu list-jobs|show-job|queue-job-now``: RQ jobs as the workers will see them.

Nothing read from Redis is ever unpickled here.  Anyone who can write the RQ
Redis (every Frappe process of a bench) can plant a job hash, and fetching it
through rq unpickles its ``meta``: a crafted one ran ``os.system`` with the
operator's rights when the job was merely shown (issue 12).  So job hashes are
read raw (``HGETALL``/``HMGET``); ``data`` and ``meta`` are summarized by
:mod:`btu_twisted.cli.pickles`, which parses opcodes and never imports or calls
what a pickle names; and ``queue-job-now`` re-queues by editing the hash's
plain fields and pushing the id, the way rq's own enqueue does, with ``data``
and ``meta`` copied through untouched.  Raw access also reads Frappe v15's
``site::uuid`` ids, which rq 2 refuses to construct.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

import redis
from rq.utils import utcformat

from btu_twisted.cli.common import FAILED, OK, CliError, Context
from btu_twisted.cli.pickles import plain, read_job_call, summarize
from btu_twisted.records import echo
from btu_twisted.store.keys import JOB_PREFIX, QUEUE_PREFIX, RQ_QUEUES

__all__ = ["cmd_list_jobs", "cmd_queue_job_now", "cmd_show_job", "describe_job", "read_job"]

_LISTED_FIELDS = ("status", "enqueued_at", "created_at", "description")
_TIMES = ("created_at", "enqueued_at", "started_at", "ended_at")
_NUMBERS = ("timeout", "result_ttl", "failure_ttl", "ttl")
#: Tries of the WATCHed re-queue before giving up on a job that keeps changing.
_REQUEUE_ATTEMPTS = 20
#: rq's registries a job leaves when it is put back on its queue by hand; left
#: in the scheduled registry rq's scheduler would enqueue it a second time.
_REGISTRIES = ("rq:failed:", "rq:scheduled:", "rq:deferred:", "rq:canceled:", "rq:finished:")


def _text(value: bytes | str | None) -> str | None:
    """A reply as text; redis-py types replies ``bytes | str`` (str only with
    decode_responses, which btu never sets)."""
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _raw(value: bytes | str) -> bytes:
    """A reply as the bytes Redis holds (see _text)."""
    return value.encode() if isinstance(value, str) else value


def read_job(connection: redis.Redis, job_id: str) -> dict[str, bytes]:
    """The job's hash exactly as stored (field name -> raw bytes); CliError (exit 1) if none."""
    raw = connection.hgetall(JOB_PREFIX + job_id)
    if not raw:
        raise CliError(f"no rq job with id {echo(job_id)}", FAILED)
    return {_text(key) or "": _raw(value) for key, value in raw.items()}


def _queues(connection: redis.Redis) -> list[str]:
    """The queue names in ``rq:queues``, sorted; stray members are skipped."""
    keys = sorted(_text(k) or "" for k in connection.smembers(RQ_QUEUES))
    return [key[len(QUEUE_PREFIX):] for key in keys if key.startswith(QUEUE_PREFIX)]


def cmd_list_jobs(ctx: Context, args: argparse.Namespace) -> int:
    """List the jobs waiting in every rq queue, in queue order."""
    connection = ctx.redis()
    jobs: list[dict[str, Any]] = []
    for queue in _queues(connection):
        ids = [_text(i) or "" for i in connection.lrange(QUEUE_PREFIX + queue, 0, -1)]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(JOB_PREFIX + job_id, list(_LISTED_FIELDS))
            replies = pipe.execute()
        for job_id, values in zip(ids, replies, strict=False):
            fields = dict(zip(_LISTED_FIELDS, (_text(v) for v in values), strict=False))
            jobs.append({"queue": queue, "id": job_id, **fields})
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


def _status(raw: dict[str, bytes]) -> str:
    """rq's status; a hash without one (the Rust daemon writes "") is a job rq calls created."""
    return _text(raw.get("status")) or "created"


def _origin(raw: dict[str, bytes]) -> str | None:
    return _text(raw.get("origin")) or None


def _time(value: bytes | None) -> str | None:
    """rq's UTC stamp as ISO 8601 with its offset; kept as text when it does not parse."""
    text = _text(value)
    if not text:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.isoformat()


def _number(value: bytes | str | None) -> int | str | None:
    text = _text(value)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _position(connection: redis.Redis, queue: str | None, job_id: str) -> int | None:
    """Where the id waits in its queue (0 = next), or None when it is not there."""
    if queue is None:
        return None
    try:
        found = connection.lpos(QUEUE_PREFIX + queue, job_id)  # without count: an int or None
        return found if isinstance(found, int) else None
    except redis.exceptions.ResponseError:  # Redis before 6.0.6 has no LPOS
        ids = [_text(i) for i in connection.lrange(QUEUE_PREFIX + queue, 0, -1)]
        return ids.index(job_id) if job_id in ids else None


def describe_job(connection: redis.Redis, job_id: str, raw: dict[str, bytes]) -> dict[str, Any]:
    """The job's fields as a JSON-able dict, in the order people read them."""
    origin = _origin(raw)
    described: dict[str, Any] = {
        "id": job_id,
        "status": _status(raw),
        "origin": origin,
        "position_in_queue": _position(connection, origin, job_id),
        "description": _text(raw.get("description")),
    }
    described.update(read_job_call(raw.get("data") or b""))
    meta = raw.get("meta")
    if meta:
        try:
            described["meta"] = plain(summarize(meta))
        except ValueError as error:
            described["meta"] = None
            described["meta_error"] = str(error)[:160]
    else:
        described["meta"] = {}
    described.update({name: _time(raw.get(name)) for name in _TIMES})
    described.update({name: _number(raw.get(name)) for name in _NUMBERS})
    described["worker_name"] = _text(raw.get("worker_name")) or None
    return described


def cmd_show_job(ctx: Context, args: argparse.Namespace) -> int:
    """Show every field of one rq job; ``data`` and ``meta`` summarized, never unpickled."""
    connection = ctx.redis()
    described = describe_job(connection, args.job_id, read_job(connection, args.job_id))
    if ctx.json:
        ctx.emit_json(described)
    else:
        ctx.pairs({
            key: json.dumps(value, default=str) if isinstance(value, dict | list) else value
            for key, value in described.items()
        })
    return OK


def _requeue(connection: redis.Redis, job_id: str) -> tuple[str, str]:
    """Put the job on its queue now, as rq's enqueue would; returns (action, queue).

    Only the plain fields change (status, enqueued_at, the run's timestamps);
    ``data`` and ``meta`` stay byte for byte.  WATCH makes the check and the
    change one step: a worker taking the job meanwhile makes us look again.
    """
    key = JOB_PREFIX + job_id
    with connection.pipeline(transaction=True) as pipe:
        for _attempt in range(_REQUEUE_ATTEMPTS):
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                if not pipe.exists(key):
                    raise CliError(f"no rq job with id {echo(job_id)}", FAILED)
                status, origin, ttl = pipe.hmget(key, ["status", "origin", "ttl"])
                status_text = _text(status) or "created"
                queue = _text(origin) or "default"
                queue_key = QUEUE_PREFIX + queue
                if status_text == "started":
                    raise CliError(f"rq job {job_id} is running now; not queued again", FAILED)
                if status_text == "queued" and _position(pipe, queue, job_id) is not None:
                    return "already_queued", queue
                pipe.multi()
                for registry in _REGISTRIES:
                    pipe.zrem(registry + queue, job_id)
                pipe.hset(key, mapping={
                    "status": "queued",
                    "origin": queue,
                    "enqueued_at": utcformat(datetime.datetime.now(datetime.UTC)),
                    "started_at": "",
                    "ended_at": "",
                })
                pipe.hdel(key, "exc_info")
                # A finished or failed job's hash expires (result_ttl, failure_ttl);
                # waiting on the queue it lives as long as rq gives a queued job.
                lifetime = _number(ttl)
                if isinstance(lifetime, int) and lifetime > 0:
                    pipe.expire(key, lifetime)
                else:
                    pipe.persist(key)
                pipe.rpush(queue_key, job_id)
                pipe.sadd(RQ_QUEUES, queue_key)
                pipe.execute()
                return ("requeued" if status_text == "failed" else "enqueued"), queue
            except redis.WatchError:
                continue
    raise CliError(f"rq job {job_id} kept changing while being queued; try again", FAILED)


def cmd_queue_job_now(ctx: Context, args: argparse.Namespace) -> int:
    """Put an existing rq job back on its queue, to run as soon as a worker is free."""
    connection = ctx.redis()
    job_id = args.job_id
    action, queue = _requeue(connection, job_id)
    status = _text(connection.hget(JOB_PREFIX + job_id, "status")) or "created"
    position = _position(connection, queue, job_id)
    if ctx.json:
        ctx.emit_json({"job_id": job_id, "queue": queue, "action": action,
                       "status": status, "position_in_queue": position})
    elif action == "already_queued":
        ctx.line(f"rq job {job_id} is already waiting on queue {queue} at position {position}.")
    else:
        ctx.line(f"rq job {job_id} {action} on queue {queue}"
                 f" (status {status}, position {position}).")
    return OK
