#!lua flags=allow-oom
local zset, idx, name = KEYS[1], KEYS[2], ARGV[1]
local owned = redis.call('HGET', idx, name)
if not owned then return 0 end
redis.call('HDEL', idx, name)
return redis.call('ZREM', zset, owned)
