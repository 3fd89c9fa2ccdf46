#!lua flags=allow-oom
local zset, idx = KEYS[1], KEYS[2]
local page = redis.call('HSCAN', idx, ARGV[1], 'COUNT', ARGV[2])
local live, dangling = {}, {}
local flat = page[2]
for i = 1, #flat, 2 do
  if redis.call('ZSCORE', zset, flat[i + 1]) then
    live[#live + 1] = flat[i]
    live[#live + 1] = flat[i + 1]
  else
    redis.call('HDEL', idx, flat[i])
    dangling[#dangling + 1] = flat[i]
  end
end
-- cjson writes an empty table as {}
return {page[1], #live > 0 and cjson.encode(live) or '[]', dangling}
