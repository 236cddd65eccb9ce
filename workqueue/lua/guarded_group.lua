-- Several guarded transactions in one request: a horse running several jobs at once sends the
-- writes that are ready at the same moment together (``worker.commits``). Each runs as
-- guarded_run.lua runs one (``guarded``: its guard, then its commands), only if its own guard holds.
-- ARGV: the number of transactions, then each as its number of words and its words (guarded_run's).
-- Answers one reply per transaction: its replies, or {'superseded'}. A write Redis refuses for now
-- (OOM, MISCONF, READONLY) ends the request with that error; Redis refuses only a script's first
-- write for want of memory, and every write for the others, so nothing at all has been written.
local answers, i = {}, 2
for t = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[i])
  local reply = guarded(ARGV, i, i + n)
  if reply.err then return reply end
  answers[t] = reply
  i = i + n + 1
end
return answers
