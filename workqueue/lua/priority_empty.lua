-- Empty a queue's priority level lists as RQ's Queue.empty empties its own list: each waiting job's
-- hash, result and dependents key deleted with it (priorities.install).
-- KEYS: the level lists. ARGV: the job key prefix, the result key prefix. Answers how many jobs went.
local count = 0
for _, list in ipairs(KEYS) do
  while true do
    local job_id = redis.call('LPOP', list)
    if not job_id then break end
    redis.call('DEL', ARGV[1] .. job_id, ARGV[2] .. job_id, ARGV[1] .. job_id .. ':dependents')
    count = count + 1
  end
end
return count
