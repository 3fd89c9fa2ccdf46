#!lua flags=no-writes
--[[
  The soonest members and how many there are, for the status page
  (ops/status_page.py).

  Input:
    KEYS[1] the sorted set (zset)

    ARGV[1] how many members to return

  Output:
    {count, soonest}: soonest is one JSON text of member, score, ... (parsed
    by txredisapi element by element, a thousand members would be two
    thousand reactor-side steps)
]]
local zset, limit = KEYS[1], tonumber(ARGV[1])
local soonest = redis.call('ZRANGE', zset, 0, limit - 1, 'WITHSCORES')
return {redis.call('ZCARD', zset), #soonest > 0 and cjson.encode(soonest) or '[]'}
