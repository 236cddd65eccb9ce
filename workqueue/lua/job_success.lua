-- A job's success, after its dependents are read: what RQ's handle_job_success writes, as
-- workqueue.worker.end_words builds it, in one script instead of a dozen commands each sent as words
-- of the guarded transaction (their names, counts and the spent fields' names packed by the worker,
-- and each run and answered one by one by guarded_run.lua): ~40 words an end instead of ~75.
-- In order: the job kept compactly (as job_compact.lua: the result and the changed fields set first,
-- then the spent fields deleted, in place); the finished registry (RQ's FinishedJobRegistry.add); the
-- job's, its dependents' and its dependencies' TTL (Job.cleanup); its execution deleted and removed
-- from the started registry, the job's executions and the worker's (Worker.cleanup_execution); and,
-- for a job counted in its batch, its queue's backlog.
-- Run inside a guarded transaction (guarded.py), as guarded_run.lua runs a command: a write Redis
-- refuses for want of memory (OOM), a failed save (MISCONF) or on a replica (READONLY) ends the
-- transaction, and can only be its first write, so nothing is written; any other refused command
-- (a key of the wrong type, say) does not stop the rest, and the first such refusal is the answer.
-- SPENT: the spent fields' names (workqueue.jobs.SPENT_FIELDS, which prepends them to this text).
-- KEYS: 1 the job's hash, 2 its queue's finished registry, 3 its dependents, 4 its dependencies,
--   5 its execution, 6 its queue's started registry, 7 the job's executions, 8 the worker's
--   executions, 9 its queue's backlog ('': not counted in its batch). KEYS[4] is '' for a job with no
--   dependencies: RQ writes that set only for a job enqueued with some, so its EXPIRE would find no key.
-- ARGV: 1 the result as JSON, 2 started_at, 3 ended_at, 4 the finished registry's score, 5 the result
--   TTL, 6 the job's id, 7 its execution's id.
-- Answers 1 (0: the job's hash was gone, and is not made again), or the first refusal.
local refused = false
local function call(...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    local e = tostring(reply.err)
    if e:find('OOM', 1, true) or e:find('MISCONF', 1, true) or e:find('READONLY', 1, true) then error(reply) end
    refused = refused or reply
  end
  return reply
end
local answer = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  call('HSET', KEYS[1], 'result', ARGV[1], 'status', 'finished', 'started_at', ARGV[2], 'ended_at', ARGV[3])
  call('HDEL', KEYS[1], unpack(SPENT))
  answer = 1
end
local ttl, job_id, execution_id = ARGV[5], ARGV[6], ARGV[7]
call('ZADD', KEYS[2], ARGV[4], job_id)
call('EXPIRE', KEYS[1], ttl)
call('EXPIRE', KEYS[3], ttl)
if KEYS[4] ~= '' then call('EXPIRE', KEYS[4], ttl) end
call('DEL', KEYS[5])
local run = job_id .. ':' .. execution_id
call('ZREM', KEYS[6], run)
call('ZREM', KEYS[7], execution_id)
call('SREM', KEYS[8], run)
if KEYS[9] ~= '' then call('ZREM', KEYS[9], job_id) end
return refused or answer
