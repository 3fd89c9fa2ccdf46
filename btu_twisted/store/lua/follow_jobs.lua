#!lua flags=no-writes
--[[
  Where each of the daemon's unfinished jobs stands, as rq itself keeps it
  (store/health_store.py; the job follower asks every few seconds, for the
  jobs it has not seen end, a bounded number per call).

  rq 1.15 and 2.x both keep the job's status and times in its hash; the
  error of a failed job is in the newest entry of its results stream
  (rq:results:<id>, both majors on a Redis with streams), else in the hash's
  exc_info (rq 1.x on a Redis without streams; zlib-compressed, undone in
  Python).  A job whose hash is gone answers an empty status.

  Input:
    KEYS[2i-1]  job i's hash, rq:job:<id>
    KEYS[2i]    job i's results stream, rq:results:<id>

  Output:
    six texts per job, in KEYS order: status, enqueued_at, started_at,
    ended_at, timeout, and the error (only for a failed job, else ''):
    "s:" and the stream's base64 exc_string, or "h:" and the hash's exc_info
]]
local out = {}
for i = 1, #KEYS, 2 do
  local values = redis.pcall('HMGET', KEYS[i], 'status', 'enqueued_at', 'started_at',
                             'ended_at', 'timeout')
  if values.err then values = {} end
  for j = 1, 5 do
    out[#out + 1] = values[j] or ''
  end
  local error = ''
  if values[1] == 'failed' then
    local entries = redis.pcall('XREVRANGE', KEYS[i + 1], '+', '-', 'COUNT', 1)
    if not entries.err and entries[1] then
      local pairs_ = entries[1][2]
      for k = 1, #pairs_, 2 do
        if pairs_[k] == 'exc_string' then error = 's:' .. pairs_[k + 1] end
      end
    end
    if error == '' then
      local raw = redis.pcall('HGET', KEYS[i], 'exc_info')
      if type(raw) == 'string' then error = 'h:' .. raw end
    end
  end
  out[#out + 1] = error
end
return out
