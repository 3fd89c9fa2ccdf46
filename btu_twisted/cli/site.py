"""``btu test-ping|test-pickler|queue-task-now``: the site and the job builders, from a shell.

The CLI makes its one HTTP request with the standard library, blocking, which
a command may do.  It used to run the daemon's Twisted ``SiteClient`` on a
private, uninstalled reactor, but Twisted reaches for the *global* reactor in
places no parameter controls: treq's request body producer and the TLS
layer's write buffering both schedule on it.  In the ``btu`` process that
reactor never runs, so the site got headers announcing ``Content-Length: 50``
and no body (issue 9 part 6), and over HTTPS not even the headers.

What the site receives is still the daemon's request: URL, headers and body
come from :mod:`btu_twisted.jobs.frappe_http` (``site_url``, ``request_headers``,
``request_body``), the answer is checked by its ``parse_pickled_task`` and
classified like the daemon's, and HTTPS verifies the certificate against the
same name (``webserver_host_header``, else ``webserver_ip``, also sent as SNI)
and the same trust (``webserver_ca_file``, else the system store).  The job is
built by the daemon's own ``FrappeBuilder`` around this blocking client.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from rq.utils import utcformat
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from btu_twisted.cli.arguments import PING_METHOD
from btu_twisted.cli.common import FAILED, OK, UNREACHABLE, USAGE, CliError, Context
from btu_twisted.cli.pickles import read_job_call
from btu_twisted.cli.sql import MANUAL_SCHEDULE, read_task
from btu_twisted.config import Config
from btu_twisted.jobs.builders import (
    BuildError,
    BuiltJob,
    FrappeBuilder,
    frappe_enqueue,
    make_builder,
)

# The two private names keep error wording and limits exactly the daemon's.
from btu_twisted.jobs.frappe_answers import FetchError, _status_error, parse_pickled_task
from btu_twisted.jobs.frappe_http import (
    _ERROR_BODY_BYTES,
    ENDPOINT_PATH,
    MAX_BODY_BYTES,
    request_body,
    request_headers,
    site_url,
)
from btu_twisted.records import ScheduleRow, echo, shorten
from btu_twisted.seams import JobBuilder
from btu_twisted.store.keys import JOB_PREFIX, QUEUE_PREFIX, RQ_QUEUES

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

_T = TypeVar("_T")

__all__ = ["PING_METHOD", "BlockingSite", "cmd_queue_task_now", "cmd_test_pickler",
           "cmd_test_ping"]


class _NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, with the certificate checked for (and SNI sent as) another name.

    The daemon connects to ``webserver_ip`` but the site is the name in ``Host``.
    """

    def __init__(self, host: str, port: int, *, tls_name: str, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._tls_name = tls_name
        self._tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._tls_name)


class _Answer:
    """The few parts of an HTTP answer that frappe_http's status classification reads."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.code = response.status
        self.phrase = (response.reason or "").encode("latin-1", "replace")
        self.headers = Headers()
        for name, value in response.getheaders():
            self.headers.addRawHeader(name, value)


class BlockingSite:
    """One blocking request at a time to the Frappe site, as the daemon's SiteClient makes it.

    ``fetch``/``close`` have SiteClient's shape (a Deferred, here already fired),
    so the daemon's FrappeBuilder takes it unchanged.  Errors are FetchError
    with the daemon's wording; ``transient`` marks the site as unreachable.
    """

    def __init__(self, config: Config) -> None:
        if not config.webserver_ip or not config.webserver_port:
            raise CliError("webserver_ip and webserver_port must be set in the config", USAGE)
        try:
            self.url = site_url(config.webserver_ip, int(config.webserver_port),
                                config.webserver_scheme)
        except ValueError as exc:
            raise CliError(str(exc), USAGE) from None
        self.base = self.url.removesuffix(ENDPOINT_PATH)
        self.timeout = float(config.webserver_timeout_secs)
        self._headers = request_headers(config.webserver_token or "",
                                        config.webserver_host_header)
        self._tls_name = config.webserver_host_header or config.webserver_ip
        self._tls: ssl.SSLContext | None = None
        if self.url.startswith("https:"):
            try:
                self._tls = ssl.create_default_context(cafile=config.webserver_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"webserver_ca_file: {exc}", USAGE) from None

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                limit: int) -> tuple[_Answer, bytes]:
        """Send one request; return the answer and its body (at most ``limit`` bytes).

        One deadline covers connecting, sending and reading; redirects are not
        followed.  Raises FetchError (transient) when the site cannot be reached.
        """
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 0
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        deadline = time.monotonic() + self.timeout
        if self._tls is not None:
            conn: http.client.HTTPConnection = _NamedHTTPSConnection(
                host, port, tls_name=self._tls_name, context=self._tls, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            answer = _Answer(response)
            if response.length is not None and response.length > limit:
                raise FetchError(f"response body larger than {limit} bytes", transient=False)
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(65536):
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"response body larger than {limit} bytes", transient=False)
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunks.append(chunk)
            return answer, b"".join(chunks)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc.reason or "certificate verify failed"
            raise FetchError(f"TLS certificate is not valid for {self._tls_name} ({reason})",
                             transient=True) from None
        except TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout:g} s",
                             transient=True) from None
        except (OSError, http.client.HTTPException) as exc:
            text = " ".join(str(exc).split())[:200]
            reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            raise FetchError(f"request failed ({reason})", transient=True) from None
        finally:
            conn.close()

    def pickled_task(self, task: str, schedule: str | None) -> bytes:
        """POST to get_pickled_task exactly as the daemon does; the pickle's bytes, unread."""
        answer, body = self.request("POST", self.url, request_body(task, schedule),
                                    self._headers, MAX_BODY_BYTES)
        if answer.code != 200:
            error = _status_error(answer, body[:_ERROR_BODY_BYTES])  # type: ignore[arg-type]
            said = frappe_message(body[:MAX_BODY_BYTES])
            if said:
                raise FetchError(f"{error.reason}; the site says: {said}",
                                 transient=error.transient, refused=error.refused)
            raise error
        content_type = (answer.headers.getRawHeaders(b"content-type") or [b""])[0]
        return parse_pickled_task(body, content_type.decode("latin-1", "replace")[:60])

    def fetch(self, task: str, schedule: str | None) -> Deferred[bytes]:
        """SiteClient's interface for FrappeBuilder; the Deferred has already fired.

        A task queued by hand has no schedule: BTU's TaskRunner takes a null
        ``task_schedule_id`` (a name it cannot find is a 404)."""
        if schedule == MANUAL_SCHEDULE:
            schedule = None
        try:
            return defer.succeed(self.pickled_task(task, schedule))
        except FetchError:
            return defer.fail()

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


def frappe_message(body: bytes) -> str | None:
    """What Frappe told the user in an error answer, as one short line.

    Frappe puts it in ``_server_messages`` (a JSON list of JSON objects with a
    ``message``, often HTML), else ``exception`` or ``message``; the admin needs
    that, not only "HTTP 404 NOT FOUND".
    """
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    texts: list[str] = []
    try:
        for item in json.loads(document.get("_server_messages") or "[]"):
            inner = json.loads(item) if isinstance(item, str) else item
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                texts.append(inner["message"])
    except (ValueError, TypeError):
        pass
    if not texts:
        for key in ("exception", "message"):
            if isinstance(document.get(key), str):
                texts.append(document[key])
                break
    text = re.sub(r"<[^>]*>", "", " ".join(texts))
    return " ".join(text.split())[:300] or None


def _fired(d: Deferred[_T]) -> _T:
    """The result of a Deferred that has already fired (the builders here never wait)."""
    box: list[_T | Failure] = []
    d.addBoth(box.append)
    if not box:
        raise RuntimeError("the job builder did not finish synchronously")
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def cmd_test_ping(ctx: Context, args: argparse.Namespace) -> int:
    """Call a whitelisted method on the site (BTU's test_ping) with the daemon's headers."""
    config = ctx.config()
    site = BlockingSite(config)
    url = f"{site.base}/api/method/{args.method}"
    headers = request_headers(config.webserver_token or "", config.webserver_host_header)
    del headers["Content-Type"]  # a GET without a body
    if not config.webserver_token:
        del headers["Authorization"]
    try:
        answer, body = site.request("GET", url, None, headers, 64 * 1024)
    except FetchError as exc:
        code = UNREACHABLE if exc.transient else FAILED
        prefix = "cannot reach the site at " if exc.transient else ""
        raise CliError(f"{prefix}{url}: {exc.reason}", code) from None
    if answer.code != 200:
        phrase = answer.phrase.decode("latin-1", "replace")
        hint = "; check webserver_token" if answer.code in (401, 403) else ""
        raise CliError(f"{url} answered HTTP {answer.code} {phrase}{hint}",
                       UNREACHABLE if answer.code >= 500 else FAILED)
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
    site = BlockingSite(ctx.config())
    try:
        data = site.pickled_task(args.task, None)
    except FetchError as exc:
        code = UNREACHABLE if exc.transient else FAILED
        raise CliError(f"get_pickled_task for task {echo(args.task)} at {site.url}: {exc.reason}",
                       code) from None
    func_name = read_job_call(data).get("func_name")
    if ctx.json:
        ctx.emit_json({"task": args.task, "url": site.url, "bytes": len(data),
                       "func_name": func_name})
    else:
        ctx.line(f"get_pickled_task returned {len(data)} bytes for task {shorten(args.task)}"
                 f" (function {func_name or 'unreadable'}).")
    return OK


def _build(config: Config, row: ScheduleRow, when: int) -> BuiltJob:
    """Build the job with the configured builder, as the daemon would for a due run."""
    try:
        builder: JobBuilder
        if config.job_builder == "frappe":
            builder = FrappeBuilder(config.rq_queue_prefix or "", BlockingSite(config),
                                    enqueue=frappe_enqueue(config))
        else:
            builder = make_builder(config, None)
    except (ValueError, OSError) as exc:
        raise CliError(f"job_builder {config.job_builder}: {exc}", USAGE) from None
    try:
        return _fired(builder.build(row, when))
    except BuildError as exc:
        code = UNREACHABLE if exc.transient else FAILED
        raise CliError(f"cannot build a job for task {row.task}: {exc.reason}", code) from None


def cmd_queue_task_now(ctx: Context, args: argparse.Namespace) -> int:
    """Build a job for a BTU Task right now and put it on its rq queue (no schedule involved)."""
    config = ctx.config()
    row = read_task(ctx, args.task)
    if row is None:
        raise CliError(f"no BTU Task named {echo(args.task)}", FAILED)
    job = _build(config, row, int(time.time()))
    # Copied into redis-py's own mapping type (dicts are invariant in their keys).
    fields: dict[FieldT, EncodableT] = {key: value for key, value in job.fields.items()}
    fields["enqueued_at"] = utcformat(datetime.now(UTC))
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
