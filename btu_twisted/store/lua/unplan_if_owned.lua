#!lua flags=allow-oom
--[[
  Remove the members of schedules that are no longer enabled, each only if
  it still owns the member the caller saw: a plan since then means the
  planner saw it enabled (ScheduleStore.prune, after prune_index.lua).

  Input:
    KEYS[1] the sorted set (zset)
    KEYS[2] the member index (hash)

    ARGV    name, member, name, member, ...

  Output:
    the names whose members went
]]
local zset, idx = KEYS[1], KEYS[2]
local removed = {}
for i = 1, #ARGV, 2 do
  if redis.call('HGET', idx, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', zset, ARGV[i + 1])
    redis.call('HDEL', idx, ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
