-- WRITE_AD: replaces an ad's all-time figures with a Postgres snapshot.
--
-- KEYS[1]  the ad's counts hash ({P}:c:[t:<tenant>:]ad:<adId>)
-- KEYS[2]  its exclusion set (…ax:<adId>): batches the snapshot already
--          counts whose outbox rows still stand (update not run yet, or
--          run and its row not deleted yet)
-- KEYS[3]  its unique-click HyperLogLog (…ua:<adId>)
-- ARGV[1]  the TTL of the figures, seconds
-- ARGV[2]  the TTL of the exclusion set, seconds (the marker TTL)
-- ARGV[3]  n, the number of (field, value) pairs that follow
-- ARGV[4…] n (field, value) pairs, then the batch ids to exclude
-- Returns  1.
--
-- Atomic move: the three keys replaced together, with the batches still in
-- the outbox in the skip list, so a batch applied after this snapshot
-- skips these keys (APPLY's 'A' op) and is counted once. The IPs follow in
-- PFADD calls while the caller still holds the outbox lock.
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local n = tonumber(ARGV[3])
local i = 4
-- Every kind's field is written, zeros too, so the hash always exists.
redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * n - 1))
i = i + 2 * n
redis.call('EXPIRE', KEYS[1], ARGV[1])
if i <= #ARGV then
  redis.call('SADD', KEYS[2], unpack(ARGV, i, #ARGV))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
redis.call('PFADD', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
