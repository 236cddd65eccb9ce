-- KEYS: the queue's intermediate list, the queue, the job's hash, its "seen" mark, the queue's
-- started registry, the job's execution registry. ARGV: the job id, the execution key prefix, the
-- queue's name (its idle bells are rung: bell.lua, sent before this).
-- The runs a dead worker registered for the job before it died are forgotten here, in the same step
-- as the requeue: once the job is back in its queue, a worker may take it at once, and its new run
-- must not be forgotten with them.
if redis.call('HGET', KEYS[3], 'status') == 'queued' and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  for _, run in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    redis.call('DEL', ARGV[2] .. ARGV[1] .. ':' .. run)
    redis.call('ZREM', KEYS[5], ARGV[1] .. ':' .. run)
    redis.call('ZREM', KEYS[6], run)
  end
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'queued')
  redis.call('DEL', KEYS[4])
  local normal = KEYS[2] == 'rq:queue:' .. ARGV[3] and 1 or 0
  ring(ARGV[3], normal, 1 - normal)
  return 1
end
return 0
