-- The body of guarded(ARGV, o, last): one guarded transaction, its words ARGV[o + 1 .. last] (see
-- guarded.py): its guard (a mode, a started registry, a count n and n members), then its commands,
-- each as its number of words and its words. Called once on the whole ARGV (one transaction), or
-- once per transaction of a group (guarded_group.lua).
local mode, registry, n = ARGV[o + 1], ARGV[o + 2], tonumber(ARGV[o + 3])
if mode == 'holds' then
  local held = false
  for j = o + 4, o + 3 + n do
    if redis.call('ZSCORE', registry, ARGV[j]) then held = true end
  end
  if not held then return {'superseded'} end
elseif mode == 'claim' then
  local removed = 0
  for j = o + 4, o + 3 + n do removed = removed + redis.call('ZREM', registry, ARGV[j]) end
  if removed == 0 then return {'superseded'} end
end
local function refusal(reply)
  if type(reply) == 'table' and reply.err then
    local e = tostring(reply.err)
    if e:find('OOM', 1, true) or e:find('MISCONF', 1, true) or e:find('READONLY', 1, true) then return e end
  end
  return nil
end
local replies, i, k = {}, o + 4 + n, 0
while i <= last do
  local n = tonumber(ARGV[i])
  local reply
  if ARGV[i + 1] == 'EVAL' then
    local keys = tonumber(ARGV[i + 3])
    local ok, r = pcall(scripts[ARGV[i + 2]], {unpack(ARGV, i + 4, i + 3 + keys)}, {unpack(ARGV, i + 4 + keys, i + n)})
    if ok or type(r) == 'table' then reply = r else reply = {err = tostring(r)} end
  else
    reply = redis.pcall(unpack(ARGV, i + 1, i + n))
  end
  local refused = refusal(reply)
  if refused then return redis.error_reply(refused) end
  k = k + 1
  if reply == nil then replies[k] = false else replies[k] = reply end
  i = i + n + 1
end
return replies
