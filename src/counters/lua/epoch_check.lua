-- EPOCH_CHECK: reads the Redis epoch; creates it when missing; takes the
-- rebuild lease when a rebuild is due and nobody holds it.
--
-- KEYS[1]  the epoch hash ({P}:epoch: id, resetAt, rebuiltAt)
-- KEYS[2]  the rebuild lease ({P}:epoch-rebuild, holder, with a TTL)
-- ARGV[1]  a fresh epoch id, used only when the epoch is missing
-- ARGV[2]  now (RFC 3339)
-- ARGV[3]  the lease holder (this process)
-- ARGV[4]  the lease's lifetime in seconds
-- Returns  {state, epoch id}: 'reset' (created; the caller holds the
--          lease), 'rebuild' (due; the caller holds the lease), 'rebuilding'
--          (another process holds it) or 'settled' (rebuiltAt is set).
--
-- Atomic move: the epoch created together with the lease, so a Redis that
-- came back empty is rebuilt by exactly one process; a lease that expired
-- with its holder (a crash mid-rebuild) is taken again here.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'resetAt', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
  return {'reset', ARGV[1]}
end
local id = redis.call('HGET', KEYS[1], 'id') or ''
if redis.call('HEXISTS', KEYS[1], 'rebuiltAt') == 1 then return {'settled', id} end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4]) then return {'rebuild', id} end
return {'rebuilding', id}
