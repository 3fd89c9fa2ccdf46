#!lua flags=allow-oom
--[[
  One HSCAN page of the member index: drop entries whose member is gone from
  the sorted set (dangling: claimed and not replanned yet, or nothing will
  replan it), and return the live ones (ScheduleStore.prune, first pass).

  Pruning goes one page per call (no call walks the whole set or index, and
  the caller's list of enabled names never travels to Redis), so its
  decisions are atomic with any claim or plan.  The caller decides which
  live schedules are no longer enabled and sends them to unplan_if_owned.lua.
  Every removed name goes back to the caller, which replans it in case it was
  enabled (and planned) a moment after its SQL read.

  Input:
    KEYS[1] the sorted set (zset)
    KEYS[2] the member index (hash)

    ARGV[1] the HSCAN cursor ("0" to start)
    ARGV[2] the HSCAN COUNT

  Output:
    {next cursor, live, dropped}: live is one JSON text of name, member,
    name, member, ... (txredisapi spends a reactor turn, ~12 us, on each
    string of a reply: 2.4 s of CPU for 100,000 pairs); dropped is the list
    of names whose entries went
]]
local zset, idx = KEYS[1], KEYS[2]
local page = redis.call('HSCAN', idx, ARGV[1], 'COUNT', ARGV[2])
local live, dangling = {}, {}
local flat = page[2]
for i = 1, #flat, 2 do
  if redis.call('ZSCORE', zset, flat[i + 1]) then
    live[#live + 1] = flat[i]
    live[#live + 1] = flat[i + 1]
  else
    redis.call('HDEL', idx, flat[i])
    dangling[#dangling + 1] = flat[i]
  end
end
-- cjson writes an empty table as {}
return {page[1], #live > 0 and cjson.encode(live) or '[]', dangling}
