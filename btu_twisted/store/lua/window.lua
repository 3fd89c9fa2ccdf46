#!lua flags=no-writes
local zset, horizon, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {redis.call('ZCARD', zset)}
local beyond = redis.call('ZRANGEBYSCORE', zset, '(' .. horizon, '+inf',
                          'WITHSCORES', 'LIMIT', 0, 1)
out[2] = beyond[1] or ''
out[3] = beyond[2] or ''
local near = redis.call('ZRANGEBYSCORE', zset, '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, limit)
out[4] = #near > 0 and cjson.encode(near) or '[]'
return out
