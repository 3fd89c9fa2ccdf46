#!lua flags=no-writes
local zset, limit = KEYS[1], tonumber(ARGV[1])
local soonest = redis.call('ZRANGE', zset, 0, limit - 1, 'WITHSCORES')
return {redis.call('ZCARD', zset), #soonest > 0 and cjson.encode(soonest) or '[]'}
