-- Enqueue a chunk of jobs in one call (workqueue.producer._commit_at_once): what the enqueueing
-- transaction of MULTI, batch_open and some twenty commands wrote, key for key, in one EVALSHA.
-- KEYS: 1 the data mark, 2 the batch, 3 its ended ids, 4 its events, 5 the statistics' minute bucket,
--   6 the statistics' set of queues, 7 the queue's backlog, 8 RQ's set of queues, 9 RQ's group of the
--   batch, 10 RQ's set of groups; then per job two keys: its hash and the list it is pushed onto.
-- ARGV: 1 a new mark ('': the mark is not read), 2 the batch's total ('': the batch is open already),
--   3 the queue's name, 4 the batch keys' TTL, 5 the statistics' TTL, 6 the queue's key (RQ's set of
--   queues holds it), 7 the batch id, 8 the backlog's score (the producer's clock, as backlog.add),
--   9 T, then T pairs (statistics field, count); then per job: its id, F, then F hash field-value pairs.
-- Returns {created, mark}: whether this call set the mark, and the mark (DataMark.adopted's replies).
-- The first write is a command Redis refuses when out of memory (SET, HSET or HINCRBY), so a Redis
-- refusing writes (OOM, MISCONF, READONLY) refuses the whole call before anything is written.
local created, mark = 0, false
if ARGV[1] ~= '' then
  mark = redis.call('GET', KEYS[1])
  if not mark then
    redis.call('SET', KEYS[1], ARGV[1], 'NX')
    created, mark = 1, ARGV[1]
  end
end
local ttl = ARGV[4]
if ARGV[2] ~= '' then  -- as batch_open.lua
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[2], 'total', ARGV[2], 'remaining', ARGV[2], 'finished', 0, 'failed', 0,
             'queue', ARGV[3], 'created_at', t[1] .. '.' .. string.format('%06d', t[2]))
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('SADD', KEYS[3], '')
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('XADD', KEYS[4], 'MAXLEN', '0', '*', 'batch', 'open')
  redis.call('EXPIRE', KEYS[4], ttl)
end
local tasks = tonumber(ARGV[9])
local i = 10
for _ = 1, tasks do  -- as jobstats.count_enqueued
  redis.call('HINCRBY', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('SADD', KEYS[6], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[5])
-- the jobs: ids first (the backlog and the group take them in runs of at most STEP), then each hash and push
local STEP = 1000  -- producer.CHUNK: one command each for a whole chunk
local ids, starts = {}, {}
local at = i
while at <= #ARGV do
  ids[#ids + 1] = ARGV[at]
  starts[#starts + 1] = at
  at = at + 2 + 2 * tonumber(ARGV[at + 1])
end
for first = 1, #ids, STEP do
  local scored = {}
  for n = first, math.min(first + STEP - 1, #ids) do
    scored[#scored + 1] = ARGV[8]
    scored[#scored + 1] = ids[n]
  end
  redis.call('ZADD', KEYS[7], unpack(scored))
end
redis.call('SADD', KEYS[8], ARGV[6])
local normal = 0  -- jobs pushed onto RQ's own list, the others onto a level's
for n = 1, #ids do
  local s = starts[n]
  redis.call('HSET', KEYS[9 + 2 * n], unpack(ARGV, s + 2, s + 1 + 2 * tonumber(ARGV[s + 1])))
  redis.call('RPUSH', KEYS[10 + 2 * n], ids[n])
  if KEYS[10 + 2 * n] == ARGV[6] then normal = normal + 1 end
end
for first = 1, #ids, STEP do
  redis.call('SADD', KEYS[9], unpack(ids, first, math.min(first + STEP - 1, #ids)))
end
redis.call('EXPIRE', KEYS[9], ttl)
redis.call('SADD', KEYS[10], ARGV[7])
ring(ARGV[3], normal, #ids - normal)  -- bell.lua, sent before this script
return {created, mark}
