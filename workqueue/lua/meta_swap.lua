-- A job's meta replaced only if it is still what the writer last knew: a progress report need not
-- read the meta first, and never overwrites a note another writer added meanwhile (it merges and
-- tries again). Run inside a guarded transaction (guarded.py), never alone.
-- KEYS[1]: the job's hash. ARGV[1]: what the writer knows, '=' then the meta, or '-' (the job has
-- none), or '?' (not known); ARGV[2]: the new meta.
-- Answers 1 (written), or {0, the meta as it is, false if none} (not written; nothing written
-- either if the job's hash has gone).
local current = redis.call('HGET', KEYS[1], 'meta')
local known = ARGV[1]
if current then
  if known == '=' .. current then
    redis.call('HSET', KEYS[1], 'meta', ARGV[2])
    return 1
  end
elseif known == '-' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'meta', ARGV[2])
  return 1
end
return {0, current}
