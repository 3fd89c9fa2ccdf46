
local owner = redis.call('GET', KEYS[1])
if owner and string.match(owner, '^%S*') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
