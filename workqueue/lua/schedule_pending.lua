-- Settle a tick's batch that was claimed (schedule_claim.lua) but is not known to be enqueued.
-- KEYS[1]: the schedule's hash. ARGV[1]: the batch id; ARGV[2]: "done" or "take".
-- "done": the batch is enqueued: forget it is pending (if it still is this batch). Returns 1 if so.
-- "take": a consumer takes over a batch whose claimer has not settled it for ARGV[4] seconds
-- (it died between the claim and the enqueue): returns 1 to the one consumer that gets it, and
-- restarts the wait (ARGV[3]: now), so no two consumers take it over at once.
local h = redis.call('HMGET', KEYS[1], 'pending', 'pending_at')
if h[1] ~= ARGV[1] then
    return 0
end
if ARGV[2] == 'done' then
    redis.call('HDEL', KEYS[1], 'pending', 'pending_at')
    return 1
end
if tonumber(ARGV[3]) - tonumber(h[2] or '0') < tonumber(ARGV[4]) then
    return 0
end
redis.call('HSET', KEYS[1], 'pending_at', ARGV[3])
return 1
