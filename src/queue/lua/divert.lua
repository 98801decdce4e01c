-- DIVERT: moves failed items out of a processing list to the retry set or
-- the dead-letter list.
--
-- KEYS[1]  the worker's processing list ({P}:processing:<worker>)
-- KEYS[2]  the retry set ({P}:retry, score = due time in ms)
-- KEYS[3]  the dead-letter list ({P}:dlq)
-- ARGV     four per item: the item as held in KEYS[1]; 'R' (retry) or 'D'
--          (dead letter); the due time in ms for 'R', '' for 'D'; the
--          payload to store (the envelope with its attempts, or the letter)
-- Returns  how many items moved.
--
-- Atomic move, per item: LREM from the processing list, and only if that
-- removed it, ZADD to the retry set or LPUSH to the dead-letter list. An
-- item no longer in the processing list (a second run after a crash, or
-- a reaper that requeued it) is skipped, so it is never in two places.
local moved = 0
for i = 1, #ARGV, 4 do
  local removed = redis.call('LREM', KEYS[1], 1, ARGV[i])
  if removed > 0 then
    if ARGV[i + 1] == 'R' then
      redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 3])
    else
      redis.call('LPUSH', KEYS[3], ARGV[i + 3])
    end
    moved = moved + 1
  end
end
return moved
