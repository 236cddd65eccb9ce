-- Keep a succeeded job compactly: its hash rewritten whole (a hash only ever grows its table, so
-- HDEL alone frees little), without the spent fields, with the return value in 'result', its TTL kept.
-- KEYS: the job's hash. ARGV: the result as JSON, then the spent field names.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
local spent = {result = true}
for i = 2, #ARGV do spent[ARGV[i]] = true end
local kept = {}
for i = 1, #fields, 2 do
  if not spent[fields[i]] then
    kept[#kept + 1] = fields[i]
    kept[#kept + 1] = fields[i + 1]
  end
end
kept[#kept + 1] = 'result'
kept[#kept + 1] = ARGV[1]
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(kept))
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
