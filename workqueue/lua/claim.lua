local job_prefix, exec_prefix, registry_prefix, exec_id, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now_float, now_int, now_text, interval = ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local dropped = 0

-- Pause and priorities (workqueue.pausing, workqueue.priorities): a paused queue gives no job; a
-- queue's jobs come from its level lists, highest first, RQ's own list (KEYS[i]) being level 5.
local PAUSED_KEY, QUEUE_PREFIX, PRIORITY_PREFIX = 'workqueue:paused', 'rq:queue:', 'workqueue:priority:'
local NORMAL, HIGHEST = 5, 9
local function paused(i)
  return redis.call('SISMEMBER', PAUSED_KEY, string.sub(KEYS[i], #QUEUE_PREFIX + 1)) == 1
end
local function level_key(i, level)
  if level == NORMAL then return KEYS[i] end
  return PRIORITY_PREFIX .. string.sub(KEYS[i], #QUEUE_PREFIX + 1) .. ':' .. level
end
local function take(i)  -- queue i's next job id, highest level first, moved into its intermediate list
  for level = HIGHEST, 0, -1 do
    local id = redis.call('LMOVE', level_key(i, level), KEYS[i + 1], 'LEFT', 'RIGHT')
    if id then return id end
  end
  return false
end
-- The job the worker's BLMOVE took from the first queue's normal list goes back to its front if
-- that queue is paused or holds a job of a higher level.
if ARGV[12] ~= '' then
  local higher = false
  for level = HIGHEST, NORMAL + 1, -1 do
    higher = higher or redis.call('EXISTS', level_key(3, level)) == 1
  end
  if higher or paused(3) then
    redis.call('LREM', KEYS[4], 1, ARGV[12])
    redis.call('LPUSH', KEYS[3], ARGV[12])
    ARGV[12] = ''
  end
end

for i = 3, #KEYS, 3 do
  while true do
    if paused(i) then break end
    local id = false
    if i == 3 and ARGV[12] ~= '' then
      id, ARGV[12] = ARGV[12], ''
    else
      id = take(i)
    end
    if not id then break end
    local job_key = job_prefix .. id
    local job = redis.call('HGETALL', job_key)
    if #job > 0 then
      local timeout = redis.call('HGET', job_key, 'timeout')
      local seconds = tonumber(timeout or '')
      if timeout and timeout ~= '' and not seconds then return {(i / 3), id, job, -1} end
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
      redis.call('EXPIRE', KEYS[2], ttl + 60)
      if ARGV[10] == '1' then redis.call('HSET', KEYS[1], 'state', 'busy') end
      redis.call('HSET', job_key, 'last_heartbeat', now_text, 'status', 'started', 'started_at', now_text,
                 'worker_name', worker)
      redis.call('PERSIST', job_key)
      redis.call('LREM', KEYS[i + 1], 1, id)
      return {(i / 3), id, job, ttl}
    end
    redis.call('LREM', KEYS[i + 1], 1, id)
    dropped = dropped + 1
    if dropped >= tonumber(ARGV[11]) then return {0} end
  end
end
return false
