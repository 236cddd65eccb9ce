local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'remaining', ARGV[1], 'finished', 0, 'failed', 0,
           'queue', ARGV[2], 'created_at', t[1] .. '.' .. string.format('%06d', t[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
