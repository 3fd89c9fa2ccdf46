#!lua flags=no-writes
--[[
  One HSCAN page of the last runs' names (ScheduleStore.prune, to find the
  candidates for forget_last_runs.lua).

  Input:
    KEYS[1] last runs (hash)

    ARGV[1] the HSCAN cursor ("0" to start)
    ARGV[2] the HSCAN COUNT

  Output:
    {next cursor, names}: names is one JSON text (a plain HSCAN reply is two
    strings per field for txredisapi to take apart, one reactor turn each:
    seconds at 100,000 schedules)
]]
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local names = {}
for i = 1, #page[2], 2 do names[#names + 1] = page[2][i] end
return {page[1], #names > 0 and cjson.encode(names) or '[]'}
