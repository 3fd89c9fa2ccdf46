#!lua
--[[
  Pause a schedule: no run of it is planned or claimed until it is resumed
  (ScheduleStore.pause, the ``pause_task_schedule`` request).

  The pause is a field of the paused hash, under the daemon's key prefix, so
  it outlives full refreshes, reloads, restarts, and holds for every daemon
  of the prefix: plan.lua reads it before it gives the schedule a member.
  The member the schedule owns goes now (a claim after this call finds it
  gone), and a "paused" entry joins the history inbox, behind the runs
  claimed before it, so the history keeps their order.

  Input:
    KEYS[1] the sorted set (zset)
    KEYS[2] the member index (hash)
    KEYS[3] the paused schedules: name -> unix seconds paused (hash)
    KEYS[4] the history inbox (list)

    ARGV[1] the schedule's name
    ARGV[2] now, unix seconds
    ARGV[3] now, rq's ISO time (the history entry's time)
    ARGV[4] history entries kept per schedule (0: none)

  Output:
    1 when paused now, 0 when it already was (nothing changes)
]]
local zset, idx, paused, inbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local name, now, at, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HSETNX', paused, name, now) == 0 then return 0 end
local owned = redis.call('HGET', idx, name)
if owned then
  redis.call('HDEL', idx, name)
  redis.call('ZREM', zset, owned)
end
-- pcall: an inbox of the wrong type loses the entry, not the pause.
if keep > 0 then redis.pcall('RPUSH', inbox, cmsgpack.pack(at, {name, now, '', 'paused'})) end
return 1
