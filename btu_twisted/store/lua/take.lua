--[[
  Take the prefix lease if it is free or already ours (another daemon of our
  site) (prefix_guard.py).  The lease's value is "<owner id> <site>": daemons
  are the same site when their owner ids (their database) agree, whatever
  they call the site.

  Input:
    KEYS[1] the lease, "<prefix>owner" (string)

    ARGV[1] our owner id (no spaces)
    ARGV[2] our site's name
    ARGV[3] the lease's lifetime, milliseconds

  Output:
    '' when taken or renewed; else the value found (another site's lease)
]]
local owner = redis.call('GET', KEYS[1])
if owner and string.match(owner, '^%S*') ~= ARGV[1] then return owner end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[3]))
return ''
