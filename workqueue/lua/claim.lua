local job_prefix, exec_prefix, registry_prefix, exec_id, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now_float, now_int, now_text, interval = ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local dropped = 0
for i = 3, #KEYS, 3 do
  while true do
    local id = false
    if i == 3 and ARGV[12] ~= '' then
      id, ARGV[12] = ARGV[12], ''
      -- moved long ago (a late answer after a network cut) and put back by a sweep since: not ours
      if not redis.call('LPOS', KEYS[i + 1], id) then id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT') end
    else
      id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
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
