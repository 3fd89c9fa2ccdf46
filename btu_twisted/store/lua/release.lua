--[[
  Release the prefix lease only if it is ours: after an expiry it may be
  another site's (prefix_guard.py).

  Input:
    KEYS[1] the lease, "<prefix>owner" (string)

    ARGV[1] our owner id

  Output:
    1 if released, else 0
]]
local owner = redis.call('GET', KEYS[1])
if owner and string.match(owner, '^%S*') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
