-- EPOCH_EXTEND: extends the rebuild lease while its holder works.
--
-- KEYS[1]  the rebuild lease ({P}:epoch-rebuild)
-- ARGV[1]  the lease holder
-- ARGV[2]  the new lifetime in seconds
-- Returns  1 when extended, 0 when the lease is no longer the holder's.
--
-- Atomic move: compare the holder and extend in one step, so a lease that
-- expired and was taken by another process is never extended.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
