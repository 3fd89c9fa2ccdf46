#!lua
--[[
  Claim due members and enqueue their jobs, each exactly once
  (ScheduleStore.claim; the arguments are framed by claims.claim_arguments).

  An empty job id claims without enqueueing: a run skipped on purpose
  (misfire grace, unbuildable task).  Result code per claim:
    1 CLAIMED     enqueued (or skipped on purpose) by us
    0 LOST        member gone and that time enqueued: another daemon won (or an
                  earlier attempt of ours whose reply was lost)
    5 WITHDRAWN   member gone and that time never enqueued: it was cancelled or
                  replanned (a socket cancel, the planner) while being claimed
    2 STALE       that time was already enqueued
    3 BLOCKED     a key it would write holds the wrong type (or its last run
                  cannot be read): left untouched, member kept, to be retried
    4 OVERLAPPED  the schedule says overlap = "skip" and its previous job
                  (last jobs) is still queued or started: settled like a skipped
                  run (member gone, last run set), no job written
  The HGET of the previous job's status is the only key read that is not in
  KEYS (its id is only known here: another daemon may have enqueued it);
  Redis outside cluster mode allows that, and rq has no cluster mode.

  Every claim settled by us (1 and 4) adds an entry to its schedule's run
  history (history.py): the call's entries go to the history inbox as one
  cmsgpack text (one RPUSH, not an LPUSH and LTRIM per job: a quarter of the
  call's time), filed under each schedule by fold_history.lua once the burst
  is claimed; an entry is its parts (the time enqueued once per call), which
  fold_history.lua joins; an inbox of the wrong type loses those entries,
  never the claims.  The reply is one string of digits, one per claim
  (txredisapi takes ~10 us of Python per reply element: 5 ms for 500
  integers), then one reason per blocked claim.

  Redis does not undo the writes of a script that fails part-way, so every
  key is checked before its first write: a string at rq:queue:X once cost
  each run on X its member and last run while nothing was queued.  A job key
  is checked by its own HSET, the first write of its claim (a job id is new,
  so a wrong type there is next to impossible, and a TYPE per job is a tenth
  of the cost).  The shebang makes Redis refuse the whole script up front
  when it is out of memory, rather than fail at a write in the middle.

  Cost: the reads and writes of the daemon's own keys are one call per batch
  (ZMSCORE, HMGET, ZREM, HSET), and so are RPUSH and SADD per queue; per job
  there is only its HSET.  The claims are decided one after the other as if
  each ran alone (a name twice in a batch sees its first claim).  The member
  index is not touched: a claimed member's entry is replaced by the
  schedule's replan (plan.lua), or dropped by prune_index.lua as dangling if
  none comes.  Reading and deleting it was 7 % of a burst's time in Redis.

  Input:
    KEYS[1]       the sorted set (zset)
    KEYS[2]       last runs (hash)
    KEYS[3]       rq:queues (set)
    KEYS[4]       last jobs: schedule -> its latest job id (hash)
    KEYS[5]       the history inbox (list)
    KEYS[4 + 2j]  claim j's job key, rq:job:<id>
    KEYS[5 + 2j]  claim j's queue key, rq:queue:<origin>

    ARGV[1]  enqueued_at, rq's ISO time, for every job and history entry
    ARGV[2]  the number of claims
    ARGV[3]  the number of shapes
    ARGV[4]  history entries kept per schedule (0: none kept)
    then each shape: the count of own field names, those names, the count of
             shared fields, then name and value of each shared field
    then per claim: member, schedule, time, job id (empty: no job), mode
             (with a job: "skip" for the overlap check, else empty; without
             a job: the outcome to record), the number of its shape (0: none),
             then the values of the shape's own fields in that order
  A shape is what the job hashes of a call share.  Jobs of one task differ
  only in a few fields (PER_JOB_FIELDS); the others (queue, timeout, status,
  callbacks, eight empty ones) go once per call, not once per job: Redis
  reads ~12 arguments a job instead of ~23.

  Output:
    {codes, reason...}: codes is one digit per claim, in order; then one
    reason text per BLOCKED claim, in order.  An error before any write for
    a sorted set, last runs or last jobs of the wrong type, or bad arguments.
]]
local KEYS, ARGV, tonumber, unpack = KEYS, ARGV, tonumber, unpack
local call, pcall_ = redis.call, redis.pcall
local zset, last, queues, last_job, inbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local enqueued_at = ARGV[1]
local njobs = tonumber(ARGV[2])
local keep = tonumber(ARGV[4])
local function wrong(key, want)
  local t = call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return key .. ' holds a ' .. t .. ', not a ' .. want
  end
end
for _, k in ipairs({{zset, 'zset'}, {last, 'hash'}, {last_job, 'hash'}}) do
  local bad = wrong(k[1], k[2])
  if bad then return redis.error_reply('WRONGTYPE ' .. bad) end
end
-- Each shape's fields once per call: {'enqueued_at', <time>, own1, <value>,
-- own2, <value>, ..., shared1, value1, ...}, the own values filled in job by job.
local shapes, counts, nshapes = {}, {[0] = 0}, tonumber(ARGV[3])
local a = 5
for s = 1, nshapes do
  local n, fields = tonumber(ARGV[a]), {'enqueued_at', enqueued_at}
  for i = 1, n do fields[2 * i + 1], fields[2 * i + 2] = ARGV[a + i], '' end
  local m = tonumber(ARGV[a + n + 1])
  if not n or not m then return redis.error_reply('ERR claim: bad shape ' .. s) end
  for i = 1, 2 * m do fields[2 * n + 2 + i] = ARGV[a + n + 1 + i] end
  shapes[s], counts[s] = fields, n
  a = a + 2 + n + 2 * m
end
local at, members, names, shape_of = {}, {}, {}, {}
for j = 1, njobs do
  local shape = tonumber(ARGV[a + 5])
  if not tonumber(ARGV[a + 2]) or not shape or not counts[shape] then
    return redis.error_reply('ERR claim ' .. j .. ': bad time or field names')
  end
  at[j], members[j], names[j], shape_of[j] = a, ARGV[a], ARGV[a + 1], shape
  a = a + 6 + counts[shape]
end
local CHUNK = 1000
-- One reply value per item (false when missing), the command sent in chunks.
local function read(cmd, key, items)
  if #items <= CHUNK then return call(cmd, key, unpack(items)) end
  local out, n = {}, 0
  for i = 1, #items, CHUNK do
    local part = call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
    for k = 1, #part do n = n + 1; out[n] = part[k] end
  end
  return out
end
local function write(cmd, key, items, n)
  for i = 1, n, CHUNK do
    call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, n)))
  end
end
local scores
local ok, got = pcall(read, 'ZMSCORE', zset, members)
if ok then
  scores = got
else  -- Redis before 6.2
  scores = {}
  for j = 1, njobs do scores[j] = call('ZSCORE', zset, members[j]) end
end
local lasts = read('HMGET', last, names)
local done = {}
local queues_bad = wrong(queues, 'set')
local queue_bad, pushed, queue_order, nqueues = {}, {}, {}, 0
local removed, zrem, hset = {}, {}, {}
local nzrem, nhset = 0, 0
-- Overlap: the latest job of each schedule claimed with mode "skip", read
-- when first needed (false: none), then as this batch enqueues.
local jobs_of, ljset, nljset = {}, {}, 0
local function busy(name)
  local prev = jobs_of[name]
  if prev == nil then
    prev = call('HGET', last_job, name)
    jobs_of[name] = prev
  end
  if not prev then return false end
  local status = call('HGET', 'rq:job:' .. prev, 'status')
  return status == 'queued' or status == 'started'
end
local hist, nhist = {}, 0
local out, reasons, nreasons = {}, {}, 0
for j = 1, njobs do
  local b = at[j]
  local member, name = members[j], names[j]
  local d = done[name]
  if d == nil then
    d = lasts[j]
    done[name] = d
  end
  local bad, code = nil, nil
  if not scores[j] or removed[member] then
    -- Who took it: a claim always records its time as the last run, a
    -- cancel or a replan never does.
    local done_at = tonumber(d or '')
    if done_at and tonumber(ARGV[at[j] + 2]) <= done_at then code = 0 else code = 5 end
  elseif d and not tonumber(d) then
    bad = last .. ' field ' .. name .. ' holds "' .. string.sub(d, 1, 40)
      .. '", not a unix time'
  else
    local when, job_id, mode = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
    local job_key, queue_key = KEYS[4 + 2 * j], KEYS[5 + 2 * j]
    if job_id ~= '' then
      local qb = queue_bad[queue_key]
      if qb == nil then
        qb = queues_bad or wrong(queue_key, 'list') or false
        queue_bad[queue_key] = qb
      end
      if qb then bad = qb end
    end
    if not bad and tonumber(when) <= tonumber(d or '-1') then
      code = 2
      if job_id ~= '' then bad = wrong(job_key, 'hash') end
    elseif not bad and job_id ~= '' and mode == 'skip' and busy(name) then
      code = 4
    elseif not bad and job_id ~= '' then
      local shape = shape_of[j]
      local fields = shapes[shape] or {'enqueued_at', enqueued_at}
      for i = 1, counts[shape] do fields[2 * i + 2] = ARGV[b + 5 + i] end
      local set = pcall_('HSET', job_key, unpack(fields))
      if type(set) == 'table' and set.err then
        bad = wrong(job_key, 'hash')
        if not bad then return set end
      end
    end
    if not bad then
      removed[member] = true
      nzrem = nzrem + 1
      zrem[nzrem] = member
      if code == nil or code == 4 then
        local outcome = 'skipped_overlap'
        if code == nil then
          outcome = job_id ~= '' and 'enqueued' or (mode ~= '' and mode or 'skipped')
        end
        done[name] = when
        hset[nhset + 1], hset[nhset + 2] = name, when
        nhset = nhset + 2
        if keep > 0 then
          hist[nhist + 1] = name
          hist[nhist + 2] = when
          hist[nhist + 3] = code == nil and job_id or ''
          hist[nhist + 4] = outcome
          nhist = nhist + 4
        end
      end
      if code == nil then
        code = 1
        if job_id ~= '' and mode == 'skip' then
          jobs_of[name] = job_id
          ljset[nljset + 1], ljset[nljset + 2] = name, job_id
          nljset = nljset + 2
        end
        if job_id ~= '' then
          local ids = pushed[queue_key]
          if not ids then
            ids = {}
            pushed[queue_key] = ids
            nqueues = nqueues + 1
            queue_order[nqueues] = queue_key
          end
          ids[#ids + 1] = job_id
        end
      end
    end
  end
  if bad then
    code = 3
    nreasons = nreasons + 1
    reasons[nreasons] = bad
  end
  out[j] = code
end
write('ZREM', zset, zrem, nzrem)
write('HSET', last, hset, nhset)
for q = 1, nqueues do
  local ids = pushed[queue_order[q]]
  write('RPUSH', queue_order[q], ids, #ids)
end
write('SADD', queues, queue_order, nqueues)
write('HSET', last_job, ljset, nljset)
-- pcall: an inbox of the wrong type loses these entries, not the claims.
if nhist > 0 then pcall_('RPUSH', inbox, cmsgpack.pack(enqueued_at, hist)) end
local reply = {table.concat(out)}
for r = 1, nreasons do reply[r + 1] = reasons[r] end
return reply
