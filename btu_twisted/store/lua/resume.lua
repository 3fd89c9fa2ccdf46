#!lua
--[[
  Resume a paused schedule (ScheduleStore.resume, the ``resume_task_schedule``
  request).  The caller then plans it from now: the runs missed while it was
  paused are not fired.

  Input:
    KEYS[1] the paused schedules (hash)
    KEYS[2] the history inbox (list)

    ARGV[1] the schedule's name
    ARGV[2] now, unix seconds
    ARGV[3] now, rq's ISO time (the history entry's time)
    ARGV[4] history entries kept per schedule (0: none)

  Output:
    1 when resumed now, 0 when it was not paused (nothing changes)
]]
local paused, inbox = KEYS[1], KEYS[2]
local name, now, at, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HDEL', paused, name) == 0 then return 0 end
if keep > 0 then redis.pcall('RPUSH', inbox, cmsgpack.pack(at, {name, now, '', 'resumed'})) end
return 1
