"""Redis keys of the scheduler and the Lua scripts that change them atomically.

Contract keys (DESIGN.md): the sorted set ``btu_scheduler:task_execution_times``
with members ``"<schedule>|<unix>"`` scored by the same unix seconds, and RQ's
own ``rq:job:*``, ``rq:queue:*`` and ``rq:queues``.

Our extensions, both hashes keyed by schedule name:

* ``btu_scheduler:schedule_members`` -> the one member a schedule owns, so that
  replanning replaces it without scanning the set;
* ``btu_scheduler:last_enqueued`` -> the latest scheduled time already enqueued
  (or deliberately skipped), so no planner, however slow or however many
  daemons there are, can bring back a run that already happened.

Every change that must not be seen half-done is a single script call, which is
what makes claiming exactly-once across daemons and crashes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from btu_twisted.redis_gateway import RedisCommands

SCHEDULE_SET = "btu_scheduler:task_execution_times"
MEMBER_INDEX = "btu_scheduler:schedule_members"
LAST_ENQUEUED = "btu_scheduler:last_enqueued"
# Set by every full refresh; its absence means Redis lost our keys (restart
# without persistence, FLUSHDB, failover to an empty replica).
PLANNED_MARKER = "btu_scheduler:planned"
RQ_QUEUES = "rq:queues"
JOB_PREFIX = "rq:job:"
QUEUE_PREFIX = "rq:queue:"

# The member's name is everything before the last "|", so names containing "|"
# (they are just names) still round-trip.
_NAME_OF = r"^(.*)|[^|]*$"

PLAN = """
local zset, idx, last = KEYS[1], KEYS[2], KEYS[3]
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local rejected = {}
for i = 0, n - 1 do
  local name, when = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local done = tonumber(redis.call('HGET', last, name) or '-1')
  if tonumber(when) <= done then
    rejected[#rejected + 1] = name
    rejected[#rejected + 1] = tostring(done)
  else
    local member = name .. '|' .. when
    local old = redis.call('HGET', idx, name)
    local old_score = old and old ~= member and redis.call('ZSCORE', zset, old)
    -- A member already due belongs to the timer, which may be claiming it
    -- right now; replacing it would lose that run.  The timer replans the
    -- schedule after its claim.
    if not (old_score and tonumber(old_score) <= now) then
      if old and old ~= member then redis.call('ZREM', zset, old) end
      redis.call('ZADD', zset, when, member)
      redis.call('HSET', idx, name, member)
    end
  end
end
for i = 3 + 2 * n, #ARGV do
  local old = redis.call('HGET', idx, ARGV[i])
  if old then
    redis.call('ZREM', zset, old)
    redis.call('HDEL', idx, ARGV[i])
  end
end
return rejected
"""

# Claim a due member and enqueue its job in one step.  An empty job id claims
# without enqueueing: a run skipped on purpose (misfire grace, unbuildable task).
# Results per job: 1 enqueued/skipped by us, 0 member gone (another daemon won,
# or it was cancelled or replanned), 2 stale (that time was already enqueued).
CLAIM = """
local zset, idx, last, queues = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local enqueued_at = ARGV[1]
local njobs = tonumber(ARGV[2])
local a = 3
local out = {}
for j = 0, njobs - 1 do
  local member, name, when, job_id = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local nfields = tonumber(ARGV[a + 4])
  local first = a + 5
  a = first + 2 * nfields
  if redis.call('ZREM', zset, member) == 0 then
    out[j + 1] = 0
  else
    if redis.call('HGET', idx, name) == member then redis.call('HDEL', idx, name) end
    local done = tonumber(redis.call('HGET', last, name) or '-1')
    if tonumber(when) <= done then
      out[j + 1] = 2
    else
      redis.call('HSET', last, name, when)
      if job_id ~= '' then
        local job_key, queue_key = KEYS[5 + 2 * j], KEYS[6 + 2 * j]
        local fields = {}
        for i = first, a - 1 do fields[#fields + 1] = ARGV[i] end
        fields[#fields + 1] = 'enqueued_at'
        fields[#fields + 1] = enqueued_at
        redis.call('HSET', job_key, unpack(fields))
        redis.call('RPUSH', queue_key, job_id)
        redis.call('SADD', queues, queue_key)
      end
      out[j + 1] = 1
    end
  end
end
return out
"""

# Drop members of schedules that are no longer enabled, members without a
# name, and stale duplicates (a Rust daemon added a new member after each cron
# edit and kept the old one).  Returns the names whose members it removed, so
# the caller can replan them if they were enabled a moment after its SQL read.
PRUNE = """
local zset, idx = KEYS[1], KEYS[2]
local keep = {}
for i = 1, #ARGV do keep[ARGV[i]] = true end
local removed = {}
for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
  local name = string.match(m, '%s')
  local owned = name and redis.call('HGET', idx, name)
  if not name or not keep[name] or owned ~= m then
    redis.call('ZREM', zset, m)
    if name and owned == m then redis.call('HDEL', idx, name) end
    if name then removed[#removed + 1] = name end
  end
end
for _, name in ipairs(redis.call('HKEYS', idx)) do
  if not keep[name] then redis.call('HDEL', idx, name) end
end
return removed
""".replace("%s", _NAME_OF)

# Cancel: every member whose name is exactly ARGV[1]; never a prefix match
# (COMPAT.md 6.4: cancelling TS-1 also removed TS-10's runs).
CANCEL = """
local zset, idx, name = KEYS[1], KEYS[2], ARGV[1]
local removed = 0
for _, m in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
  if string.match(m, '%s') == name then
    removed = removed + redis.call('ZREM', zset, m)
  end
end
redis.call('HDEL', idx, name)
return removed
""".replace("%s", _NAME_OF)


# What the timer needs at each wake-up, in one round trip: how many members
# there are, the members due by the horizon, and the first one after it (when
# to wake next).  Reading only the near ones keeps a wake-up cheap however
# many schedules there are.
WINDOW = """
local zset, horizon, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {redis.call('ZCARD', zset)}
local beyond = redis.call('ZRANGEBYSCORE', zset, '(' .. horizon, '+inf',
                          'WITHSCORES', 'LIMIT', 0, 1)
out[2] = beyond[1] or ''
out[3] = beyond[2] or ''
local near = redis.call('ZRANGEBYSCORE', zset, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #near do out[#out + 1] = near[i] end
return out
"""


@dataclass(frozen=True)
class Window:
    """The sorted set as the timer sees it at one wake-up."""

    count: int
    near: list[tuple[str, int]]
    beyond: tuple[str, int] | None


@dataclass(frozen=True)
class Claim:
    """One due member to claim, with its job's hash (None: claim without a job)."""

    member: str
    schedule: str
    when: int
    job_id: str = ""
    origin: str = ""
    fields: Mapping[str, bytes | str | int | float] | None = None


CLAIMED, LOST, STALE = 1, 0, 2


def member_for(schedule: str, when: int) -> str:
    return f"{schedule}|{when}"


def split_member(member: str) -> tuple[str, int] | None:
    """(schedule, unix) of a member, or None for a member we cannot read."""
    name, bar, when = member.rpartition("|")
    if not bar or not name:
        return None
    try:
        return name, int(when)
    except ValueError:
        return None


class ScheduleStore:
    """The scheduler's Redis operations, each one round trip."""

    def __init__(self, redis: RedisCommands) -> None:
        self._redis = redis
        # The gateway's up/down state, when it has one (fakes may not).
        self.health = getattr(redis, "health", None)

    async def plan(
        self, now: float, plans: Mapping[str, int], unplans: Iterable[str] = ()
    ) -> dict[str, int]:
        """Give each schedule in ``plans`` exactly that one member (unless its
        current member is already due at ``now``); remove the members of
        ``unplans``.  Returns the schedules whose planned time was not after
        their last enqueued run, with that run's time."""
        args: list[object] = [int(now), len(plans)]
        for name, when in plans.items():
            args += [name, int(when)]
        args += list(unplans)
        if len(args) == 2:
            return {}
        reply = await self._redis.eval(PLAN, [SCHEDULE_SET, MEMBER_INDEX, LAST_ENQUEUED], args)
        pairs = list(reply or [])
        return {pairs[i]: int(float(pairs[i + 1])) for i in range(0, len(pairs), 2)}

    async def claim(self, claims: Sequence[Claim], enqueued_at: str) -> list[int]:
        """Claim due members and enqueue their jobs atomically; one result each."""
        if not claims:
            return []
        keys = [SCHEDULE_SET, MEMBER_INDEX, LAST_ENQUEUED, RQ_QUEUES]
        args: list[object] = [enqueued_at, len(claims)]
        for c in claims:
            fields = c.fields or {}
            keys += [JOB_PREFIX + c.job_id, QUEUE_PREFIX + c.origin]
            args += [c.member, c.schedule, c.when, c.job_id, len(fields)]
            for key, value in fields.items():
                args += [key, value]
        reply = await self._redis.eval(CLAIM, keys, args)
        return [int(r) for r in reply]

    async def prune(self, enabled: Iterable[str]) -> list[str]:
        reply = await self._redis.eval(PRUNE, [SCHEDULE_SET, MEMBER_INDEX], list(enabled))
        return sorted({name for name in reply or [] if name})

    async def cancel(self, schedule: str) -> bool:
        removed = await self._redis.eval(CANCEL, [SCHEDULE_SET, MEMBER_INDEX], [schedule])
        return int(removed) > 0

    async def earliest(self, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` earliest members with their scores."""
        reply = await self._redis.command(
            "ZRANGE", SCHEDULE_SET, 0, limit - 1, "WITHSCORES"
        )
        flat = list(reply or [])
        return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def discard(self, members: Sequence[str]) -> None:
        """Remove members that no schedule owns (unreadable, no ``|``)."""
        if members:
            await self._redis.command("ZREM", SCHEDULE_SET, *members)

    async def window(self, horizon: float, limit: int) -> Window:
        """Members due by ``horizon`` (at most ``limit``), and the next one after."""
        reply = list(await self._redis.eval(WINDOW, [SCHEDULE_SET], [f"{horizon:.3f}", limit]))
        beyond = (reply[1], int(float(reply[2]))) if reply[1] else None
        flat = reply[3:]
        near = [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return Window(int(reply[0]), near, beyond)

    async def count(self) -> int:
        return int(await self._redis.command("ZCARD", SCHEDULE_SET))

    async def mark_planned(self) -> None:
        """Note that a full refresh is (re)planning everything."""
        await self._redis.command("SET", PLANNED_MARKER, "1")

    async def keys_present(self) -> bool:
        """False when the marker a full refresh sets is gone: our keys were lost."""
        return bool(int(await self._redis.command("EXISTS", PLANNED_MARKER)))
