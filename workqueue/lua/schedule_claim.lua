-- Claim one tick of a periodic schedule, atomically: the first consumer to ask for a tick gets it,
-- every other one (the same tick, an earlier one, or a schedule changed meanwhile) gets 0.
-- KEYS[1]: the schedule's hash (workqueue:schedule:<name>); KEYS[2]: its history, a list of
-- "tick batch_id claimer" entries, the newest first, capped at ARGV[6].
-- ARGV[1]: the tick (epoch seconds); ARGV[2]: the batch id the claimer will enqueue;
-- ARGV[3]: now (epoch seconds); ARGV[4]: the schedule's version the claimer read;
-- ARGV[5]: the claimer's name (<host>.<pid> of its consumer).
local h = redis.call('HMGET', KEYS[1], 'version', 'paused', 'since', 'last_tick')
if not h[1] or h[1] ~= ARGV[4] then
    return 0 -- removed, or replaced since the claimer read it
end
if h[2] == '1' then
    return 0
end
local tick = tonumber(ARGV[1])
if tick <= tonumber(h[3] or '0') or tick <= tonumber(h[4] or '0') then
    return 0 -- already fired (or before the schedule began)
end
-- pending: the batch is claimed but not known to be enqueued yet (schedule_pending.lua settles it)
redis.call('HSET', KEYS[1], 'last_tick', ARGV[1], 'last_run', ARGV[3], 'last_batch', ARGV[2],
    'pending', ARGV[2], 'pending_at', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'fired', 1)
redis.call('LPUSH', KEYS[2], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[5])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
return 1
