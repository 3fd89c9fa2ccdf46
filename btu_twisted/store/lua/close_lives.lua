#!lua flags=allow-oom
--[[
  End the lives of schedules found deleted (ScheduleStore.close_lives): their
  run history, their pause and their last job go, so that a new schedule
  created under the same name (Frappe reuses a deleted TS-000123's name)
  starts with an empty history, not paused, and is not held back by the old
  one's job.  The last run stays: forget_last_runs.lua drops it once it is
  old, and until then it still keeps a run from being enqueued twice.

  Input:
    KEYS[1]      the paused schedules (hash)
    KEYS[2]      last jobs (hash)
    KEYS[2 + i]  the run history list of ARGV[i]

    ARGV[i]      schedule names

  Output:
    how many of them had a history or a pause
]]
local paused, last_job = KEYS[1], KEYS[2]
local closed = 0
for i = 1, #ARGV do
  local had = redis.call('DEL', KEYS[2 + i]) + redis.call('HDEL', paused, ARGV[i])
  redis.call('HDEL', last_job, ARGV[i])
  if had > 0 then closed = closed + 1 end
end
return closed
