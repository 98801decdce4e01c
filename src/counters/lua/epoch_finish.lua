-- EPOCH_FINISH: ends a rebuild.
--
-- KEYS[1]  the epoch hash ({P}:epoch)
-- KEYS[2]  the rebuild lease ({P}:epoch-rebuild)
-- ARGV[1]  the epoch id the rebuild was for
-- ARGV[2]  now (RFC 3339)
-- ARGV[3]  the lease holder
-- ARGV[4]  outcome: 'done' (write rebuiltAt if the epoch is still ARGV[1],
--          free the lease), 'keep:<ms>' (keep the lease that long, so a
--          failing rebuild is retried later), 'free' (free the lease)
-- Returns  1.
--
-- Atomic move: rebuiltAt written only for the epoch that was rebuilt (a
-- Redis emptied again meanwhile has a new id and is rebuilt again), and
-- only the holder's own lease is touched (one that expired and was taken
-- by another process stays that process's).
if ARGV[4] == 'done' and redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'rebuiltAt', ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  local keep = string.match(ARGV[4], '^keep:(%d+)$')
  if keep then redis.call('PEXPIRE', KEYS[2], keep) else redis.call('DEL', KEYS[2]) end
end
return 1
