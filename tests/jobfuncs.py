"""Functions for real RQ workers to run in the integration tests.

A job built by the daemon is only proven right when a real ``rq`` worker loads
it and calls the function it names.  The functions here leave a side effect the
test can read back (a JSON line in a file, or an item on a Redis list), so a
test can assert what the worker actually called, with which keyword
arguments, and which job hash it ran from.

The module also runs a burst worker in a child process
(``python -m tests.jobfuncs work REDIS_URL QUEUE...``): a separate process keeps
the worker's signal handlers and any stand-in ``frappe`` package out of the
trial process, and mirrors how ``bench worker`` runs in production.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

#: Keyword arguments that steer :func:`record` and are not part of the record.
CONTROL_KEYS = ("record_file", "record_redis", "record_key")

#: Redis list that :func:`record` pushes to when ``record_key`` is not given.
DEFAULT_RECORD_KEY = "btu_test:records"


def _current_job() -> dict[str, Any] | None:
    """Describe the rq job being run, or None when called outside a worker."""
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - rq is a test dependency
        return None
    job = get_current_job()
    if job is None:
        return None
    return {
        "id": job.id,
        "origin": job.origin,
        "func_name": job.func_name,
        "description": job.description,
        "timeout": job.timeout,
        "meta": job.meta,
    }


def record(
    *args: Any,
    record_file: str | None = None,
    record_redis: str | None = None,
    record_key: str = DEFAULT_RECORD_KEY,
    **kwargs: Any,
) -> dict[str, Any]:
    """Append one JSON record of this call and return it (rq stores it as the result).

    The record holds the positional and keyword arguments (without the control
    keys), the current rq job's id, origin, function name, description,
    timeout and meta, and the worker's pid.  It goes to ``record_file`` (one
    JSON object per line) and/or to the Redis list ``record_key`` at the URL
    ``record_redis``; with neither, nothing is written.
    """
    entry: dict[str, Any] = {
        "args": list(args),
        "kwargs": kwargs,
        "job": _current_job(),
        "pid": os.getpid(),
        "time": time.time(),
    }
    line = json.dumps(entry, default=repr, sort_keys=True)
    if record_file:
        with open(record_file, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    if record_redis:
        import redis

        client = redis.Redis.from_url(record_redis)
        try:
            client.rpush(record_key, line)
        finally:
            client.close()
    return entry


def fail(message: str = "failing on purpose", **kwargs: Any) -> None:
    """Record the call like :func:`record`, then raise, for failure-path tests."""
    record(**kwargs)
    raise RuntimeError(message)


def sleep_then_record(seconds: float, **kwargs: Any) -> dict[str, Any]:
    """Sleep, then record: a job that is still running when the test looks."""
    time.sleep(seconds)
    return record(seconds=seconds, **kwargs)


def read_records(path: str) -> list[dict[str, Any]]:
    """Return the records :func:`record` wrote to ``path`` (empty when none)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        return []


def read_redis_records(url: str, key: str = DEFAULT_RECORD_KEY) -> list[dict[str, Any]]:
    """Return the records :func:`record` pushed to the Redis list ``key``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [json.loads(item) for item in client.lrange(key, 0, -1)]
    finally:
        client.close()


def worker_argv(redis_url: str, queues: Sequence[str]) -> list[str]:
    """The command line that runs one burst worker on ``queues`` in a child process.

    Run it with the repository root as the working directory (so ``tests`` is
    importable) and with any stand-in packages on ``PYTHONPATH``.
    """
    return [sys.executable, "-m", "tests.jobfuncs", "work", redis_url, *queues]


def _work(redis_url: str, queues: Sequence[str]) -> int:
    """Run an rq SimpleWorker in burst mode; exit 0 when every job finished."""
    import redis
    from rq import Queue, SimpleWorker
    from rq.registry import FailedJobRegistry

    connection = redis.Redis.from_url(redis_url)
    try:
        rq_queues = [Queue(name, connection=connection) for name in queues]
        SimpleWorker(rq_queues, connection=connection).work(burst=True)
        failed = sum(FailedJobRegistry(queue=q).count for q in rq_queues)
    finally:
        connection.close()
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    """Entry point for ``python -m tests.jobfuncs work REDIS_URL QUEUE...``."""
    if len(argv) < 3 or argv[0] != "work":
        print("usage: python -m tests.jobfuncs work REDIS_URL QUEUE...", file=sys.stderr)
        return 2
    return _work(argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
