-- Change a batch's total by ARGV[1] (jobs a running job added, or calls that found their job already
-- queued): the batch ends when nothing remains. KEYS: the batch, its events. ARGV[2]: their TTL.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local delta = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'total', delta)
local left = redis.call('HINCRBY', KEYS[1], 'remaining', delta)
if left <= 0 and redis.call('HEXISTS', KEYS[1], 'ended_at') == 0 then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'ended_at', t[1] .. '.' .. string.format('%06d', t[2]))
  redis.call('XADD', KEYS[2], '*', 'batch', 'done')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return left
