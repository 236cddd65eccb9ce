-- Free a unique key at its job's end: only if that job still holds it. KEYS[1]: the key;
-- ARGV[1]: the job id; ARGV[2]: seconds the key stays held after the end (0: freed at once).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
