#!lua flags=allow-oom
local last, last_job = KEYS[1], KEYS[2]
local now = tonumber(redis.call('TIME')[1])
local forgotten = 0
for i = 1, #ARGV do
  local when = tonumber(redis.call('HGET', last, ARGV[i]) or '')
  if not (when and math.abs(when - now) <= 3600) then
    forgotten = forgotten + redis.call('HDEL', last, ARGV[i])
    redis.call('HDEL', last_job, ARGV[i])
    redis.call('DEL', KEYS[2 + i])
  end
end
return forgotten
