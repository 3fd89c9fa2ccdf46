--[[
  Take or renew several prefix leases at once: take.lua for each key, in one
  round trip (a bench's daemon renews every site's lease together,
  lease_renewal.py).

  Input:
    KEYS[i] lease i, "<prefix>owner" (string)

    ARGV[3i-2] lease i's owner id (no spaces)
    ARGV[3i-1] lease i's site name
    ARGV[3i]   lease i's lifetime, milliseconds

  Output:
    for each lease, in order: '' when taken or renewed; else the value found
    (another site's lease)
]]
local found = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[3 * i - 2]
  local owner = redis.call('GET', key)
  if owner and string.match(owner, '^%S*') ~= id then
    found[i] = owner
  else
    redis.call('SET', key, id .. ' ' .. ARGV[3 * i - 1], 'PX', tonumber(ARGV[3 * i]))
    found[i] = ''
  end
end
return found
