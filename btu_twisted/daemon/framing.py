"""What a request on the control socket may be, before anyone reads it.

A request ends where its top-level JSON object ends (the BTU app's client
sends no newline; COMPAT.md section 1), or at a newline.  Its size, nesting
depth and the text of it that is ever echoed back are bounded here, so that
the protocol that answers requests never holds or repeats more of a client's
bytes than these limits allow.
"""

from __future__ import annotations

import re

from twisted.python.failure import Failure

# Client-chosen text in log lines and error replies is cut by these (shared
# with the btu command and the schedules file's messages).
from btu_twisted.records import echo, shorten

__all__ = ["MAX_NAME_CHARS", "Declined", "Framer", "RequestError", "echo", "one_line",
           "schedule_name", "short_reason", "shorten"]


# Frappe's name column is varchar(140): a longer name cannot be a schedule.
MAX_NAME_CHARS = 140

_NON_WHITESPACE = re.compile(rb"[^ \t\r\n]")
# Outside a JSON string only brackets, quotes and newlines matter to framing;
# UTF-8 continuation bytes are >= 0x80, so scanning bytes is safe.
_OUTSIDE_STRING = re.compile(rb'[{}\[\]"\n]')
_INSIDE_STRING = re.compile(rb'["\\\n]')
# Characters that would break the one-line reply (or the UTF-8 encoding of
# it) if echoed: C0/C1 controls, Unicode line separators and lone surrogates.
_UNSAFE_IN_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class RequestError(Exception):
    """A request we refuse; the message follows ``Error: `` in the reply."""


class Declined(Exception):
    """A well-formed request the scheduler cannot do (``reload NAME`` of an
    unknown name, a full planning queue): the message follows ``Error: `` in
    the reply, and the connection stays open."""


class Framer:
    """Cuts a byte stream into requests without waiting for a newline.

    Scanning state is kept between chunks, so every byte is looked at once,
    and never more than ``max_bytes + 1`` bytes of one request are scanned.
    """

    def __init__(self, max_bytes: int, max_depth: int) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._reset()

    def _reset(self) -> None:
        self._pos = 0  # next byte of the current request to scan; 0: not started
        self._depth = 0
        self._in_string = False
        self._escaped = False  # the last scanned byte was a backslash in a string

    def __len__(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        self._buffer = bytearray()
        self._reset()

    def next_request(self) -> bytes | None:
        """The next complete request, None if more bytes are needed.

        Raises RequestError when the stream cannot hold a valid request.
        """
        buf = self._buffer
        if self._pos == 0:
            start = _NON_WHITESPACE.search(buf)
            if start is None:
                buf.clear()  # whitespace between requests is skipped
                return None
            del buf[: start.start()]
            if buf[0] not in b"{[":
                # No scalar or garbage can become an object: say so now rather
                # than wait for a newline a BTU client never sends.
                raise RequestError("request is not a JSON object")
            self._depth = 1
            self._pos = 1
        limit = min(len(buf), self._max_bytes + 1)
        pos = self._pos
        while pos < limit:
            if self._escaped:
                self._escaped = False
                if buf[pos] != 0x0A:  # a newline still ends the request
                    pos += 1
                continue
            if self._in_string:
                found = _INSIDE_STRING.search(buf, pos, limit)
                if found is None:
                    pos = limit
                    break
                pos = found.start()
                char = buf[pos]
                if char == 0x22:  # "
                    self._in_string = False
                elif char == 0x5C:  # backslash
                    self._escaped = True
                else:
                    return self._take(pos, pos + 1)
                pos += 1
                continue
            found = _OUTSIDE_STRING.search(buf, pos, limit)
            if found is None:
                pos = limit
                break
            pos = found.start()
            char = buf[pos]
            if char == 0x22:
                self._in_string = True
            elif char in b"{[":
                self._depth += 1
                if self._depth > self._max_depth:
                    raise RequestError(f"request nested deeper than {self._max_depth} levels")
            elif char in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    return self._take(pos + 1, pos + 1)
            else:
                return self._take(pos, pos + 1)
            pos += 1
        self._pos = pos
        if len(buf) > self._max_bytes:
            raise self.too_large()
        return None

    def too_large(self) -> RequestError:
        return RequestError(f"request larger than {self._max_bytes} bytes")

    def _take(self, end: int, consumed: int) -> bytes:
        if end > self._max_bytes:
            raise self.too_large()
        request = bytes(self._buffer[:end])
        del self._buffer[:consumed]
        self._reset()
        return request


def one_line(text: str) -> str:
    return _UNSAFE_IN_LINE.sub(" ", text)


def short_reason(failure: Failure) -> str:
    """The exception's type and first message line, for a one-line reply."""
    assert failure.type is not None
    name = getattr(failure.type, "__name__", "error")
    lines = failure.getErrorMessage().strip().splitlines()
    text = f"{name}: {lines[0]}" if lines else name
    return one_line(text[:200])


def schedule_name(content: object) -> str:
    """The Task Schedule name carried by ``request_content``."""
    if content is None:
        raise RequestError("request_content is missing; a Task Schedule name is required")
    if not isinstance(content, str):
        raise RequestError("request_content must be a string (a Task Schedule name)")
    if not content.strip():
        raise RequestError("request_content is empty; a Task Schedule name is required")
    if len(content) > MAX_NAME_CHARS:
        raise RequestError(
            f"request_content is {len(content)} characters long; a Task Schedule name"
            f" has at most {MAX_NAME_CHARS}"
        )
    if _UNSAFE_IN_LINE.search(content):
        raise RequestError("request_content contains control characters")
    return content
