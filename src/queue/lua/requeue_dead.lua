-- REQUEUE_DEAD: gives a dead worker's items back to the queue.
--
-- KEYS[1]  the worker's heartbeat ({P}:worker:<worker>)
-- KEYS[2]  the worker's processing list ({P}:processing:<worker>)
-- KEYS[3]  the queue ({P}:queue)
-- KEYS[4]  the set of worker ids ({P}:workers)
-- ARGV[1]  the worker id
-- Returns  -1 when the heartbeat exists (the worker is alive again: nothing
--          moves, it stays registered), else how many items moved.
--
-- Atomic move: the heartbeat is re-checked inside Redis, then every item
-- moves from the processing list to the consuming (right) end of the queue
-- and the worker is forgotten. A worker that beats again between the
-- reaper's SMEMBERS and this script keeps what it holds.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'RIGHT', 'RIGHT') do n = n + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return n
