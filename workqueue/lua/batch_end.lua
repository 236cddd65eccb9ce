-- Count a job's end in its batch. KEYS: the batch, its ended ids, its events, RQ's group set. ARGV:
-- job id, outcome, task, detail, duration, the keys' TTL. The keys got their TTL when they were made
-- (batch_open, batches.BatchGroup); the batch's last end sets it again, so they last that long after it.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then
  redis.call('XADD', KEYS[3], '*', 'job', ARGV[1], 'outcome', ARGV[2], 'task', ARGV[3], 'detail', ARGV[4],
             'duration', ARGV[5], 'redelivery', '1')
  return -2
end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
local left = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
redis.call('XADD', KEYS[3], '*', 'job', ARGV[1], 'outcome', ARGV[2], 'task', ARGV[3], 'detail', ARGV[4],
           'duration', ARGV[5])
if left == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'ended_at', t[1] .. '.' .. string.format('%06d', t[2]))
  redis.call('XADD', KEYS[3], '*', 'batch', 'done')
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
return left
