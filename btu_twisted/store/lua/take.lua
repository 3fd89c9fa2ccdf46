
local owner = redis.call('GET', KEYS[1])
if owner and string.match(owner, '^%S*') ~= ARGV[1] then return owner end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[3]))
return ''
