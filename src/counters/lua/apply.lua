-- APPLY: applies a set of counter updates; for a committed batch, exactly
-- once, and acknowledges the worker's processing list in the same step.
--
-- KEYS[1]  the worker's processing list ({P}:processing:<worker>), or any
--          key of the prefix when mode has no 'a'
-- KEYS[2]  the batch's applied-marker ({P}:applied:<batch>), or any key of
--          the prefix when mode has no 'm'
-- KEYS[3]  the pause flag ({P}:counters-paused) that reconcile sets
-- KEYS[4…] every key the ops touch, all under the counter root {P}:c:
--          (one slot); an op names a key by its index in KEYS, written
--          `#key` below
-- ARGV[1]  the marker's TTL in seconds
-- ARGV[2]  mode: 'a' deletes KEYS[1] (the acknowledgement), 'm' guards the
--          updates with the marker and the pause flag, '-' neither
-- ARGV[3]  the batch id ('' outside a batch), matched against exclusion sets
-- ARGV[4…] the ops, each a code and its arguments:
--   H #key field n      HINCRBY
--   A #key #excluded field n
--                      HINCRBY of an all-time ad count, only if the key
--                      exists and the batch is not in `excluded` (a rebuild
--                      already counted it)
--   P nkeys #key… count member…
--                      PFADD of the members to every key
--   Q nkeys #key… #key count member…
--                      PFADD of the members to every key of the first
--                      nkeys, and to the last (an all-time key) only if it
--                      exists
--   G #ranking #seen #pending #screens #excluded campaign screen n now ttl
--                      plays of a ranked campaign (skipped when `excluded`
--                      holds the batch); a campaign absent from the ranking
--                      goes to `pending` instead
--   C #ranking #seen #pending cutoff limit ttl
--                      drops up to `limit` campaigns last seen before
--                      `cutoff`, prunes `pending`, refreshes the campaign
--                      keys' TTL. A dropped campaign's screens and skip
--                      list are not named here: they expire on their own
--                      (the screens' TTL is refreshed by the same plays
--                      that move `seen`; a skip list lives MARKER_TTL)
--   Z #key member n    ZINCRBY      L #key member score  ZADD
--   T #key seconds     EXPIRE, if the key exists
--   X #key unixtime    EXPIREAT
-- Returns  'paused' (reconcile runs: nothing changed but the
--          acknowledgement), 'seen' (the marker was set: a second run of an
--          applied batch changes nothing but the acknowledgement and the
--          marker's TTL) or 'ok'.
--
-- Atomic move: marker set, every update, and the processing list deleted,
-- all or none. Every key touched is in KEYS.
local mode = ARGV[2]
local batch = ARGV[3]
local function key(j) return KEYS[tonumber(ARGV[j])] end
local function ack() if string.find(mode, 'a', 1, true) then redis.call('DEL', KEYS[1]) end end
if string.find(mode, 'm', 1, true) then
  if redis.call('EXISTS', KEYS[3]) == 1 then ack() return 'paused' end
  if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
    -- A write after the first application's in the replication stream,
    -- so a WAIT that follows this call confirms that application too.
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    ack()
    return 'seen'
  end
end
local function counted(excluded)
  return batch ~= '' and redis.call('SISMEMBER', excluded, batch) == 1
end
local i = 4
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'H' then
    redis.call('HINCRBY', key(i + 1), ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'A' then
    local k = key(i + 1)
    if redis.call('EXISTS', k) == 1 and not counted(key(i + 2)) then
      redis.call('HINCRBY', k, ARGV[i + 3], ARGV[i + 4])
    end
    i = i + 5
  elseif op == 'P' then
    local k = tonumber(ARGV[i + 1])
    local n = tonumber(ARGV[i + 2 + k])
    for j = 1, k do
      redis.call('PFADD', key(i + 1 + j), unpack(ARGV, i + 3 + k, i + 2 + k + n))
    end
    i = i + 3 + k + n
  elseif op == 'Q' then
    local k = tonumber(ARGV[i + 1])
    local n = tonumber(ARGV[i + 3 + k])
    local first, last = i + 4 + k, i + 3 + k + n
    for j = 1, k do
      redis.call('PFADD', key(i + 1 + j), unpack(ARGV, first, last))
    end
    local all = key(i + 2 + k)
    if redis.call('EXISTS', all) == 1 then
      redis.call('PFADD', all, unpack(ARGV, first, last))
    end
    i = last + 1
  elseif op == 'G' then
    local ranking, seen, pending, screens = key(i + 1), key(i + 2), key(i + 3), key(i + 4)
    local campaign, screen, n, now, ttl = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10]
    if redis.call('ZSCORE', ranking, campaign) then
      if not counted(key(i + 5)) then
        redis.call('ZINCRBY', ranking, n, campaign)
        if screen ~= '' then redis.call('ZINCRBY', screens, n, screen) end
      end
      -- The screens live as long as their campaign plays.
      if redis.call('EXISTS', screens) == 1 then redis.call('EXPIRE', screens, ttl) end
      redis.call('ZADD', seen, now, campaign)
    else
      redis.call('ZADD', pending, 'NX', now, campaign)
    end
    i = i + 11
  elseif op == 'C' then
    local ranking, seen, pending = key(i + 1), key(i + 2), key(i + 3)
    local cutoff, ttl = ARGV[i + 4], ARGV[i + 6]
    local stale = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. cutoff, 'LIMIT', 0, ARGV[i + 5])
    for _, c in ipairs(stale) do
      redis.call('ZREM', ranking, c)
      redis.call('ZREM', seen, c)
    end
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', '(' .. cutoff)
    for _, k in ipairs({ranking, seen, pending}) do
      if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ttl) end
    end
    i = i + 7
  elseif op == 'Z' then
    redis.call('ZINCRBY', key(i + 1), ARGV[i + 3], ARGV[i + 2])
    i = i + 4
  elseif op == 'L' then
    redis.call('ZADD', key(i + 1), ARGV[i + 3], ARGV[i + 2])
    i = i + 4
  elseif op == 'T' then
    local k = key(i + 1)
    if redis.call('EXISTS', k) == 1 then redis.call('EXPIRE', k, ARGV[i + 2]) end
    i = i + 3
  elseif op == 'X' then
    redis.call('EXPIREAT', key(i + 1), ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown counter op ' .. tostring(op))
  end
end
ack()
return 'ok'
