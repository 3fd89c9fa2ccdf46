#!lua
--[[
  Give each schedule exactly one member in the sorted set, and remove the
  members of schedules no longer planned (ScheduleStore.plan).

  A member already due belongs to the timer, which may be claiming it right
  now: it is left alone (the timer replans the schedule after its claim).  A
  planned time not after the schedule's last run is refused, so that no
  planner, however slow, brings back a run that already happened.  Every key
  is checked for its type before the first write: Redis does not undo the
  writes of a script that fails part-way.  A paused schedule (pause.lua) is
  not planned: its member goes, and it comes back as refused with "paused".

  Input:
    KEYS[1] the sorted set of members "<schedule>|<unix>" (zset)
    KEYS[2] the member index: schedule -> its member (hash)
    KEYS[3] last runs: schedule -> latest time enqueued or skipped (hash)
    KEYS[4] the paused schedules: schedule -> unix seconds paused (hash)

    ARGV[1]            now, unix seconds
    ARGV[2]            n, how many schedules to plan
    ARGV[3 .. 2 + 2n]  per schedule: name, planned unix time
    ARGV[3 + 2n ..]    names of schedules whose members go

  Output:
    flat list of name, last run for each plan refused (empty: none refused),
    or name, "paused" for a paused schedule;
    an error "WRONGTYPE ..." before any write if a key holds another type
]]
local zset, idx, last, paused = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Checked before the first write, as in CLAIM.
for _, k in ipairs({{zset, 'zset'}, {idx, 'hash'}, {last, 'hash'}, {paused, 'hash'}}) do
  local t = redis.call('TYPE', k[1])['ok']
  if t ~= 'none' and t ~= k[2] then
    return redis.error_reply('WRONGTYPE ' .. k[1] .. ' holds a ' .. t .. ', not a ' .. k[2])
  end
end
local rejected = {}
for i = 0, n - 1 do
  local name, when = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  -- An unreadable last run does not stop planning: the claim reports it.
  local done = tonumber(redis.call('HGET', last, name) or '-1') or -1
  if redis.call('HEXISTS', paused, name) == 1 then
    local old = redis.call('HGET', idx, name)
    if old then
      redis.call('ZREM', zset, old)
      redis.call('HDEL', idx, name)
    end
    rejected[#rejected + 1] = name
    rejected[#rejected + 1] = 'paused'
  elseif tonumber(when) <= done then
    rejected[#rejected + 1] = name
    rejected[#rejected + 1] = tostring(done)
  else
    local member = name .. '|' .. when
    local old = redis.call('HGET', idx, name)
    local old_score = old and old ~= member and redis.call('ZSCORE', zset, old)
    -- A member already due belongs to the timer, which may be claiming it
    -- right now; replacing it would lose that run.  The timer replans the
    -- schedule after its claim.
    if not (old_score and tonumber(old_score) <= now) then
      if old and old ~= member then redis.call('ZREM', zset, old) end
      redis.call('ZADD', zset, when, member)
      redis.call('HSET', idx, name, member)
    end
  end
end
for i = 3 + 2 * n, #ARGV do
  local old = redis.call('HGET', idx, ARGV[i])
  if old then
    redis.call('ZREM', zset, old)
    redis.call('HDEL', idx, ARGV[i])
  end
end
return rejected
