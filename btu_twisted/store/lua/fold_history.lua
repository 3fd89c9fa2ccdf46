#!lua
local inbox, base = KEYS[1], ARGV[1]
local keep, most = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('TYPE', inbox)['ok'] ~= 'list' then return 0 end
if keep <= 0 then
  redis.call('DEL', inbox)
  return 0
end
local function file(name, entry)
  local key = base .. name
  local n = redis.pcall('LPUSH', key, entry)
  if type(n) == 'number' and n > keep then
    redis.pcall('LTRIM', key, 0, keep - 1)
  end
end
for _ = 1, most do
  local packed = redis.call('LPOP', inbox)
  if not packed then return 0 end
  local ok, at, entries = pcall(cmsgpack.unpack, packed)
  if ok and type(at) == 'string' and type(entries) == 'table' then
    for i = 1, #entries - 3, 4 do
      file(entries[i], entries[i + 1] .. '	' .. at .. '	' .. entries[i + 2] .. '	'
        .. entries[i + 3])
    end
  elseif ok and type(at) == 'table' then
    for i = 1, #at - 1, 2 do file(at[i], at[i + 1]) end
  end
end
return redis.call('LLEN', inbox)
