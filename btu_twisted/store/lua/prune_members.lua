#!lua flags=allow-oom
--[[
  One ZSCAN page of the sorted set: drop members without a schedule name and
  members their schedule does not own (stale duplicates: a Rust daemon added
  a new member after each cron edit and kept the old one)
  (ScheduleStore.prune, second pass, after prune_index.lua).

  A member's name is everything before its last "|", so names containing "|"
  still round-trip (the pattern below; member_for and split_member in Python
  agree with it).

  Input:
    KEYS[1] the sorted set (zset)
    KEYS[2] the member index (hash)

    ARGV[1] the ZSCAN cursor ("0" to start)
    ARGV[2] the ZSCAN COUNT

  Output:
    {next cursor, names}: names whose members were removed
]]
local zset, idx = KEYS[1], KEYS[2]
local page = redis.call('ZSCAN', zset, ARGV[1], 'COUNT', ARGV[2])
local removed = {}
local flat = page[2]
for i = 1, #flat, 2 do
  local m = flat[i]
  local name = string.match(m, '^(.*)|[^|]*$')
  if not name or redis.call('HGET', idx, name) ~= m then
    redis.call('ZREM', zset, m)
    if name then removed[#removed + 1] = name end
  end
end
return {page[1], removed}
