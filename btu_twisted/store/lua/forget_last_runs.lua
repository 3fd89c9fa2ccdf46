#!lua flags=allow-oom
--[[
  Forget the last runs of schedules that no longer exist, with their last job
  and run history (ScheduleStore.prune with ``existing``).

  ARGV are candidates, found by last_run_names.lua one HSCAN page at a time
  (no call walks the whole hash), checked again here, atomically with any
  claim: a last run within 3600 s (RECENT_SECS in schedule_store.py; a test
  checks they agree) of Redis's clock is kept, as it may belong to a schedule
  created after the caller's SQL read, and it is what stops a slow planner
  bringing back a run just enqueued.

  Input:
    KEYS[1]      last runs (hash)
    KEYS[2]      last jobs (hash)
    KEYS[2 + i]  the run history list of ARGV[i]

    ARGV[i]      schedule names

  Output:
    how many last runs were forgotten
]]
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
