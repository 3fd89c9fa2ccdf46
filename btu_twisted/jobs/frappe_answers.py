"""What the site's answers mean: one short, classified :class:`FetchError` for each way
a request to BTU's endpoint can fail, and the check of a good answer's body.

Apart from the HTTP client so the ``btu`` command words its errors exactly as
the daemon does, and so the rules can be read without the connection code.
Nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.web import client as web_client
    from twisted.web.iweb import IResponse


#: Status codes below 500 that still mean "try again later".
_TRANSIENT_4XX = frozenset({408, 425, 429})


class FetchError(Exception):
    """The site did not give usable job data.

    ``transient`` is True when asking again later may work (connection refused,
    timeout, TLS failure, 5xx, 429) and False when the site's answer itself is
    wrong (other 4xx, redirects, a body that is not Frappe's byte array).
    ``str()`` is one short line and never contains the token.  ``refused`` is
    True when the site answered 401/403: it is up but will not serve this
    daemon (wrong or revoked token), which the site's health shows as such.
    """

    def __init__(self, reason: str, *, transient: bool, refused: bool = False) -> None:
        self.reason = " ".join(reason.split())
        self.transient = transient
        self.refused = refused
        super().__init__(self.reason)


def _root(failure: Failure) -> Failure:
    """The first underlying cause, looking inside Agent's ResponseFailed-style wrappers."""
    reasons = getattr(failure.value, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        return _root(reasons[0])
    return failure


def _describe(failure: Failure) -> str:
    """One short phrase for a connection-level failure."""
    root = _root(failure)
    exc = root.value
    if isinstance(exc, VerificationError):
        return "TLS certificate does not match the expected host name"
    if isinstance(exc, SSL.Error):
        return f"TLS handshake failed: {_openssl_reason(exc)}"
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _openssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's reason strings (e.g. 'certificate verify failed') without the tuple noise."""
    try:
        reasons = [entry[-1] for entry in exc.args[0] if entry and entry[-1]]
    except (IndexError, TypeError):
        reasons = []
    return ", ".join(reasons) or str(exc)[:200]


def _closed_before_answer(exc: web_client.ResponseNeverReceived) -> bool:
    """True when the server just closed the connection: worth one immediate retry."""
    return all(
        reason.check(error.ConnectionDone, error.ConnectionLost) and not reason.check(SSL.Error)
        for reason in exc.reasons
    )


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _status_error(response: IResponse, body: bytes) -> FetchError:
    """Classify a non-200 answer; Frappe's ``exc_type`` is named when present."""
    code = response.code
    phrase = response.phrase.decode("latin-1", "replace") if response.phrase else ""
    detail = f"HTTP {code} {phrase}".strip()
    document = _json_or_none(body)
    if isinstance(document, dict) and isinstance(document.get("exc_type"), str):
        detail += f" ({document['exc_type'][:80]})"
    if 300 <= code < 400:
        location = response.headers.getRawHeaders(b"location", [b""])[0]
        detail += f", redirect to {location[:200].decode('latin-1', 'replace')!r} not followed"
        return FetchError(detail + "; check webserver_scheme/port", transient=False)
    refused = code in (401, 403)
    if refused:
        detail += "; check webserver_token"
    return FetchError(detail, transient=code >= 500 or code in _TRANSIENT_4XX, refused=refused)


def parse_pickled_task(body: bytes, content_type: str) -> bytes:
    """Return the pickle bytes from Frappe's ``{"message": [int, ...]}`` answer.

    Frappe's JSON encoder turns the endpoint's ``bytes`` into a list of byte
    values.  Anything else is refused with a short reason that describes, but
    does not quote, the body.  The result must start like a protocol-2+ pickle
    and end with the STOP opcode, a cheap check that catches a wrong endpoint
    answering; it is never unpickled here.
    """
    document = _json_or_none(body)
    what = f"{len(body)} bytes of {content_type or 'no Content-Type'}"
    if document is None:
        raise FetchError(f"response is not JSON ({what})", transient=False)
    if not isinstance(document, dict) or "message" not in document:
        raise FetchError(f"response has no 'message' ({what})", transient=False)
    message = document["message"]
    if not isinstance(message, list) or not message:
        kind = type(message).__name__
        raise FetchError(f"'message' is a {kind}, not a non-empty byte array", transient=False)
    if set(map(type, message)) != {int}:
        raise FetchError("'message' holds values that are not integers", transient=False)
    try:
        data = bytes(message)
    except ValueError:
        raise FetchError("'message' holds integers outside 0..255", transient=False) from None
    if data[0] != 0x80 or data[-1] != 0x2E:
        raise FetchError("'message' bytes are not a pickle (protocol 2 or later)", transient=False)
    return data
