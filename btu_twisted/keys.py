"""The Redis key names the daemon and ``btu`` share, importable without Twisted or a Redis client.

They live apart from :mod:`btu_twisted.store` (which re-exports them) so that
a ``btu`` command that only names a key does not pay for loading txredisapi
and Twisted, which is most of its start-up time.
"""

from __future__ import annotations

__all__ = [
    "JOB_PREFIX",
    "LAST_ENQUEUED",
    "MEMBER_INDEX",
    "PLANNED_MARKER",
    "QUEUE_PREFIX",
    "RQ_QUEUES",
    "SCHEDULE_SET",
]

SCHEDULE_SET = "btu_scheduler:task_execution_times"
MEMBER_INDEX = "btu_scheduler:schedule_members"
LAST_ENQUEUED = "btu_scheduler:last_enqueued"
# Set by every full refresh; its absence means Redis lost our keys (restart
# without persistence, FLUSHDB, failover to an empty replica).
PLANNED_MARKER = "btu_scheduler:planned"
RQ_QUEUES = "rq:queues"
JOB_PREFIX = "rq:job:"
QUEUE_PREFIX = "rq:queue:"
