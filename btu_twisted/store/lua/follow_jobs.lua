#!lua flags=no-writes
--[[
  Where each of the daemon's unfinished jobs stands, as rq itself keeps it
  (store/health_store.py; the job follower asks every few seconds, for the
  jobs it has not seen end, a bounded number per call).  Only the jobs whose
  status is not the one the follower last saw are answered: a pass over
  5,000 jobs still waiting on their queue answers almost nothing (reading a
  reply element costs txredisapi ~10 us of Python).

  rq 1.15 and 2.x both keep the job's status and times in its hash; the
  error of a failed job is in the newest entry of its results stream
  (rq:results:<id>, both majors on a Redis with streams), else in the hash's
  exc_info (rq 1.x on a Redis without streams; zlib-compressed, undone in
  Python).  A job whose hash is gone has the status ''.

  Input:
    KEYS[2i-1]  job i's hash, rq:job:<id>
    KEYS[2i]    job i's results stream, rq:results:<id>
    ARGV[i]     the status the follower last saw for job i ('?' for none yet)

  Output:
    {json, raw...}: json is a JSON array with one array per changed job:
    [i, status, enqueued_at, started_at, ended_at, timeout, error]; error
    is '' but for a failed job: "s:" and the stream's base64 exc_string, or
    "h:N" for the N-th raw text after json (the hash's exc_info, binary)
]]
local changed, raw = {}, {}
for i = 1, #KEYS / 2 do
  local job = KEYS[2 * i - 1]
  local values = redis.pcall('HMGET', job, 'status', 'enqueued_at', 'started_at',
                             'ended_at', 'timeout')
  if values.err then values = {} end
  local status = values[1] or ''
  if status ~= ARGV[i] then
    local error = ''
    if status == 'failed' then
      local entries = redis.pcall('XREVRANGE', KEYS[2 * i], '+', '-', 'COUNT', 1)
      if not entries.err and entries[1] then
        local fields = entries[1][2]
        for k = 1, #fields, 2 do
          if fields[k] == 'exc_string' then error = 's:' .. fields[k + 1] end
        end
      end
      if error == '' then
        local info = redis.pcall('HGET', job, 'exc_info')
        if type(info) == 'string' then
          raw[#raw + 1] = info
          error = 'h:' .. #raw
        end
      end
    end
    changed[#changed + 1] = {i, status, values[2] or '', values[3] or '', values[4] or '',
                             values[5] or '', error}
  end
end
local out = {#changed > 0 and cjson.encode(changed) or '[]'}
for k = 1, #raw do out[k + 1] = raw[k] end
return out
