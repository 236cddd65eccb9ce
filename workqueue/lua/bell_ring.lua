-- Ring the idle bells of ARGV[1] (a queue's name) for ARGV[2] jobs pushed onto its normal list and
-- ARGV[3] onto other levels' (bell.lua, sent before this). Returns how many workers were rung.
return ring(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
