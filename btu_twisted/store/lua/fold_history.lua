#!lua
--[[
  File the history inbox's entries under their schedules (history.py).

  Oldest text first, each text's entries in claim order, so every list stays
  newest first.  A text written by claim.lua is cmsgpack of (decided_at, {name,
  scheduled, job id, outcome, ...}); one written by a daemon before
  2026-11-29 is cmsgpack of {name, entry text, ...}; both are filed.  A text
  that does not unpack, or a history key of the wrong type, loses its entries
  only.

  Input:
    KEYS[1] the history inbox (list)

    ARGV[1] what a name follows in its history key ("<prefix>history:")
    ARGV[2] entries kept per schedule (0: none, the inbox is dropped)
    ARGV[3] the most inbox texts to file in this call

  Output:
    how many texts are still waiting (0 when the inbox is not a list)
]]
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
