local mode, registry, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
if mode == 'holds' then
  local held = false
  for j = 4, 3 + n do
    if redis.call('ZSCORE', registry, ARGV[j]) then held = true end
  end
  if not held then return {'superseded'} end
elseif mode == 'claim' then
  local removed = 0
  for j = 4, 3 + n do removed = removed + redis.call('ZREM', registry, ARGV[j]) end
  if removed == 0 then return {'superseded'} end
end
local function refusal(reply)
  if type(reply) == 'table' and reply.err then
    local e = tostring(reply.err)
    if e:find('OOM', 1, true) or e:find('MISCONF', 1, true) or e:find('READONLY', 1, true) then return e end
  end
  return nil
end
local replies, i, k = {}, 4 + n, 0
while i <= #ARGV do
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
