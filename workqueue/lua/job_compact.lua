-- Keep a succeeded job compactly: its hash rewritten whole (a hash only ever grows its table, so
-- HDEL alone frees little), without the spent fields, with the return value in 'result' and the
-- fields the end changes (status, timestamps) set. The new hash is written under a key of its own,
-- then renamed over the job's: its first write is one Redis refuses while out of memory (a DEL first
-- would not be, and would let the rest of the script through), so a refused end writes nothing.
-- No TTL is kept: a started job's hash has none (its start PERSISTs it), and the end's own
-- transaction sets it after this (RQ's Job.cleanup).
-- KEYS: the job's hash. ARGV: the result as JSON, the number n of fields to set, n field names and
-- n values in turn, then the spent field names.
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local n = tonumber(ARGV[2])
local spent, set = {result = true}, {}
for i = 3, 2 + 2 * n, 2 do
  set[ARGV[i]] = ARGV[i + 1]
  spent[ARGV[i]] = true
end
for i = 3 + 2 * n, #ARGV do spent[ARGV[i]] = true end
local kept = {}
for i = 1, #fields, 2 do
  if not spent[fields[i]] then
    kept[#kept + 1] = fields[i]
    kept[#kept + 1] = fields[i + 1]
  end
end
for name, value in pairs(set) do
  kept[#kept + 1] = name
  kept[#kept + 1] = value
end
kept[#kept + 1] = 'result'
kept[#kept + 1] = ARGV[1]
local fresh = KEYS[1] .. ':compact'
redis.call('HSET', fresh, unpack(kept))
redis.call('RENAME', fresh, KEYS[1])
return 1
