"""The Redis side of following jobs: where rq says they stand, and the health records.

Reading a job costs one HMGET inside one read-only script call for a whole
batch (lua/follow_jobs.lua), so a pass over 500 unfinished jobs is one round
trip of about a millisecond in Redis; the records are written with one HSET
per batch of changed schedules, and read back (at start, and by ``btu
health``) with HSCAN, never one HGETALL of a hash that may hold 100,000.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from btu_twisted.store.health_record import HealthRecord, decode, encode, error_line
from btu_twisted.store.keys import JOB_PREFIX, Keys
from btu_twisted.store.scripts import FOLLOW_JOBS

if TYPE_CHECKING:
    from btu_twisted.store.gateway import RedisCommands

__all__ = [
    "FOLLOW_BATCH", "RESULTS_PREFIX", "SAVE_BATCH", "HealthStore", "JobState", "job_state",
    "parse_time",
]

#: Jobs read per script call: ~1 ms of Redis for 500.
FOLLOW_BATCH = 500
#: Records written per HSET.
SAVE_BATCH = 500
#: rq's results stream of a job (rq >= 1.12 on a Redis with streams).
RESULTS_PREFIX = "rq:results:"


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as rq left it; ``status`` "" when its hash is gone."""

    status: str
    enqueued: float | None
    started: float | None
    ended: float | None
    timeout: float | None
    error: str | None


def parse_time(text: str | bytes | None) -> float | None:
    """rq's ISO 8601 UTC times (``2026-12-07T15:00:00.123456Z``, or without the
    fraction) as unix seconds; None for empty or unreadable."""
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    # rq writes UTC; a time without a zone read as local would be off by the offset.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _error(raw: Any) -> str | None:
    """The first line that says what went wrong, from the stream's base64 zlib
    text or the hash's zlib bytes (or plain text, as a hand or an old rq wrote)."""
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
    if not data:
        return None
    kind, body = data[:2], data[2:]
    try:
        if kind == b"s:":
            body = base64.b64decode(body)
        text = zlib.decompress(body).decode("utf-8", "replace")
    except (ValueError, zlib.error):
        text = body.decode("utf-8", "replace")
    return error_line(text) or None


def job_state(values: Sequence[Any]) -> JobState:
    """One job's status, enqueued_at, started_at, ended_at, timeout and error text."""
    status, enqueued, started, ended, timeout, error = values
    try:
        seconds: float | None = float(_text(timeout)) if _text(timeout) else None
    except ValueError:
        seconds = None
    return JobState(_text(status), parse_time(_text(enqueued)), parse_time(_text(started)),
                    parse_time(_text(ended)), seconds, _error(error) if error else None)


class HealthStore:
    """The follower's reads and writes, on the daemon's Redis gateway."""

    def __init__(self, redis: RedisCommands, keys: Keys) -> None:
        self._redis = redis
        self.keys = keys

    async def follow(self, jobs: Sequence[tuple[str, str]]) -> list[JobState | None]:
        """Where each (job id, status last seen) stands now, in order; None
        for a job whose status is still the one last seen.  FOLLOW_BATCH per call."""
        states: list[JobState | None] = []
        for start in range(0, len(jobs), FOLLOW_BATCH):
            batch = jobs[start:start + FOLLOW_BATCH]
            keys = [key for job_id, _ in batch for key in (JOB_PREFIX + job_id,
                                                           RESULTS_PREFIX + job_id)]
            reply = await self._redis.eval(FOLLOW_JOBS, keys, [seen for _, seen in batch])
            found: list[JobState | None] = [None] * len(batch)
            for index, *values in json.loads(_text(reply[0])):
                error = values[-1]
                if isinstance(error, str) and error.startswith("h:"):
                    number = int(error[2:])
                    values[-1] = b"h:" + _raw(reply[number])
                found[int(index) - 1] = job_state(values)
            states += found
        return states

    async def save(self, records: Mapping[str, HealthRecord]) -> None:
        """Encoded a batch at a time, between the batches' round trips: the
        10,000 records of a burst's jobs are not one long stretch of the reactor."""
        names = list(records)
        for start in range(0, len(names), SAVE_BATCH):
            flat = [part for name in names[start:start + SAVE_BATCH]
                    for part in (name, encode(records[name]))]
            await self._redis.command("HSET", self.keys.health, *flat)

    async def forget(self, names: Sequence[str]) -> None:
        if names:
            await self._redis.command("HDEL", self.keys.health, *names)

    async def load(self) -> dict[str, HealthRecord]:
        """Every readable record (a broken one is left out, and rewritten at its next run)."""
        found: dict[str, HealthRecord] = {}
        cursor = "0"
        while True:
            reply = await self._redis.command("HSCAN", self.keys.health, cursor, "COUNT", 1000)
            cursor = _text(reply[0])
            flat = reply[1]
            for i in range(0, len(flat), 2):
                record = decode(flat[i + 1])
                if record is not None:
                    found[_text(flat[i])] = record
            if cursor == "0":
                return found
