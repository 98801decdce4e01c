-- REPLAY_DEAD: moves dead letters back to the queue.
--
-- KEYS[1]  the dead-letter list ({P}:dlq)
-- KEYS[2]  the queue ({P}:queue)
-- ARGV     two per letter: the letter as stored in KEYS[1]; the envelope to
--          queue for it (its event with the attempts reset)
-- Returns  how many letters moved.
--
-- Atomic move, per letter: LREM from the dead-letter list, and only if that
-- removed it, LPUSH its envelope. A letter already replayed or purged by
-- another operator (or by this replay's earlier run) is not queued again.
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
