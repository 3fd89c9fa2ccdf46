"""The Redis key names the daemon and ``btu`` share, importable without Twisted or a Redis client.

They live apart from :mod:`btu_twisted.store.schedule_store` (which re-exports them) so that
a ``btu`` command that only names a key does not pay for loading txredisapi
and Twisted, which is most of its start-up time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_PREFIX",
    "JOB_PREFIX",
    "Keys",
    "LAST_ENQUEUED",
    "MEMBER_INDEX",
    "PLANNED_MARKER",
    "QUEUE_PREFIX",
    "RQ_QUEUES",
    "SCHEDULE_SET",
]

#: redis_key_prefix's default: the Rust daemon's key names.
DEFAULT_PREFIX = "btu_scheduler:"


@dataclass(frozen=True)
class Keys:
    """Our keys under one ``redis_key_prefix``: a bench's sites share a Redis."""

    prefix: str = DEFAULT_PREFIX

    @property
    def schedule_set(self) -> str:
        """Sorted set of members ``name|unix time``, scored by that time."""
        return self.prefix + "task_execution_times"

    @property
    def member_index(self) -> str:
        """Hash: schedule name -> its one planned member."""
        return self.prefix + "schedule_members"

    @property
    def last_enqueued(self) -> str:
        """Hash: schedule name -> the scheduled time of its latest run enqueued."""
        return self.prefix + "last_enqueued"

    @property
    def planned_marker(self) -> str:
        """Set by every full refresh; its absence means Redis lost our keys
        (restart without persistence, FLUSHDB, failover to an empty replica)."""
        return self.prefix + "planned"

    @property
    def last_job(self) -> str:
        """Hash: schedule name -> the id of its latest job, for ``overlap = "skip"``."""
        return self.prefix + "last_job"

    def history(self, schedule: str) -> str:
        """List: the schedule's latest runs, newest first (history.py)."""
        return self.history_base + schedule

    @property
    def history_base(self) -> str:
        """What a schedule's name follows in its history key."""
        return self.prefix + "history:"

    @property
    def history_inbox(self) -> str:
        """List: run history entries claimed but not yet filed under their
        schedules, one packed text per CLAIM call (history.py)."""
        return self.prefix + "history_inbox"

    @property
    def paused(self) -> str:
        """Hash: schedule name -> unix seconds it was paused (``btu pause``); kept
        across refreshes and restarts, shared by every daemon of the prefix."""
        return self.prefix + "paused"

    @property
    def health(self) -> str:
        """Hash: schedule name -> its health record as JSON (health_record.py)."""
        return self.prefix + "health"

    @property
    def owner(self) -> str:
        """The site whose daemons hold this prefix (prefix_guard.py)."""
        return self.prefix + "owner"


_DEFAULT = Keys()
SCHEDULE_SET = _DEFAULT.schedule_set
MEMBER_INDEX = _DEFAULT.member_index
LAST_ENQUEUED = _DEFAULT.last_enqueued
PLANNED_MARKER = _DEFAULT.planned_marker
RQ_QUEUES = "rq:queues"
JOB_PREFIX = "rq:job:"
QUEUE_PREFIX = "rq:queue:"
