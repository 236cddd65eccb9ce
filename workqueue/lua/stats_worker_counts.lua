-- Add to a worker's RQ counters, only while its hash lives (tallies.Tally). KEYS: the worker's hash.
-- ARGV: jobs succeeded, seconds spent working.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'successful_job_count', ARGV[1])
redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', ARGV[2])
return 1
