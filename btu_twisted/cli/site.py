"""``btu test-ping|test-pickler|queue-task-now``: the site and the job builders, from a shell.

These reuse the daemon's own Twisted code (``SiteClient``, the job builders),
so a successful ``test-pickler`` proves the daemon's fetch works with this
config, TLS name checks included.  That code wants a reactor; the CLI runs a
private one (:func:`run_private`): a reactor object that is never installed as
*the* reactor.  It is started and stopped once per call, and works the same in
the ``btu`` process and inside a test whose global reactor is already running.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from rq.utils import utcformat
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.selectreactor import SelectReactor
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from btu_twisted.builders import BuildError, BuiltJob, make_builder
from btu_twisted.cli.common import FAILED, OK, UNREACHABLE, USAGE, CliError, Context
from btu_twisted.cli.pickles import read_job_call
from btu_twisted.cli.sql import read_task
from btu_twisted.config import Config
from btu_twisted.frappe_http import (
    ENDPOINT_PATH,
    FetchError,
    FixedNamePolicy,
    SiteClient,
    load_trust_root,
    read_bounded,
    site_url,
)
from btu_twisted.store import JOB_PREFIX, QUEUE_PREFIX, RQ_QUEUES

__all__ = ["PING_METHOD", "cmd_queue_task_now", "cmd_test_pickler", "cmd_test_ping", "run_private"]

#: BTU's whitelisted "are you there" method (``btu/btu_api/endpoints.py``); answers "pong".
PING_METHOD = "btu.btu_api.endpoints.test_ping"

_T = TypeVar("_T")


def run_private(work: Callable[[Any], Awaitable[_T]], timeout: float) -> _T:
    """Run ``work(reactor)`` on a fresh, uninstalled reactor; return or raise its outcome.

    ``timeout`` bounds the whole run (defer.TimeoutError).  The reactor does not
    claim the I/O thread or install signal handlers, so it can run in any
    thread; its wake-up pipe is closed afterwards so repeated calls leak nothing.
    """
    reactor = SelectReactor()
    reactor._registerAsIOThread = False
    outcome: list[Any] = []

    def start() -> None:
        d: Deferred[_T] = defer.ensureDeferred(work(reactor))  # type: ignore[arg-type]
        d.addTimeout(timeout, reactor)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    waker = reactor.waker
    if waker is not None:
        reactor._removeInternalReader(waker)
        waker.connectionLost(None)
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def _describe(failure_or_error: Failure | BaseException) -> str:
    """One short phrase for a connection failure, looking inside the Agent's wrappers."""
    exc = failure_or_error.value if isinstance(failure_or_error, Failure) else failure_or_error
    reasons = getattr(exc, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        return _describe(reasons[0])
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _site(config: Config) -> tuple[str, dict[str, Any]]:
    """The site's base URL and the TLS settings the daemon would use; exit 2 if unset."""
    if not config.webserver_ip or not config.webserver_port:
        raise CliError("webserver_ip and webserver_port must be set in the config", USAGE)
    base = site_url(config.webserver_ip, config.webserver_port, config.webserver_scheme)
    try:
        trust = load_trust_root(config.webserver_ca_file) if config.webserver_ca_file else None
    except (OSError, ValueError) as exc:
        raise CliError(f"webserver_ca_file: {exc}", USAGE) from None
    tls = {"tls_hostname": config.webserver_host_header or config.webserver_ip, "trust_root": trust}
    return base.removesuffix(ENDPOINT_PATH), tls


def cmd_test_ping(ctx: Context, args: argparse.Namespace) -> int:
    """Call a whitelisted method on the site (BTU's test_ping) with the daemon's headers."""
    config = ctx.config()
    base, tls = _site(config)
    url = f"{base}/api/method/{args.method}"
    headers = Headers({"Accept": ["application/json"]})
    if config.webserver_token:
        headers.addRawHeader("Authorization", config.webserver_token)
    if config.webserver_host_header:
        headers.addRawHeader("Host", config.webserver_host_header)
    timeout = config.webserver_timeout_secs

    async def ping(reactor: Any) -> tuple[int, str, bytes]:
        policy = FixedNamePolicy(tls["tls_hostname"], tls["trust_root"])
        agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout)
        response = await agent.request(b"GET", url.encode("ascii"), headers)
        body = await read_bounded(response, 64 * 1024)
        return response.code, response.phrase.decode("latin-1", "replace"), body

    try:
        code, phrase, body = run_private(ping, timeout)
    except FetchError as exc:
        raise CliError(f"{url}: {exc.reason}", FAILED) from None
    except defer.TimeoutError:
        raise CliError(f"cannot reach the site at {url}: no answer within {timeout:g} s",
                       UNREACHABLE) from None
    except Exception as exc:  # connection-level: refused, DNS, TLS, reset
        raise CliError(f"cannot reach the site at {url}: {_describe(exc)}", UNREACHABLE) from None
    if code != 200:
        hint = "; check webserver_token" if code in (401, 403) else ""
        raise CliError(f"{url} answered HTTP {code} {phrase}{hint}",
                       UNREACHABLE if code >= 500 else FAILED)
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    if not isinstance(message, str):
        raise CliError(f"{url} answered HTTP 200 without a Frappe 'message'", FAILED)
    if ctx.json:
        ctx.emit_json({"url": url, "message": message})
    else:
        ctx.line(f"{url}: {message}")
    return OK


def cmd_test_pickler(ctx: Context, args: argparse.Namespace) -> int:
    """Fetch a task's pickled job from get_pickled_task exactly as the daemon does."""
    config = ctx.config()
    base, tls = _site(config)
    url = base + ENDPOINT_PATH

    async def fetch(reactor: Any) -> bytes:
        client = SiteClient(reactor, url=url, token=config.webserver_token or "",
                            host_header=config.webserver_host_header,
                            timeout=config.webserver_timeout_secs, **tls)
        try:
            return await client.fetch(args.task, None)
        finally:
            await client.close()

    try:
        data = run_private(fetch, config.webserver_timeout_secs + 5)
    except FetchError as exc:
        code = UNREACHABLE if exc.transient else FAILED
        raise CliError(f"get_pickled_task for task {args.task}: {exc.reason}", code) from None
    except defer.TimeoutError:
        raise CliError(f"cannot reach the site at {url}: no answer in time", UNREACHABLE) from None
    func_name = read_job_call(data).get("func_name")
    if ctx.json:
        ctx.emit_json({"task": args.task, "url": url, "bytes": len(data), "func_name": func_name})
    else:
        ctx.line(f"get_pickled_task returned {len(data)} bytes for task {args.task}"
                 f" (function {func_name or 'unreadable'}).")
    return OK


def _build(config: Config, row: Any, when: int) -> BuiltJob:
    """Build the job with the configured builder, as the daemon would for a due run."""

    async def build(reactor: Any) -> BuiltJob:
        try:
            builder = make_builder(config, reactor)
        except (ValueError, OSError) as exc:
            raise CliError(f"job_builder {config.job_builder}: {exc}", USAGE) from None
        try:
            return await builder.build(row, when)
        finally:
            await builder.close()

    try:
        return run_private(build, config.webserver_timeout_secs + 5)
    except BuildError as exc:
        code = UNREACHABLE if exc.transient else FAILED
        raise CliError(f"cannot build a job for task {row.task}: {exc.reason}", code) from None
    except defer.TimeoutError:
        raise CliError(f"building a job for task {row.task} timed out", UNREACHABLE) from None
    except error.ConnectError as exc:
        raise CliError(f"cannot build a job for task {row.task}: {_describe(exc)}",
                       UNREACHABLE) from None


def cmd_queue_task_now(ctx: Context, args: argparse.Namespace) -> int:
    """Build a job for a BTU Task right now and put it on its rq queue (no schedule involved)."""
    config = ctx.config()
    row = read_task(ctx, args.task)
    if row is None:
        raise CliError(f"no BTU Task named {args.task!r}", FAILED)
    job = _build(config, row, int(time.time()))
    fields = dict(job.fields)
    fields["enqueued_at"] = utcformat(datetime.now(timezone.utc))
    queue_key = QUEUE_PREFIX + job.origin
    # One transaction, like the daemon's claim: a worker never sees the id before the hash.
    with ctx.redis().pipeline(transaction=True) as pipe:
        pipe.hset(JOB_PREFIX + job.job_id, mapping=fields)
        pipe.rpush(queue_key, job.job_id)
        pipe.sadd(RQ_QUEUES, queue_key)
        pipe.execute()
    if ctx.json:
        ctx.emit_json({"task": row.task, "job_id": job.job_id, "queue": job.origin,
                       "job_builder": config.job_builder})
    else:
        ctx.line(f"Queued BTU Task {row.task} as rq job {job.job_id} on queue {job.origin}.")
    return OK
