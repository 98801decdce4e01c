-- WRITE_CAMPAIGN: ranks one campaign from a Postgres snapshot.
--
-- KEYS[1]  the campaign ranking ({P}:c:[t:<tenant>:]cz)
-- KEYS[2]  last play per campaign (…cl)
-- KEYS[3]  campaigns waiting to be ranked (…cn)
-- KEYS[4]  the campaign's screens (…cs:<campaignId>)
-- KEYS[5]  its exclusion set (…cx:<campaignId>)
-- ARGV[1]  the campaign id
-- ARGV[2]  its plays
-- ARGV[3]  now (Unix seconds)
-- ARGV[4]  the TTL of the figures, seconds
-- ARGV[5]  the TTL of the exclusion set, seconds (the marker TTL)
-- ARGV[6]  n, the number of (plays, screen) pairs that follow
-- ARGV[7…] n (plays, screen) pairs, then the batch ids to exclude
-- Returns  1.
--
-- Atomic move: the campaign leaves the pending set and enters the ranking
-- with its screens and its skip list in one step, so a batch still in the
-- outbox skips it (APPLY's 'G' op) and is counted once.
local c = ARGV[1]
redis.call('ZREM', KEYS[3], c)
redis.call('DEL', KEYS[4], KEYS[5])
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], c)
  redis.call('ZADD', KEYS[2], ARGV[3], c)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local n = tonumber(ARGV[6])
local i = 7
if n > 0 then
  redis.call('ZADD', KEYS[4], unpack(ARGV, i, i + 2 * n - 1))
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
i = i + 2 * n
if i <= #ARGV then
  redis.call('SADD', KEYS[5], unpack(ARGV, i, #ARGV))
  redis.call('EXPIRE', KEYS[5], ARGV[5])
end
return 1
