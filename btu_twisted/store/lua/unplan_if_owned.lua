#!lua flags=allow-oom
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
