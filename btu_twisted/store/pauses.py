"""Paused schedules (``btu pause NAME``), as every reader sees them.

A pause is one field of ``<prefix>paused`` (schedule name -> unix seconds it
was paused), written by pause.lua and removed by resume.lua or, when the
schedule is found deleted, close_lives.lua.  plan.lua reads it, so a pause
holds across full refreshes, reloads, restarts and every daemon of the prefix.

The daemon reads it through :meth:`ScheduleStore.paused` (the status page,
``btu health``), ``btu show-scheduled`` through :func:`read_paused` (redis-py);
both answer a :class:`Paused`.  Importable without Twisted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from btu_twisted.store.keys import Keys

__all__ = ["PAUSED_RUN", "Paused", "parse_paused", "read_paused", "rq_time"]

#: What ScheduleStore.plan answers for a paused schedule instead of its last run.
PAUSED_RUN = -1

#: Paused schedules read per call unless the caller says otherwise.
DEFAULT_LIMIT = 1000


@dataclass(frozen=True)
class Paused:
    """The paused schedules: how many there are, and (up to a limit) which, since when."""

    total: int = 0
    since: dict[str, int] = field(default_factory=dict)  # name -> unix seconds paused

    def __contains__(self, name: object) -> bool:
        return name in self.since

    @property
    def names(self) -> list[str]:
        return sorted(self.since)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _since(pairs: list[object]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, at in zip(pairs[0::2], pairs[1::2], strict=False):
        try:
            out[_text(name)] = int(float(_text(at)))
        except (ValueError, OverflowError):
            out[_text(name)] = 0  # written by hand: still paused, since unknown
    return out


def parse_paused(reply: list[object]) -> Paused:
    """paused_list.lua's reply: ``{count, JSON text of name, unix, ...}``."""
    pairs = json.loads(_text(reply[1]))
    return Paused(int(_text(reply[0])), _since(pairs))


def read_paused(connection: object, keys: Keys) -> Paused:
    """Every paused schedule, through redis-py (``btu`` commands): HGETALL, as a
    person pauses a handful of schedules, not thousands."""
    raw = connection.hgetall(keys.paused)  # type: ignore[attr-defined]
    flat: list[object] = []
    for name, at in raw.items():
        flat += [name, at]
    since = _since(flat)
    return Paused(len(since), since)


def rq_time(unix: float) -> str:
    """``unix`` as rq writes times (``enqueued_at``): what a history entry holds."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
