if redis.call('HGET', KEYS[3], 'status') == 'queued' and redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'queued')
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
