-- PROMOTE_DUE: moves retries that are due back to the queue.
--
-- KEYS[1]  the retry set ({P}:retry, score = due time in ms)
-- KEYS[2]  the queue ({P}:queue)
-- ARGV[1]  now, in ms: items scored at or before it are due
-- ARGV[2]  most items to move
-- Returns  how many items moved.
--
-- Atomic move, per item: ZREM from the retry set and LPUSH onto the queue
-- in one script, so a due retry is in one of the two, never both.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, item in ipairs(due) do
  redis.call('ZREM', KEYS[1], item)
  redis.call('LPUSH', KEYS[2], item)
end
return #due
