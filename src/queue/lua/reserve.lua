-- RESERVE: moves the oldest items of the queue to a worker's processing list.
--
-- KEYS[1]  the queue ({P}:queue); LPUSH adds on the left, so the oldest
--          items are on the right
-- KEYS[2]  the worker's processing list ({P}:processing:<worker>)
-- ARGV[1]  most items to move
-- Returns  everything the processing list holds after the move, oldest
--          first: the items moved, plus any that an earlier call moved
--          whose answer was lost (a connection cut, a failover) and that a
--          resent call would otherwise leave behind unseen. An empty array
--          when nothing was moved.
--
-- Atomic move: LRANGE the oldest ARGV[1] items, LTRIM them off the queue and
-- RPUSH them onto the processing list, so an item is on one list or the
-- other and never both or neither, whenever the worker crashes.
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
if #items == 0 then return items end
redis.call('LTRIM', KEYS[1], 0, -#items - 1)
for i = 1, #items, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + 999, #items)))
end
return redis.call('LRANGE', KEYS[2], 0, -1)
