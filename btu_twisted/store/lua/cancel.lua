#!lua flags=allow-oom
--[[
  Remove the member a schedule owns (ScheduleStore.cancel).

  Found through the index (O(log N) however many members there are), so
  never by a prefix match (COMPAT.md 6.4: cancelling TS-1 also removed TS-10's
  runs).  A member the index does not know (a Rust daemon's stale duplicate)
  is left to the full refresh's prune, which runs at every start; were one
  due before that, the timer reads the row first and drops runs of a
  disabled or deleted schedule.

  Input:
    KEYS[1] the sorted set (zset)
    KEYS[2] the member index (hash)

    ARGV[1] the schedule's name

  Output:
    1 if a member was removed, else 0
]]
local zset, idx, name = KEYS[1], KEYS[2], ARGV[1]
local owned = redis.call('HGET', idx, name)
if not owned then return 0 end
redis.call('HDEL', idx, name)
return redis.call('ZREM', zset, owned)
