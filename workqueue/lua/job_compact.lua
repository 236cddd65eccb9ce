-- Keep a succeeded job compactly: the return value in 'result' and the fields the end changes
-- (status, timestamps) set, then the spent fields deleted, in place. The HSET comes first: it is a
-- write Redis refuses while out of memory (HDEL is not), so a refused end writes nothing.
-- In place, not rewritten: a hash over Redis's listpack limits (any value over 64 bytes) keeps the
-- table it had (128 B more than one rewritten for its fewer fields), and no reading it whole into
-- the script and writing it anew saves ~14 us of Redis's CPU per job in a drain. A listpack hash
-- shrinks in place as much as rewritten.
-- No TTL is kept: a started job's hash has none (its start PERSISTs it), and the end's own
-- transaction sets it after this (RQ's Job.cleanup).
-- KEYS: the job's hash. ARGV: the result as JSON, the number n of fields to set, n field names and
-- n values in turn, then the spent field names.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'result', ARGV[1], unpack(ARGV, 3, 2 + 2 * n))
if #ARGV > 2 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 3 + 2 * n, #ARGV)) end
return 1
