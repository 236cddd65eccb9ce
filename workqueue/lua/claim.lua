local job_prefix, exec_prefix, registry_prefix, exec_id, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now_float, now_int, now_text, interval = ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local dropped = 0
-- Sent before the BLMOVE it follows had waited (an idle worker's wait and claim in one request,
-- ``job_steps.claim_many(wait=)``): now is Redis's clock as the claim runs, not the worker's at sending.
if ARGV[6] == '' then
  local t = redis.call('TIME')
  local seconds, micros = tonumber(t[1]), tonumber(t[2])
  local days, second = math.floor(seconds / 86400), seconds % 86400
  -- the civil date of a day count since 1970-01-01 (the proleptic Gregorian calendar, UTC)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  now_float = string.format('%d.%06d', seconds, micros)
  now_int = seconds
  now_text = string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', year, month, doy - math.floor((153 * mp + 2) / 5) + 1,
                           math.floor(second / 3600), math.floor(second % 3600 / 60), second % 60, micros)
end
-- Several jobs per call: ARGV[16..] are more execution ids, one per further job to start (up to
-- 1 + #those jobs); the answer lists each job's four values in turn. ARGV[13]: with a number above
-- 0, a further job is only taken from a queue that uses none of pause, limits and levels and still
-- holds more than that many jobs (a one-job-at-a-time worker claiming ahead of a deep queue).
local exec_ids, found = {ARGV[4]}, {}
for k = 16, #ARGV do exec_ids[#exec_ids + 1] = ARGV[k] end
local ahead_depth, depth = tonumber(ARGV[13]) or 0, {}

-- Pause and priorities (workqueue.pausing, workqueue.priorities): a paused queue gives no job; a
-- queue's jobs come from its level lists, highest first, RQ's own list (KEYS[i]) being level 5.
local PAUSED_KEY, QUEUE_PREFIX, PRIORITY_PREFIX = 'workqueue:paused', 'rq:queue:', 'workqueue:priority:'
local NORMAL, HIGHEST = 5, 9
local function level_key(i, level)
  if level == NORMAL then return KEYS[i] end
  return PRIORITY_PREFIX .. string.sub(KEYS[i], #QUEUE_PREFIX + 1) .. ':' .. level
end
local function others(i, from, to)  -- whether queue i has a level list from `from` down to `to`, but NORMAL
  local keys = {}
  for level = from, to, -1 do
    if level ~= NORMAL then keys[#keys + 1] = level_key(i, level) end
  end
  return redis.call('EXISTS', unpack(keys)) > 0
end
-- Whether queue i uses none of pause, held jobs (per-key limits, below) and levels other than RQ's
-- own list: the common case, told by one look, after which each of them costs nothing.
local quiet = {}
local function is_quiet(i)
  if quiet[i] == nil then
    local keys = {PAUSED_KEY, 'workqueue:limit:waiting:' .. KEYS[i]}
    for level = HIGHEST, 0, -1 do
      if level ~= NORMAL then keys[#keys + 1] = level_key(i, level) end
    end
    quiet[i] = redis.call('EXISTS', unpack(keys)) == 0
  end
  return quiet[i]
end
local function paused(i)
  if is_quiet(i) then return false end
  return redis.call('SISMEMBER', PAUSED_KEY, string.sub(KEYS[i], #QUEUE_PREFIX + 1)) == 1
end
local function take(i)  -- queue i's next job id, highest level first, moved into its intermediate list
  if is_quiet(i) or not others(i, HIGHEST, 0) then  -- RQ's own list alone: one look
    return redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
  end
  for level = HIGHEST, 0, -1 do
    local id = redis.call('LMOVE', level_key(i, level), KEYS[i + 1], 'LEFT', 'RIGHT')
    if id then return id end
  end
  return false
end
-- The job the worker's BLMOVE took from the first queue's normal list goes back to its front if
-- that queue is paused or holds a job of a higher level.
-- '*': the job is the one a BLMOVE sent just before this claim moved (the newest in the intermediate
-- list; another worker's, if that one's claim took this worker's: each claim takes one). '+': the
-- same, but with none moved the claim looks no further (an idle worker's look is not due yet).
local moved_only = ARGV[12] == '+'
if ARGV[12] == '*' or moved_only then ARGV[12] = redis.call('LINDEX', KEYS[4], -1) or '' end
if moved_only and ARGV[12] == '' then return false end
if ARGV[12] ~= '' then
  if not is_quiet(3) and (others(3, HIGHEST, NORMAL + 1) or paused(3)) then
    -- only if it is still there: a late answer (after a network cut) names a job a sweep put back
    if redis.call('LREM', KEYS[4], 1, ARGV[12]) == 1 then redis.call('LPUSH', KEYS[3], ARGV[12]) end
    ARGV[12] = ''
  end
end

-- Idle bells (workqueue/bells.py): a claim that found fewer than ARGV[14] jobs notes the worker as
-- idle, in the 'blocked' set of its first open queue (where its BLMOVE waits next) and the 'deaf'
-- set of each other queue; one that found enough takes a worker noted before (ARGV[15] '1') out.
local BELL, NOTE_TTL = 'workqueue:bell:', 600  -- settings.BELL_NOTE_TTL
local idle_below, noted = tonumber(ARGV[14]) or 0, ARGV[15] == '1'
local executions_ttl = nil  -- the TTL of the worker's executions (KEYS[2]) as its last started job sets it
local function settle(n)
  if executions_ttl then redis.call('EXPIRE', KEYS[2], executions_ttl) end
  local idle = n < idle_below
  if not idle and not noted then return end  -- the common case: a busy worker stays out
  local chosen = false  -- the queue its BLMOVE waits on is chosen
  for i = 3, #KEYS, 3 do
    local prefix = BELL .. string.sub(KEYS[i], #QUEUE_PREFIX + 1)
    local blocked, deaf = prefix .. ':blocked', prefix .. ':deaf'
    if not idle then
      redis.call('SREM', blocked, worker)
      redis.call('SREM', deaf, worker)
    else
      local into, out = deaf, blocked
      if not chosen and not paused(i) then into, out, chosen = blocked, deaf, true end
      redis.call('SADD', into, worker)
      redis.call('EXPIRE', into, NOTE_TTL)
      if noted then redis.call('SREM', out, worker) end
    end
  end
end

-- Per-key limits (workqueue/limits.py) -------------------------------------------------------------
-- A job whose hash has a 'limit_key' keeps to the rule on it (exact key, else the longest matching
-- pattern, else the job's 'limit_default'): at most `rate` starts per `per` seconds (a sliding
-- window of starts, plus LIMIT_MARGIN) and `concurrency` live leases. A job at its limit is held:
-- moved off the queue to a FIFO list per queue and key, its key put in the queue's 'waiting' set
-- scored by when to look again. Each claim first releases held jobs whose key has room, to the
-- front of their queue, where this claim (or the next) takes them like any other job.
local LIMIT, LIMIT_MARGIN, LIMIT_HELD_MAX = 'workqueue:limit:', 0.1, 1000
local limit_now = nil  -- Redis's clock (the same for every worker on every machine), read once a limit is involved
local function limit_clock()
  if not limit_now then
    local t = redis.call('TIME')
    limit_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
end
local limit_held = 0

local function limit_rule(key, default)
  local raw = redis.call('HGET', LIMIT .. 'rules', key)
  if not raw then
    local patterns, best = redis.call('HGETALL', LIMIT .. 'patterns'), nil
    for j = 1, #patterns, 2 do
      local glob = patterns[j]
      if (not best or #glob > #best or (#glob == #best and glob < best)) and pcall(string.find, key, patterns[j + 1])
          and string.find(key, patterns[j + 1]) then
        best = glob
      end
    end
    if best then raw = redis.call('HGET', LIMIT .. 'rules', best) end
  end
  if raw then
    local ok, rule = pcall(cjson.decode, raw)
    if ok and type(rule) == 'table' then
      return tonumber(rule.rate) or 0, tonumber(rule.per) or 1, tonumber(rule.concurrency) or 0, false
    end
  end
  if default and default ~= '' then
    local rate, per, conc = string.match(default, '^(%S+) (%S+) (%S+)$')
    if rate then return tonumber(rate) or 0, tonumber(per) or 1, tonumber(conc) or 0, true end
  end
  return nil
end

-- When `key` next has room under (rate, per, conc): nil if it has room now.
local function limit_wait(key, rate, per, conc)
  local wait = nil
  if conc > 0 then
    local leases = LIMIT .. 'leases:' .. key
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', limit_now)
    if redis.call('ZCARD', leases) >= conc then wait = limit_now + 1 end
  end
  if rate > 0 then
    local starts = LIMIT .. 'starts:' .. key
    redis.call('ZREMRANGEBYSCORE', starts, '-inf', limit_now - per - LIMIT_MARGIN)
    local count = redis.call('ZCARD', starts)
    if count >= rate then
      local oldest = redis.call('ZRANGE', starts, count - rate, count - rate, 'WITHSCORES')
      local at = tonumber(oldest[2]) + per + LIMIT_MARGIN
      if not wait or at > wait then wait = at end
    end
  end
  return wait
end

-- Whether the job `id` (taken from queue `queue` into `intermediate`) is held; if not, its start
-- is counted (a lease that the job's end or the sweep removes, and a start in the rate window).
local function limit_hold(queue, id, job_key, job)
  local fields = {job.limit_key, job.limit_default, job.limit_released}
  local key = fields[1]
  if not key or key == '' then return false end
  limit_clock()
  redis.call('ZADD', LIMIT .. 'keys', limit_now, key)
  local rate, per, conc, by_default = limit_rule(key, fields[2])
  if by_default then redis.call('HSET', LIMIT .. 'defaults', key, fields[2]) end
  local wait = rate and limit_wait(key, rate, per, conc)
  if wait then
    local held = LIMIT .. 'held:' .. queue .. ':' .. key
    if fields[3] then redis.call('LPUSH', held, id) else redis.call('RPUSH', held, id) end
    redis.call('ZADD', LIMIT .. 'waiting:' .. queue, wait, key)
    limit_held = limit_held + 1
    return true
  end
  if fields[3] then redis.call('HDEL', job_key, 'limit_released') end
  local leases = LIMIT .. 'leases:' .. key
  redis.call('ZADD', leases, limit_now + interval + 60, id .. ':' .. exec_id)
  redis.call('EXPIRE', leases, 86400)  -- limits.LEASES_TTL
  if rate and rate > 0 then
    redis.call('ZADD', LIMIT .. 'starts:' .. key, limit_now, exec_id)
    redis.call('EXPIRE', LIMIT .. 'starts:' .. key, math.ceil(per + LIMIT_MARGIN) + 1)
  end
  return false
end

-- The list a released job goes back to: its own priority level's (workqueue.priorities), from its meta.
local function release_key(queue, meta)
  local ok, decoded = pcall(cjson.decode, meta or '')
  local level = ok and type(decoded) == 'table' and tonumber(decoded.priority) or NORMAL
  if level == NORMAL or level < 0 or level > HIGHEST then return queue end
  return PRIORITY_PREFIX .. string.sub(queue, #QUEUE_PREFIX + 1) .. ':' .. math.floor(level)
end

-- Release to the front of `queue` the first held job of each key due a look that has room again.
local function limit_release(queue)
  local waiting = LIMIT .. 'waiting:' .. queue
  if redis.call('EXISTS', waiting) == 0 then return end  -- the common case: no key of this queue is held
  limit_clock()
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', waiting, '-inf', limit_now, 'LIMIT', 0, 20)) do
    local held = LIMIT .. 'held:' .. queue .. ':' .. key
    local id, fields = nil, nil
    while true do  -- skip jobs cancelled or deleted while held
      id = redis.call('LINDEX', held, 0)
      if not id then break end
      fields = redis.call('HMGET', job_prefix .. id, 'status', 'limit_default', 'meta')
      if fields[1] == 'queued' then break end
      redis.call('LPOP', held)
    end
    if not id then
      redis.call('ZREM', waiting, key)
    else
      local rate, per, conc = limit_rule(key, fields[2])
      local wait = rate and limit_wait(key, rate, per, conc)
      if wait then
        redis.call('ZADD', waiting, wait, key)
      else
        redis.call('LPOP', held)
        redis.call('HSET', job_prefix .. id, 'limit_released', '1')
        redis.call('LPUSH', release_key(queue, fields[3]), id)
        if redis.call('LLEN', held) == 0 then redis.call('ZREM', waiting, key) end
      end
    end
  end
end

for i = 3, #KEYS, 3 do
  if not is_quiet(i) then limit_release(KEYS[i]) end
end
-- (end of the per-key limits' own block) ---------------------------------------------------------

for i = 3, #KEYS, 3 do
  while true do
    if paused(i) then break end
    if #found > 0 and ahead_depth > 0 then  -- claiming ahead: only from a deep quiet queue
      if not is_quiet(i) then break end
      depth[i] = depth[i] or redis.call('LLEN', KEYS[i])
      if depth[i] <= ahead_depth then break end
      depth[i] = depth[i] - 1
    end
    local id = false
    if i == 3 and ARGV[12] ~= '' then
      id, ARGV[12] = ARGV[12], ''
      -- moved long ago (a late answer after a network cut) and put back by a sweep since: not ours
      if not redis.call('LPOS', KEYS[i + 1], id) then id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT') end
    else
      id = take(i)
    end
    if not id then break end
    exec_id = exec_ids[#found / 4 + 1]
    local job_key = job_prefix .. id
    local job = redis.call('HGETALL', job_key)
    local fields = {}
    for j = 1, #job, 2 do fields[job[j]] = job[j + 1] end
    local held = #job > 0 and limit_hold(KEYS[i], id, job_key, fields)  -- per-key limits: held off the queue?
    if #job > 0 and not held then
      local timeout = fields.timeout
      local seconds = tonumber(timeout or '')
      if timeout and timeout ~= '' and not seconds then
        for _, v in ipairs({(i / 3), id, job, -1}) do found[#found + 1] = v end
        settle(#found / 4)
        return found
      end
      local ttl = interval + 60
      if seconds and seconds > 0 then ttl = math.floor(math.min(seconds, interval)) + 60 end
      local composite = id .. ':' .. exec_id
      local exec_key = exec_prefix .. composite
      redis.call('HSET', exec_key, 'id', exec_id, 'job_id', id, 'created_at', now_float,
                 'last_heartbeat', now_float, 'worker_name', worker)
      redis.call('EXPIRE', exec_key, ttl)
      redis.call('ZADD', registry_prefix .. id, now_int + ttl + 60, exec_id)
      redis.call('EXPIRE', registry_prefix .. id, ttl + 60)
      redis.call('ZADD', KEYS[i + 2], now_int + ttl, composite)
      redis.call('SADD', KEYS[2], composite)
      executions_ttl = ttl + 60  -- the worker's executions' TTL, set once per claim (settle)
      if ARGV[10] == '1' then redis.call('HSET', KEYS[1], 'state', 'busy') end
      redis.call('HSET', job_key, 'last_heartbeat', now_text, 'status', 'started', 'started_at', now_text,
                 'worker_name', worker)
      redis.call('PERSIST', job_key)
      redis.call('LREM', KEYS[i + 1], 1, id)
      for _, v in ipairs({(i / 3), id, job, ttl}) do found[#found + 1] = v end
      if #found / 4 >= #exec_ids then
        settle(#found / 4)
        return found
      end
    else
      redis.call('LREM', KEYS[i + 1], 1, id)
      if not held then dropped = dropped + 1 end
      if dropped >= tonumber(ARGV[11]) or limit_held >= LIMIT_HELD_MAX then
        if #found > 0 then
          settle(#found / 4)
          return found
        end
        return {0}  -- the worker asks again at once: that claim settles its bells
      end
    end
  end
end
settle(#found / 4)
if #found > 0 then return found end
return false
