-- SWAP: moves reconcile's staging keys over the live ones and sets the
-- applied-markers of the outbox batches its snapshot took.
--
-- KEYS[1]  the pause flag ({P}:counters-paused), so a call with nothing
--          else to move is still routed to the prefix's slot
-- KEYS[2…] d stale live keys to delete, then r (staging, live) pairs to
--          rename, then the applied-markers to set; all carry the {P} tag
-- ARGV[1]  d
-- ARGV[2]  r
-- ARGV[3]  the marker TTL in seconds
-- Returns  1.
--
-- Atomic move: within one call, stale keys removed, staged keys renamed in
-- and the batches' markers set together, so a batch the snapshot counted
-- is never applied again (APPLY finds its marker).
local d, r = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 2, 1 + d do redis.call('DEL', KEYS[i]) end
for i = 2 + d, 1 + d + 2 * r, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('RENAME', KEYS[i], KEYS[i + 1]) end
end
for i = 2 + d + 2 * r, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[3]) end
return 1
