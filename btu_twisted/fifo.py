"""The ordered, unique queue of schedule names waiting to be planned.

Every source of work (socket requests, full refreshes, finished enqueues) only
says *which* schedule needs planning; the planner reads the row itself.  A name
already waiting is therefore not added twice: a burst of refreshes for one
schedule costs one SQL read, not a thousand (the Rust daemon's queue grew
without bound, COMPAT.md 6.11).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

DEFAULT_MAX_NAMES = 1_000_000


class ScheduleFifo:
    """Insertion-ordered set of names with a Deferred-based ``get``.

    Consumers sleep on ``get()`` while the set is empty instead of polling,
    and ``take()`` drains a batch without waiting so that one SQL query can
    serve many names.

    Two lanes: names added with ``add``/``extend`` (a run just enqueued, a
    socket request, a change) are taken before the ``bulk`` lane a full
    refresh fills, so the next run of an every-second schedule is never
    planned behind 100,000 refresh names.  A name is in at most one lane;
    asked for urgently while waiting in bulk, it moves up.
    """

    log = Logger()

    def __init__(self, max_names: int = DEFAULT_MAX_NAMES) -> None:
        # O(1) membership, removal anywhere, and popping the oldest: a plain
        # dict's next(iter()) after many deletions from its front scans the
        # holes they leave (100,000 names took 5.6 s to take).
        self._urgent: OrderedDict[str, None] = OrderedDict()
        self._bulk: OrderedDict[str, None] = OrderedDict()
        self._waiters: list[Deferred[str]] = []
        self._max_names = max_names
        self._refused = 0

    def __len__(self) -> int:
        return len(self._urgent) + len(self._bulk)

    def __contains__(self, name: object) -> bool:
        return name in self._urgent or name in self._bulk

    def add(self, name: str, bulk: bool = False) -> bool:
        """Queue ``name`` unless it is already waiting; False only when full."""
        if name in self._urgent:
            return True
        if name in self._bulk:
            if not bulk:
                del self._bulk[name]
                self._urgent[name] = None
            return True
        if self._waiters:
            # A consumer is asleep: hand the name over directly.
            self._waiters.pop(0).callback(name)
            return True
        if len(self) >= self._max_names:
            self._refused += 1
            if self._refused == 1 or self._refused % 10_000 == 0:
                self.log.error(
                    "schedule queue is full ({limit} names); refused {name} "
                    "({refused} refused so far)",
                    limit=self._max_names,
                    name=name,
                    refused=self._refused,
                )
            return False
        (self._bulk if bulk else self._urgent)[name] = None
        return True

    def extend(self, names: Iterable[str], bulk: bool = False) -> int:
        """Queue many names; returns how many were refused."""
        return sum(1 for name in names if not self.add(name, bulk))

    def discard(self, name: str) -> None:
        self._urgent.pop(name, None)
        self._bulk.pop(name, None)

    def take(self, limit: int) -> list[str]:
        """Remove and return up to ``limit`` names, urgent ones first, each lane in FIFO order."""
        batch: list[str] = []
        for lane in (self._urgent, self._bulk):
            count = min(limit - len(batch), len(lane))
            pop = lane.popitem
            batch += [pop(last=False)[0] for _ in range(count)]
        if not self:
            self._refused = 0
        return batch

    def get(self) -> Deferred[str]:
        """Fire with the next name, now or as soon as one is added."""
        if self:
            return succeed(self.take(1)[0])
        d: Deferred[str] = Deferred(self._cancel_waiter)
        self._waiters.append(d)
        return d

    def _cancel_waiter(self, d: Deferred[str]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
