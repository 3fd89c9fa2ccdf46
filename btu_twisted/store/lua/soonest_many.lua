#!lua flags=no-writes
--[[
  The earliest score of several sorted sets, in one round trip: a bench's
  daemon asks it for every site's schedule set in place of each site's timer
  reading its own window (daemon/due_watch.py).

  Input:
    KEYS[i] sorted set i (a site's zset)

  Output:
    for each set, in order: its lowest score, as Redis writes it ('' when
    the set is empty or missing)
]]
local out = {}
for i, key in ipairs(KEYS) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  out[i] = first[2] or ''
end
return out
