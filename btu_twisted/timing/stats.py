"""What the timer has done, for the status page and the metrics."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class TimerStats:
    enqueued: int = 0
    skipped: int = 0
    lost: int = 0          # runs another daemon claimed first (LOST)
    withdrawn: int = 0     # members our own cancel or replan removed mid-claim (WITHDRAWN)
    last_enqueue: float | None = None
    last_schedule: str | None = None
    # From the timer's latest look at the sorted set (exact below FETCH_LIMIT).
    members_seen: int = 0
    near_seen: int = 0      # of them due within the lookahead
    seen_at: float | None = None
    next_due: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        self.lateness: deque[float] = deque(maxlen=1000)
