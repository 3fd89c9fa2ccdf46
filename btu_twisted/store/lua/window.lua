#!lua flags=no-writes
--[[
  What the timer needs at each wake-up, in one round trip (ScheduleStore.window).

  Reading only the members due by the horizon keeps a wake-up cheap however
  many schedules there are.

  Input:
    KEYS[1] the sorted set (zset)

    ARGV[1] the horizon, unix seconds (inclusive)
    ARGV[2] the most members due by the horizon to return

  Output:
    {count, beyond member, beyond score, near}: how many members there are;
    the first member after the horizon and its score ('' and '' for none);
    near, one JSON text of member, score, ... due by the horizon, earliest
    first (parsed by txredisapi element by element, 10,000 of them took a
    quarter of a second of the timer's lookahead)
]]
local zset, horizon, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {redis.call('ZCARD', zset)}
local beyond = redis.call('ZRANGEBYSCORE', zset, '(' .. horizon, '+inf',
                          'WITHSCORES', 'LIMIT', 0, 1)
out[2] = beyond[1] or ''
out[3] = beyond[2] or ''
local near = redis.call('ZRANGEBYSCORE', zset, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, limit)
out[4] = #near > 0 and cjson.encode(near) or '[]'
return out
