#!lua flags=no-writes
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local names = {}
for i = 1, #page[2], 2 do names[#names + 1] = page[2][i] end
return {page[1], #names > 0 and cjson.encode(names) or '[]'}
