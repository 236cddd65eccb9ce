-- Open a batch. KEYS: the batch, its ended ids, its events. ARGV: total, queue, the keys' TTL.
-- The ended set (with a member no job id is) and the event stream (empty) are made here, with their
-- TTL, so that a job's end need not set it (batch_end sets them again at the batch's last end).
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'remaining', ARGV[1], 'finished', 0, 'failed', 0,
           'queue', ARGV[2], 'created_at', t[1] .. '.' .. string.format('%06d', t[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], '')
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[3], 'MAXLEN', '0', '*', 'batch', 'open')
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
