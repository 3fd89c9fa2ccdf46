--[[
  Delete a schedule's last run only if it still holds what the caller read
  (compare-and-delete), so a daemon enqueueing meanwhile is not overridden
  (btu clear-last-run, cli/lastrun.py).

  Input:
    KEYS[1] last runs (hash)

    ARGV[1] the schedule's name
    ARGV[2] the value read

  Output:
    1 if deleted, else 0
]]
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
