-- Who holds each unique key, read in one round trip (the producer WATCHes the keys first).
-- KEYS: the unique keys. ARGV[1]: RQ's job key prefix. ARGV[2..]: the statuses that end a job.
-- Returns, per key, the holder's job id if that job still holds it ('' if the key is free):
-- a key is held while its job is not ended, and for the TTL the key was given at the job's end;
-- a key without a TTL whose job ended (or is gone) is a leftover, and free.
local ended = {}
for i = 2, #ARGV do ended[ARGV[i]] = true end
local out = {}
for i, k in ipairs(KEYS) do
  local holder = redis.call('GET', k)
  if not holder then
    out[i] = ''
  elseif redis.call('PTTL', k) > 0 then
    out[i] = holder
  else
    local status = redis.call('HGET', ARGV[1] .. holder, 'status')
    if status and not ended[status] then out[i] = holder else out[i] = '' end
  end
end
return out
