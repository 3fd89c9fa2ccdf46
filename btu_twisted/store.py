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
what makes claiming exactly-once across daemons and crashes.  Each script starts
with a ``#!lua`` shebang (Redis 7) declaring what it does: those that may add
data are refused up front while Redis is out of memory (not stopped at their
first write, half-done), those that only delete may run then, and the read-only
one says so.  With a shebang every key a script touches must be in KEYS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from btu_twisted.redis_gateway import RedisCommands
from btu_twisted.resp import Encoded, encode, join

SCHEDULE_SET = "btu_scheduler:task_execution_times"
MEMBER_INDEX = "btu_scheduler:schedule_members"
LAST_ENQUEUED = "btu_scheduler:last_enqueued"
# Set by every full refresh; its absence means Redis lost our keys (restart
# without persistence, FLUSHDB, failover to an empty replica).
PLANNED_MARKER = "btu_scheduler:planned"
RQ_QUEUES = "rq:queues"
JOB_PREFIX = "rq:job:"
QUEUE_PREFIX = "rq:queue:"

# How close to now a last run must be to be kept although its schedule seems
# deleted (see FORGET_LAST_RUNS).
RECENT_SECS = 3600

# The member's name is everything before the last "|", so names containing "|"
# (they are just names) still round-trip.
_NAME_OF = r"^(.*)|[^|]*$"

PLAN = """#!lua
local zset, idx, last = KEYS[1], KEYS[2], KEYS[3]
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Checked before the first write, as in CLAIM.
for _, k in ipairs({{zset, 'zset'}, {idx, 'hash'}, {last, 'hash'}}) do
  local t = redis.call('TYPE', k[1])['ok']
  if t ~= 'none' and t ~= k[2] then
    return redis.error_reply('WRONGTYPE ' .. k[1] .. ' holds a ' .. t .. ', not a ' .. k[2])
  end
end
local rejected = {}
for i = 0, n - 1 do
  local name, when = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  -- An unreadable last run does not stop planning: the claim reports it.
  local done = tonumber(redis.call('HGET', last, name) or '-1') or -1
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
# or it was cancelled or replanned), 2 stale (that time was already enqueued),
# 3 blocked: a key it would write holds the wrong type (or its last run cannot
# be read), so the claim is left untouched, member kept, to be retried.  The
# reply is one string of those digits, one per job (txredisapi takes ~10 us of
# Python per reply element: 5 ms for 500 integers), then one reason per
# blocked claim, in order.
#
# Redis does not undo the writes of a script that fails part-way, so every key
# is checked before its first write: a string at rq:queue:X once cost each run
# on X its member and last run while nothing was queued.  A job key is checked
# by its own HSET, the first write of its claim (a job id is new, so a wrong
# type there is next to impossible, and a TYPE per job is a tenth of the cost).
# The shebang makes Redis refuse the whole script up front when it is out of
# memory, rather than fail at a write in the middle.
#
# Cost: the reads and the writes of the daemon's own keys are one call per
# batch (ZMSCORE, HMGET, ZREM, HDEL, HSET), and so are RPUSH and SADD per
# queue; per job there is only its HSET.  The claims are decided one after the
# other as if each ran alone (a name twice in a batch sees its first claim).
#
# KEYS: the sorted set, member index, last runs, rq:queues, then per claim its
# job key and queue key.  ARGV: enqueued_at, the number of claims, the number
# of field-name lists, each list (its length, then the names: every job of a
# builder has the same, so they are sent once, not 15 times per job), then
# per claim: member, schedule, time, job id (empty: no job), the number of its
# list of field names (0: none) and its values in that order.
CLAIM = """#!lua
local KEYS, ARGV, tonumber, unpack = KEYS, ARGV, tonumber, unpack
local call, pcall_ = redis.call, redis.pcall
local zset, idx, last, queues = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local enqueued_at = ARGV[1]
local njobs = tonumber(ARGV[2])
local function wrong(key, want)
  local t = call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return key .. ' holds a ' .. t .. ', not a ' .. want
  end
end
for _, k in ipairs({{zset, 'zset'}, {idx, 'hash'}, {last, 'hash'}}) do
  local bad = wrong(k[1], k[2])
  if bad then return redis.error_reply('WRONGTYPE ' .. bad) end
end
-- The field names of the jobs' hashes, once per call for all jobs with the
-- same names (a shape): {'enqueued_at', <time>, name1, <value>, name2, ...},
-- the values filled in job by job.
local shapes, counts, nshapes = {}, {[0] = 0}, tonumber(ARGV[3])
local a = 4
for s = 1, nshapes do
  local n, fields = tonumber(ARGV[a]), {'enqueued_at', enqueued_at}
  for i = 1, n do fields[2 * i + 1], fields[2 * i + 2] = ARGV[a + i], '' end
  shapes[s], counts[s] = fields, n
  a = a + 1 + n
end
local at, members, names, shape_of = {}, {}, {}, {}
for j = 1, njobs do
  local shape = tonumber(ARGV[a + 4])
  if not tonumber(ARGV[a + 2]) or not shape or not counts[shape] then
    return redis.error_reply('ERR claim ' .. j .. ': bad time or field names')
  end
  at[j], members[j], names[j], shape_of[j] = a, ARGV[a], ARGV[a + 1], shape
  a = a + 5 + counts[shape]
end
local CHUNK = 1000
-- One reply value per item (false when missing), the command sent in chunks.
local function read(cmd, key, items)
  if #items <= CHUNK then return call(cmd, key, unpack(items)) end
  local out, n = {}, 0
  for i = 1, #items, CHUNK do
    local part = call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
    for k = 1, #part do n = n + 1; out[n] = part[k] end
  end
  return out
end
local function write(cmd, key, items, n)
  for i = 1, n, CHUNK do
    call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, n)))
  end
end
local scores
local ok, got = pcall(read, 'ZMSCORE', zset, members)
if ok then
  scores = got
else  -- Redis before 6.2
  scores = {}
  for j = 1, njobs do scores[j] = call('ZSCORE', zset, members[j]) end
end
local lasts, owners = read('HMGET', last, names), read('HMGET', idx, names)
local done, owner = {}, {}
local queues_bad = wrong(queues, 'set')
local queue_bad, pushed, queue_order, nqueues = {}, {}, {}, 0
local removed, zrem, hdel, hset = {}, {}, {}, {}
local nzrem, nhdel, nhset = 0, 0, 0
local out, reasons, nreasons = {}, {}, 0
for j = 1, njobs do
  local b = at[j]
  local member, name = members[j], names[j]
  local d = done[name]
  if d == nil then
    d = lasts[j]
    done[name] = d
    owner[name] = owners[j]
  end
  local bad, code = nil, nil
  if not scores[j] or removed[member] then
    code = 0
  elseif d and not tonumber(d) then
    bad = last .. ' field ' .. name .. ' holds "' .. string.sub(d, 1, 40)
      .. '", not a unix time'
  else
    local when, job_id = ARGV[b + 2], ARGV[b + 3]
    local queue_key = KEYS[4 + 2 * j]
    if job_id ~= '' then
      local qb = queue_bad[queue_key]
      if qb == nil then
        qb = queues_bad or wrong(queue_key, 'list') or false
        queue_bad[queue_key] = qb
      end
      if qb then bad = qb end
    end
    if not bad and tonumber(when) <= tonumber(d or '-1') then
      code = 2
      if job_id ~= '' then bad = wrong(KEYS[3 + 2 * j], 'hash') end
    elseif not bad and job_id ~= '' then
      local shape = shape_of[j]
      local fields = shapes[shape] or {'enqueued_at', enqueued_at}
      for i = 1, counts[shape] do fields[2 * i + 2] = ARGV[b + 4 + i] end
      local set = pcall_('HSET', KEYS[3 + 2 * j], unpack(fields))
      if type(set) == 'table' and set.err then
        bad = wrong(KEYS[3 + 2 * j], 'hash')
        if not bad then return set end
      end
    end
    if not bad then
      removed[member] = true
      nzrem = nzrem + 1
      zrem[nzrem] = member
      if owner[name] == member then
        nhdel = nhdel + 1
        hdel[nhdel] = name
        owner[name] = false
      end
      if code == nil then
        code = 1
        done[name] = when
        hset[nhset + 1], hset[nhset + 2] = name, when
        nhset = nhset + 2
        if job_id ~= '' then
          local ids = pushed[queue_key]
          if not ids then
            ids = {}
            pushed[queue_key] = ids
            nqueues = nqueues + 1
            queue_order[nqueues] = queue_key
          end
          ids[#ids + 1] = job_id
        end
      end
    end
  end
  if bad then
    code = 3
    nreasons = nreasons + 1
    reasons[nreasons] = bad
  end
  out[j] = code
end
write('ZREM', zset, zrem, nzrem)
write('HDEL', idx, hdel, nhdel)
write('HSET', last, hset, nhset)
for q = 1, nqueues do
  local ids = pushed[queue_order[q]]
  write('RPUSH', queue_order[q], ids, #ids)
end
write('SADD', queues, queue_order, nqueues)
local reply = {table.concat(out)}
for r = 1, nreasons do reply[r + 1] = reasons[r] end
return reply
"""

# Drop members of schedules that are no longer enabled, members without a
# name, and stale duplicates (a Rust daemon added a new member after each cron
# edit and kept the old one).  Returns the names whose members it removed, so
# the caller can replan them if they were enabled a moment after its SQL read.
#
# ARGV: the enabled names.
PRUNE = """#!lua flags=allow-oom
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

# Forget the last runs of schedules that no longer exist: ARGV are candidates
# (found by an HSCAN, one page at a time, so no call walks the whole hash).
# Checked again here, atomically with any claim: a last run within RECENT_SECS
# of now is kept, as it may belong to a schedule created after the caller's
# SQL read, and it is what stops a slow planner bringing back a run just
# enqueued.  Returns how many were forgotten.
FORGET_LAST_RUNS = """#!lua flags=allow-oom
local last = KEYS[1]
local now = tonumber(redis.call('TIME')[1])
local forgotten = 0
for i = 1, #ARGV do
  local when = tonumber(redis.call('HGET', last, ARGV[i]) or '')
  if not (when and math.abs(when - now) <= RECENT) then
    forgotten = forgotten + redis.call('HDEL', last, ARGV[i])
  end
end
return forgotten
""".replace("RECENT", str(RECENT_SECS))

# Last-run fields looked at per HSCAN page.
SCAN_PAGE = 500

# Cancel: every member whose name is exactly ARGV[1]; never a prefix match
# (COMPAT.md 6.4: cancelling TS-1 also removed TS-10's runs).
CANCEL = """#!lua flags=allow-oom
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
# many schedules there are.  The near ones come as one JSON array (member,
# score, member, ...): parsed by txredisapi element by element, 10,000 of them
# took a quarter of a second of the timer's lookahead.
WINDOW = """#!lua flags=no-writes
local zset, horizon, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {redis.call('ZCARD', zset)}
local beyond = redis.call('ZRANGEBYSCORE', zset, '(' .. horizon, '+inf',
                          'WITHSCORES', 'LIMIT', 0, 1)
out[2] = beyond[1] or ''
out[3] = beyond[2] or ''
local near = redis.call('ZRANGEBYSCORE', zset, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, limit)
out[4] = #near > 0 and cjson.encode(near) or '[]'
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
    """One due member to claim, with its job's hash (None: claim without a job).

    ``wire``: its CLAIM keys and arguments framed ahead of time (:func:`framed`);
    a claim without is framed when it is sent.
    """

    member: str
    schedule: str
    when: int
    job_id: str = ""
    origin: str = ""
    fields: Mapping[str, bytes | str | int | float] | None = None
    wire: ClaimWire | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ClaimWire:
    """A claim's part of a CLAIM call: its two keys; member, schedule, time
    and job id; its job's field names (sent once per call for all jobs that
    have the same) and values."""

    keys: Encoded
    head: Encoded
    names: tuple[str, ...]
    values: Encoded


def framed(claim: Claim) -> Claim:
    """The claim with its keys and arguments framed for CLAIM, so that sending
    it at the due second costs no encoding.  The job's own ``enqueued_at``
    field, if its builder set one, gives way to the claim's."""
    fields = {k: v for k, v in (claim.fields or {}).items() if k != "enqueued_at"}
    wire = ClaimWire(
        keys=encode((JOB_PREFIX + claim.job_id, QUEUE_PREFIX + claim.origin)),
        head=encode((claim.member, claim.schedule, claim.when, claim.job_id)),
        names=tuple(fields),
        values=encode(fields.values()),
    )
    return replace(claim, wire=wire)


def claim_arguments(wires: Sequence[ClaimWire], enqueued_at: str) -> Encoded:
    """CLAIM's ARGV: the time, the count, each distinct list of field names
    (shape) once, then per claim its head, the number of its shape (0: none)
    and its values."""
    shapes: dict[tuple[str, ...], int] = {}
    for w in wires:
        if w.names and w.names not in shapes:
            shapes[w.names] = len(shapes) + 1
    numbers = [encode((n,)) for n in range(len(shapes) + 1)]
    pieces = [encode((enqueued_at, len(wires), len(shapes)))]
    for names in shapes:
        pieces.append(encode((len(names), *names)))
    for w in wires:
        pieces += (w.head, numbers[shapes.get(w.names, 0)], w.values)
    return join(pieces)


_CLAIM_KEYS = encode((SCHEDULE_SET, MEMBER_INDEX, LAST_ENQUEUED, RQ_QUEUES))


CLAIMED, LOST, STALE, BLOCKED = 1, 0, 2, 3
#: Seconds before a blocked claim is tried again: it waits for an operator to
#: fix a key, so there is no point in trying every second.
BLOCKED_RETRY_SECS = 10.0


class Blocked(int):
    """The BLOCKED result code, carrying why (which key holds what).

    An int, so that callers comparing result codes need no second channel for
    the one code that comes with a reason.
    """

    reason: str

    def __new__(cls, reason: str) -> Blocked:
        code = super().__new__(cls, BLOCKED)
        code.reason = reason
        return code


def _without_shebang(script: str) -> str:
    """The script for Redis before 7.0: its "#!lua" line made a blank one, so
    line numbers in error messages stay the same."""
    return "\n" + script.partition("\n")[2] if script.startswith("#!") else script


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


class BlockedClaims:
    """Logs blocked claims: one error line when a schedule becomes blocked (or
    its reason changes), not one per retry, and one line when it goes through
    again.  Shared with the tests' fake store so both log alike."""

    log = Logger()

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}  # schedule -> reason logged

    def record(self, claims: Sequence[Claim], results: Sequence[int]) -> None:
        for claim, result in zip(claims, results):
            if isinstance(result, Blocked):
                if self.reasons.get(claim.schedule) == result.reason:
                    continue
                self.reasons[claim.schedule] = result.reason
                self.log.error(
                    "run of {schedule} at {when} not enqueued, kept and retried every "
                    "{retry:.0f} s until fixed: {reason}",
                    schedule=claim.schedule, reason=result.reason, retry=BLOCKED_RETRY_SECS,
                    when=datetime.fromtimestamp(claim.when, timezone.utc).isoformat(),
                )
            elif self.reasons.pop(claim.schedule, None) is not None:
                self.log.info("claims of {schedule} go through again", schedule=claim.schedule)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop schedules not in ``keep`` (deleted while blocked)."""
        wanted = set(keep)
        for name in [n for n in self.reasons if n not in wanted]:
            del self.reasons[name]


class ScheduleStore:
    """The scheduler's Redis operations, each one round trip."""

    log = Logger()

    def __init__(self, redis: RedisCommands) -> None:
        self._redis = redis
        self.blocked = BlockedClaims()
        # Redis before 7.0 reads the "#!lua" line as Lua and fails to compile
        # it; such a server gets the scripts without it (and without flags).
        self._shebangs = True
        # The gateway's up/down state, when it has one (fakes may not).
        self.health = getattr(redis, "health", None)

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        return await self._scripted(script, lambda text: self._redis.eval(text, keys, args))

    async def _eval_encoded(self, script: str, keys: Encoded, args: Encoded) -> Any:
        """:meth:`_eval` of arguments framed ahead of time."""
        return await self._scripted(
            script, lambda text: self._redis.eval_encoded(text, keys, args))

    async def _scripted(self, script: str, send: Callable[[str], Deferred[Any]]) -> Any:
        """``send(script)``, without its shebang on Redis before 7.0."""
        if not self._shebangs:
            return await send(_without_shebang(script))
        try:
            return await send(script)
        except Exception as error:
            text = str(error)
            if "compiling script" not in text or "'#'" not in text:
                raise
        # Nothing ran: the script did not compile.
        self._shebangs = False
        self.log.warn(
            "Redis is older than 7.0: its scripts run without flags, so one that"
            " runs out of memory may stop half-way; Redis 7 refuses it up front"
        )
        return await send(_without_shebang(script))

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
        reply = await self._eval(PLAN, [SCHEDULE_SET, MEMBER_INDEX, LAST_ENQUEUED], args)
        pairs = list(reply or [])
        return {pairs[i]: int(float(pairs[i + 1])) for i in range(0, len(pairs), 2)}

    async def claim(self, claims: Sequence[Claim], enqueued_at: str) -> list[int]:
        """Claim due members and enqueue their jobs atomically; one result each.

        A claim whose keys hold the wrong type comes back as a :class:`Blocked`
        (== BLOCKED) with its reason, untouched; the others go ahead.
        """
        if not claims:
            return []
        wires: list[ClaimWire] = [c.wire or framed(c).wire for c in claims]  # type: ignore[misc]
        keys = join([_CLAIM_KEYS, *(w.keys for w in wires)])
        reply = list(await self._eval_encoded(CLAIM, keys, claim_arguments(wires, enqueued_at)))
        codes = _text(reply[0])
        if len(codes) != len(claims):
            raise ValueError(f"CLAIM answered {len(codes)} results for {len(claims)} claims")
        reasons = iter(reply[1:])
        results = [
            Blocked(str(next(reasons, "blocked"))) if code == "3" else int(code)
            for code in codes
        ]
        self.blocked.record(claims, results)
        return results

    async def prune(
        self, enabled: Iterable[str], existing: Iterable[str] | None = None
    ) -> list[str]:
        """Remove the members of schedules not in ``enabled`` (and stale or
        unreadable ones); returns the names whose members went.

        With ``existing`` (the names of every schedule there is, enabled or
        not), also forget the last runs of schedules not among them, so that
        deleted schedules leave nothing behind; a disabled schedule keeps its
        last run, which still guards its runs if it is enabled again.
        """
        keep = list(enabled)
        reply = await self._eval(PRUNE, [SCHEDULE_SET, MEMBER_INDEX], keep)
        self.blocked.forget(keep)
        if existing is not None:
            await self._forget_last_runs({*keep, *existing})
        return sorted({name for name in reply or [] if name})

    async def _forget_last_runs(self, existing: set[str]) -> int:
        """Drop the last runs of names not in ``existing``, one HSCAN page per call."""
        forgotten = 0
        cursor = "0"
        while True:
            reply = await self._redis.command(
                "HSCAN", LAST_ENQUEUED, cursor, "COUNT", SCAN_PAGE
            )
            cursor, flat = _text(reply[0]), [_text(v) for v in reply[1]]
            gone = [name for name in flat[0::2] if name not in existing]
            if gone:
                forgotten += int(await self._eval(FORGET_LAST_RUNS, [LAST_ENQUEUED], gone))
            if cursor == "0":
                return forgotten

    async def cancel(self, schedule: str) -> bool:
        removed = await self._eval(CANCEL, [SCHEDULE_SET, MEMBER_INDEX], [schedule])
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
        reply = list(await self._eval(WINDOW, [SCHEDULE_SET], [f"{horizon:.3f}", limit]))
        beyond = (reply[1], int(float(reply[2]))) if reply[1] else None
        flat = json.loads(reply[3])
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


def _text(value: bytes | str | int) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
