-- The minimal claim+enqueue the ceiling cases time CLAIM against: no checks,
-- no member index, one job at a time (bench/burst.py).
--
-- KEYS[1]  the sorted set of planned members
-- KEYS[2]  the last-enqueued hash
-- KEYS[3]  rq:queues
-- KEYS[4 + 2j], KEYS[5 + 2j]  job j's hash and its queue
-- ARGV[1]  enqueued_at;  ARGV[2]  n, the number of jobs
-- then per job: member, schedule, job id (for the hash), job id (for the queue),
--   the number of fields, and that many field/value pairs
-- Reply: n
local zset, last, queues = KEYS[1], KEYS[2], KEYS[3]
local enqueued_at, n = ARGV[1], tonumber(ARGV[2])
local a = 3
for j = 0, n - 1 do
  local nfields = tonumber(ARGV[a + 4])
  redis.call('ZREM', zset, ARGV[a])
  redis.call('HSET', last, ARGV[a + 1], ARGV[a + 2])
  redis.call('HSET', KEYS[4 + 2 * j], 'enqueued_at', enqueued_at,
             unpack(ARGV, a + 5, a + 4 + 2 * nfields))
  redis.call('RPUSH', KEYS[5 + 2 * j], ARGV[a + 3])
  redis.call('SADD', queues, KEYS[5 + 2 * j])
  a = a + 5 + 2 * nfields
end
return n
