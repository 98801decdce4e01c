-- TAKE: charges one request to every token bucket it touches, or to none.
--
-- KEYS     the buckets, one hash each ({P}:rl:ip:<client>, {P}:rl:ad:<tenant>:<ad>)
--          with fields 'tokens' and 'at' (ms of Redis's clock)
-- ARGV     three per bucket, in KEYS order: rate (tokens a second), burst
--          (most tokens held), cost (tokens this request takes)
-- Returns  {1, 0, 0} when every bucket took its cost; else {0, wait_ms, i}:
--          how long until bucket i, the one furthest short, would take it.
--
-- Atomic move: every bucket is read and refilled first; only when all of
-- them hold their cost (or are full, when the cost exceeds the burst) is
-- any written. A refused request changes no bucket; an accepted one is
-- charged in every bucket by this one call. The whole cost is taken either
-- way, so a batch larger than the burst leaves the bucket in debt until it
-- refills (charged in full, never refused forever). Redis's own clock
-- (TIME) is used, so instances with skewed clocks agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = {}
local wait = 0
local short = 0
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = tonumber(v[1]) or burst
  local at = tonumber(v[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  left[i] = tokens - cost
  local short_by = math.min(cost, burst) - tokens
  if short_by > 0 then
    local w = math.ceil(short_by * 1000 / rate)
    if w > wait then wait = w short = i end
  end
end
if wait > 0 then return {0, wait, short} end
for i = 1, #KEYS do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  redis.call('HSET', KEYS[i], 'tokens', tostring(left[i]), 'at', now)
  -- A bucket idle long enough to be full again is the same as no bucket.
  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left[i]) * 1000 / rate) + 1000)
end
return {1, 0, 0}
