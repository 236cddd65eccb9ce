redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[4] ~= '' then
  redis.call('HINCRBY', KEYS[3], 'le:' .. ARGV[4], 1)
  redis.call('HINCRBY', KEYS[3], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[3], 'sum', ARGV[5])
end
for i = 4, 5 do
  local seconds = ARGV[i + 1]
  if seconds ~= '' then
    redis.call('LPUSH', KEYS[i], seconds)
    redis.call('LTRIM', KEYS[i], 0, tonumber(ARGV[3]) - 1)
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  end
end
return 1
