-- Count a job's end in its batch. KEYS: the batch, its ended ids, its events, RQ's group set (which
-- expires with them). ARGV: job id, outcome, task, detail, duration, the keys' TTL.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local first = redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if first == 0 then
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
end
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[6])
return left
