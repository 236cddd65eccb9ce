-- Idle bells (workqueue/bells.py): wake idle workers that no BLMOVE of theirs would wake for jobs
-- just pushed onto `queue` (`normal` of them onto RQ's own list, `others` onto other levels' lists).
-- An idle worker blocks on one list only, its first open queue's normal one; its claim (claim.lua)
-- put it in that queue's 'blocked' set and in every other queue's 'deaf' set. A job on a normal
-- list with a worker blocked on it needs no bell: Redis hands it over. Each bell is a PUBLISH on
-- the worker's own command channel, and takes the worker out of the set: it claims, or it puts
-- itself back. A worker no longer listening (gone) answers nothing, and the next one is rung.
-- Costs one EXISTS when no worker is idle (a drain).
local function ring(queue, normal, others)
  local deaf, blocked = 'workqueue:bell:' .. queue .. ':deaf', 'workqueue:bell:' .. queue .. ':blocked'
  if normal + others == 0 or redis.call('EXISTS', deaf, blocked) == 0 then return 0 end
  local want, sets = others, {deaf, blocked}
  if normal > 0 and redis.call('EXISTS', blocked) == 0 then want = want + normal end
  if others == 0 then sets = {deaf} end
  local rung = 0
  for _, set in ipairs(sets) do
    while rung < want do
      local name = redis.call('SPOP', set)
      if not name then break end
      if redis.call('PUBLISH', 'rq:pubsub:' .. name, '{"command": "wake"}') > 0 then rung = rung + 1 end
    end
  end
  return rung
end
