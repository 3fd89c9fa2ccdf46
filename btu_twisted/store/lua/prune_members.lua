#!lua flags=allow-oom
local zset, idx = KEYS[1], KEYS[2]
local page = redis.call('ZSCAN', zset, ARGV[1], 'COUNT', ARGV[2])
local removed = {}
local flat = page[2]
for i = 1, #flat, 2 do
  local m = flat[i]
  local name = string.match(m, '^(.*)|[^|]*$')
  if not name or redis.call('HGET', idx, name) ~= m then
    redis.call('ZREM', zset, m)
    if name then removed[#removed + 1] = name end
  end
end
return {page[1], removed}
