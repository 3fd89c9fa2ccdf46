"""Redis protocol (RESP) framing of command arguments, done ahead of time.

A claim of 500 jobs is some 18,000 arguments.  txredisapi frames them one by
one in Python at the moment the command is sent: about 12 ms per batch, which
capped a 10,000-run burst at ~15,000 jobs/s however fast Redis was.  The timer
frames each job's arguments when it builds the job, seconds before it is due,
so at the due second a claim costs one join of bytes.

Values are framed exactly as txredisapi frames them (``_encode_value``), so a
framed command and an ordinary one reach Redis byte for byte the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Encoded:
    """``count`` arguments framed as RESP bulk strings, one after the other."""

    count: int
    data: bytes


def _bytes_of(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, float):
        return format(value, "f").encode()
    if isinstance(value, bytearray):
        return bytes(value)
    return str(value).encode()


# Short strings come back job after job (field names, "", the queue, the
# status): framed once.  Bounded: unique ones (times, ids) only pass through.
_SHORT = 64
_CACHE_SIZE = 8192
_framed_strings: dict[str, bytes] = {}


def encode(values: Iterable[object]) -> Encoded:
    parts = []
    cache = _framed_strings
    for value in values:
        if type(value) is str:
            framed = cache.get(value)
            if framed is None:
                raw = value.encode("utf-8")
                framed = b"$%d\r\n%b\r\n" % (len(raw), raw)
                if len(raw) <= _SHORT:
                    if len(cache) >= _CACHE_SIZE:
                        cache.clear()
                    cache[value] = framed
        else:
            raw = _bytes_of(value)
            framed = b"$%d\r\n%b\r\n" % (len(raw), raw)
        parts.append(framed)
    return Encoded(len(parts), b"".join(parts))


def join(pieces: Iterable[Encoded]) -> Encoded:
    pieces = list(pieces)
    return Encoded(sum([p.count for p in pieces]), b"".join([p.data for p in pieces]))


def command(*pieces: Encoded) -> bytes:
    """The whole command: its argument count, then the framed arguments."""
    whole = join(pieces)
    return b"*%d\r\n%b" % (whole.count, whole.data)


def decode(data: bytes) -> list[bytes]:
    """The values of framed arguments (what Redis reads); for checks and tools."""
    out: list[bytes] = []
    at = 0
    while at < len(data):
        if data[at:at + 1] != b"$":
            raise ValueError(f"not a bulk string at {at}: {data[at:at + 20]!r}")
        end = data.index(b"\r\n", at)
        size = int(data[at + 1:end])
        if data[end + 2 + size:end + 4 + size] != b"\r\n":
            raise ValueError(f"bulk string at {at} does not end where its length says")
        out.append(data[end + 2:end + 2 + size])
        at = end + 4 + size
    return out
