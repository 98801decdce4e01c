-- RESERVE: moves the oldest items of the queue to a worker's empty
-- processing list.
--
-- KEYS[1]  the queue ({P}:queue); LPUSH adds on the left, so the oldest
--          items are on the right
-- KEYS[2]  the worker's processing list ({P}:processing:<worker>)
-- ARGV[1]  most items to move
-- Returns  the length of the processing list after the call: 0 when it was
--          empty and the queue too. A list that already holds items (an
--          earlier call moved them and its answer was lost: a connection
--          cut, a failover) gets nothing more, so that the worker, which
--          reads the whole list next, processes those first.
--
-- Atomic move: SORT … STORE copies the oldest ARGV[1] items, in queue
-- order, to the processing list and LTRIM takes them off the queue, so an
-- item is on one list or the other and never both or neither, whenever the
-- worker crashes. The items never pass through Lua: the worker reads them
-- with LRANGE.
local held = redis.call('LLEN', KEYS[2])
if held > 0 then return held end
local len = redis.call('LLEN', KEYS[1])
if len == 0 then return 0 end
local n = math.min(len, tonumber(ARGV[1]))
redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[2])
redis.call('LTRIM', KEYS[1], 0, -n - 1)
return n
