#!lua flags=no-writes
--[[
  Which schedules are paused, and since when (ScheduleStore.paused: the
  status page, ``btu health``).  One HSCAN page: a handful of paused
  schedules is the expected case, and however many there are, no call walks
  them all.

  Input:
    KEYS[1] the paused schedules (hash)

    ARGV[1] about how many to return (HSCAN COUNT)

  Output:
    {count, paused}: paused is one JSON text of name, unix seconds, ...
]]
local paused = KEYS[1]
local page = redis.call('HSCAN', paused, 0, 'COUNT', ARGV[1])
return {redis.call('HLEN', paused), #page[2] > 0 and cjson.encode(page[2]) or '[]'}
