"""Fetch a BTU task's pickled RQ job data from the Frappe site over HTTP(S).

This is the ``frappe`` job builder's only outside call, so every way it can go
wrong has to end in a short, classified error instead of a hang or a crash:

- one deadline covers connecting, sending, the response headers and the body;
- the body is read with a running byte count and the connection is dropped as
  soon as it passes the limit (or when Content-Length already announces more);
- the answer must be Frappe's ``{"message": [128, 5, ...]}``; the bytes are
  checked to look like a pickle but are never unpickled here;
- redirects are not followed (they would carry the token elsewhere) and no
  cookies are kept, so each request stands on its own;
- HTTPS checks the certificate chain *and* the host name, where the name is the
  site name sent in ``Host`` (not the address connected to), against either the
  system trust store or a configured CA bundle.

The module knows nothing about schedules: it raises :class:`FetchError` with a
reason and a ``transient`` flag, and the builder adds the schedule's name.
"""

from __future__ import annotations

import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from btu_twisted.jobs.fields import failure_of
from btu_twisted.jobs.frappe_answers import (
    FetchError,
    _closed_before_answer,
    _describe,
    _root,
    _status_error,
    parse_pickled_task,
)

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

__all__ = [
    "ENDPOINT_PATH",
    "MAX_BODY_BYTES",
    "FetchError",
    "FixedNamePolicy",
    "SiteClient",
    "parse_pickled_task",
    "read_bounded",
    "load_trust_root",
    "request_body",
    "request_headers",
    "site_url",
]

#: BTU's whitelisted method that returns the pickled RQ job tuple of a task.
ENDPOINT_PATH = "/api/method/btu.btu_api.endpoints.get_pickled_task"

#: Largest response body accepted.  A BTU pickle is a few kilobytes; as a JSON
#: array of byte values it grows about fourfold.
MAX_BODY_BYTES = 16 * 1024 * 1024

#: How much of an error response is read, only to name Frappe's exception type.
_ERROR_BODY_BYTES = 64 * 1024

def request_headers(token: str, host_header: str | None) -> dict[str, str]:
    """The headers of a request to the site, for the daemon and the ``btu`` command alike."""
    headers = {
        "Authorization": token,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    if host_header:
        headers["Host"] = host_header
    return headers


def request_body(task: str, schedule: str | None) -> bytes:
    """The JSON body BTU's ``get_pickled_task`` reads."""
    return json.dumps({"task_id": task, "task_schedule_id": schedule}).encode()


def site_url(ip: str, port: int, scheme: str | None) -> str:
    """Return the endpoint URL; without a scheme, HTTPS is used only on port 443.

    The port is always written out and an IPv6 address gets brackets, so the
    URL names exactly the socket the configuration names.
    """
    if scheme is None:
        scheme = "https" if port == 443 else "http"
    if scheme not in ("http", "https"):
        raise ValueError(f"webserver_scheme must be 'http' or 'https', not {scheme!r}")
    host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
    return f"{scheme}://{host}:{port}{ENDPOINT_PATH}"


def load_trust_root(path: str) -> IOpenSSLTrustRoot:
    """Read a PEM bundle (one or more CA certificates) to trust instead of the system store.

    Read once at construction, so a missing or malformed file stops the daemon
    at startup instead of failing every request.
    """
    with open(path, "rb") as handle:
        pem = handle.read()
    end = b"-----END CERTIFICATE-----"
    blocks = [block + end for block in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate found")
    certificates = [Certificate.loadPEM(block) for block in blocks]
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]  # unannotated in Twisted
    return root


@implementer(IPolicyForHTTPS)
class FixedNamePolicy:
    """Verify every server against one configured name, whatever address the URL has.

    The daemon connects to ``webserver_ip`` but the site is the name it sends in
    ``Host``; the certificate must be valid for that name (which is also sent as
    SNI so a multi-site server picks the right certificate).  The connection
    creator is built once and shared by all connections.
    """

    def __init__(self, hostname: str, trust_root: IOpenSSLTrustRoot | None) -> None:
        self._creator = optionsForClientTLS(
            hostname,
            trustRoot=trust_root if trust_root is not None else platformTrust(),  # type: ignore[no-untyped-call]  # unannotated in Twisted
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """Return the shared creator; the netloc is the address, not the name to check."""
        return self._creator


class _BoundedBody(Protocol):
    """Collect a response body, giving up as soon as it grows past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.finished: Deferred[bytes] = Deferred(lambda _: self._drop())
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self._done = False

    def _drop(self) -> None:
        """Stop listening and drop the connection (overflow, or the deadline cancelled us)."""
        self._done = True
        self._chunks = []
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._drop()
            self.finished.errback(_too_large(self._limit))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done:
            return
        self._done = True
        if isinstance(reason.value, web_client.ResponseDone | PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(
                FetchError(
                    f"connection lost while reading the response ({_describe(reason)})",
                    transient=True,
                )
            )


class _Discard(Protocol):
    """Drop a response's connection without reading its body."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


def _too_large(limit: int) -> FetchError:
    return FetchError(f"response body larger than {limit} bytes", transient=False)


def read_bounded(response: IResponse, limit: int) -> Deferred[bytes]:
    """Read the whole body of ``response``, failing with FetchError past ``limit`` bytes.

    A declared Content-Length over the limit fails at once and the connection is
    dropped unread.  Cancelling the returned Deferred drops the connection too.
    """
    if response.length is not UNKNOWN_LENGTH and response.length > limit:
        response.deliverBody(_Discard())  # type: ignore[call-arg, misc, no-untyped-call]  # zope method: no self
        return defer.fail(_too_large(limit))
    if response.length == 0:
        return defer.succeed(b"")
    protocol = _BoundedBody(limit)
    response.deliverBody(protocol)  # type: ignore[call-arg, misc, no-untyped-call]  # zope method: no self
    return protocol.finished


class _QuietHTTP11ClientFactory(web_client._HTTP11ClientFactory):
    noisy = False


class SiteClient:
    """POSTs to ``get_pickled_task`` over one persistent connection pool.

    ``reactor`` must provide what twisted.web's Agent needs (TCP, SSL, time,
    name resolution); it is injected so tests can use the real reactor with a
    local stand-in site.  ``close()`` drops the cached connections.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        url: str,
        token: str,
        host_header: str | None,
        tls_hostname: str,
        trust_root: IOpenSSLTrustRoot | None,
        timeout: float,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._reactor = reactor
        self._url = url
        self._tls_hostname = tls_hostname
        self._timeout = timeout
        self._max_body = max_body
        # treq's parameter type, which a dict[str, str] is not (dicts are invariant).
        self._headers: dict[bytes | str, bytes | str] = {
            name: value for name, value in request_headers(token, host_header).items()
        }
        self._pool = web_client.HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._pool.maxPersistentPerHost = 4
        # Twisted's own factory logs "Starting/Stopping factory" for every
        # connection: two lines per fetch, dozens an hour for nothing.
        self._pool._factory = _QuietHTTP11ClientFactory
        # Below nginx's default keepalive_timeout (65 s), so idle connections are
        # usually dropped by us first rather than found closed mid-request.
        self._pool.cachedConnectionTimeout = 50
        self._in_flight: set[Deferred[bytes]] = set()
        self._closed = False
        agent = web_client.Agent(  # type: ignore[no-untyped-call]  # unannotated in Twisted
            reactor,
            contextFactory=FixedNamePolicy(tls_hostname, trust_root),
            connectTimeout=timeout,
            pool=self._pool,
        )
        # No cookie is ever stored or sent: each request authenticates by token alone.
        no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._http = HTTPClient(agent, cookiejar=no_cookies)  # type: ignore[arg-type]

    def fetch(self, task: str, schedule: str | None) -> Deferred[bytes]:
        """Return the pickled job data for ``task``; fails with :class:`FetchError` only.

        The deadline covers the whole exchange, including one immediate retry
        when a kept-alive connection turns out to be closed (Agent retries only
        idempotent methods by itself; this read-only endpoint is safe to ask
        twice).  Cancelling the result, or ``close()``, aborts the connection
        and fails it with CancelledError.
        """
        if self._closed:
            # A connection opened now would outlive the daemon's stop.
            return defer.fail(defer.CancelledError("the site client is closed"))
        d = Deferred.fromCoroutine(self._fetch_with_retry(task, schedule))
        d.addTimeout(self._timeout, self._reactor)
        d.addErrback(self._classify)
        self._in_flight.add(d)
        d.addBoth(self._forget, d)
        return d

    def _forget(self, result: object, d: Deferred[bytes]) -> object:
        self._in_flight.discard(d)
        return result

    def _classify(self, failure: Failure) -> Failure:
        """Turn anything that is not already a FetchError into one."""
        if isinstance(failure.value, FetchError | defer.CancelledError):
            return failure
        if isinstance(failure.value, defer.TimeoutError):
            reason = f"no complete answer within {self._timeout:g} s"
        elif isinstance(_root(failure).value, VerificationError):
            reason = f"TLS certificate is not valid for {self._tls_hostname}"
        else:
            reason = f"request failed ({_describe(failure)})"
            if not isinstance(
                failure.value,
                error.ConnectError
                | error.DNSLookupError
                | web_client.ResponseNeverReceived
                | web_client.ResponseFailed
                | web_client.RequestTransmissionFailed,
            ):
                self.log.failure("unexpected error fetching a pickled task", failure)
        return failure_of(FetchError(reason, transient=True))

    async def _fetch_with_retry(self, task: str, schedule: str | None) -> bytes:
        try:
            return await self._fetch(task, schedule)
        except web_client.ResponseNeverReceived as exc:
            if not _closed_before_answer(exc):
                raise
            self.log.debug("connection closed before an answer; asking again for {task}", task=task)
        return await self._fetch(task, schedule)

    async def _fetch(self, task: str, schedule: str | None) -> bytes:
        body = request_body(task, schedule)
        try:
            response = await self._http.request(
                "POST",
                self._url,
                data=body,
                headers=self._headers,
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
        except web_client.ResponseFailed as exc:
            # Agent reports a cancelled in-flight request as ResponseNeverReceived
            # wrapping CancelledError; unwrap it so the deadline is seen as such.
            if any(reason.check(defer.CancelledError) for reason in exc.reasons):
                raise defer.CancelledError() from None
            raise
        raw = response.original
        if response.code != 200:
            try:
                error_body = await read_bounded(raw, _ERROR_BODY_BYTES)
            except FetchError:
                error_body = b""
            raise _status_error(raw, error_body)
        payload = await read_bounded(raw, self._max_body)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        data = parse_pickled_task(payload, content_type.decode("latin-1", "replace")[:60])
        self.log.debug(
            "fetched {size} pickle bytes for task {task} schedule {schedule}",
            size=len(data),
            task=task,
            schedule=schedule,
        )
        return data

    def close(self) -> Deferred[None]:
        """Cancel requests in flight and close the cached connections (called on stop)."""
        self._closed = True
        for d in list(self._in_flight):
            d.cancel()
        closed: Deferred[None] = self._pool.closeCachedConnections()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        return closed
