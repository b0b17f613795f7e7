//! The Lua scripts the shared store runs. Each runs atomically in Redis, so one admission is
//! one round trip that checks every limit and takes from all of them or from none. Time is
//! Redis's own (`TIME`), so gateways with skewed clocks share one timeline.
//!
//! Token buckets are the in-process store's ([`crate::limits::bucket`]) in the same exact
//! integer arithmetic: a level in units of 1/`period_ms` of a token, at most
//! `limit × period_ms` (below 2^53 for any limit up to 10^11 per minute, so Lua's doubles
//! hold every value exactly). A bucket is a hash {l: level, t: last update in ms}.
//!
//! Concurrency permits and budget reservations are leases: members of a sorted set scored by
//! their expiry. Their holder renews them (see [`RENEW`]); a crashed holder's expire.

/// What every script starts with: `now`, Redis's clock in ms, and `refill`, a bucket's
/// level at `now` and its time of last update (as the in-process `Bucket::refill`: a level
/// below zero is a debt; past two periods any bucket is full again).
macro_rules! prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function refill(key, limit, period)
  local cap = limit * period
  local s = redis.call('HMGET', key, 'l', 't')
  local level, at = tonumber(s[1]), tonumber(s[2])
  if level == nil or at == nil then level, at = cap, now end
  local el = now - at
  if el < 0 then el = 0 end
  if el > 2 * period then el = 2 * period end
  return math.min(level + el * limit, cap), math.max(now, at), cap
end
"
    };
}

/// KEYS: per budget: its spent counter, its reservations; per concurrency limit: its
/// leases; per rate: its bucket.
/// ARGV: member, lease ms, #budgets, #concurrency, #rates; per budget: limit, micros; per
/// concurrency: limit; per rate: limit, period ms, cost.
/// Returns {0, 0, 0, snapshots…} when admitted, else {kind, index (1-based), detail,
/// snapshots…}: kind 1 budget (detail 1: it would fit but for what is held), 2
/// concurrency, 3 rate (detail: ms to wait), 4 larger than the whole limit. A snapshot is
/// (remaining, ms until full) per rate: after the take when admitted, before it when not.
pub const ADMIT: &str = concat!(
    prelude!(),
    r"
local member, lease = ARGV[1], tonumber(ARGV[2])
local nb, nc, nr = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local k, a = 1, 6
local refused = nil
for i = 1, nb do
  local limit, micros = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  if refused == nil then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now)
    local spent = tonumber(redis.call('GET', KEYS[k]) or '0')
    local held = 0
    for _, m in ipairs(redis.call('ZRANGE', KEYS[k + 1], 0, -1)) do
      held = held + tonumber(string.match(m, ':(%d+)$') or '0')
    end
    if spent >= limit or spent + micros > limit then
      refused = {1, i, 0}
    elseif spent + micros + held > limit then
      refused = {1, i, 1}
    end
  end
  k, a = k + 2, a + 2
end
for i = 1, nc do
  if refused == nil then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
    if redis.call('ZCARD', KEYS[k]) >= tonumber(ARGV[a]) then refused = {2, i, 0} end
  end
  k, a = k + 1, a + 1
end
local rates = {}
for i = 1, nr do
  local limit, period, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local level, at, cap = refill(KEYS[k], limit, period)
  local after = level
  if refused == nil then
    local need = cost * period
    if cost > limit then
      refused = {4, i, 0}
    elseif level < need then
      refused = {3, i, math.floor((need - level + limit - 1) / limit)}
    else
      after = level - need
    end
  end
  rates[i] = {KEYS[k], level, after, limit, period, cap, at}
  k, a = k + 1, a + 3
end
local out
if refused == nil then
  out = {0, 0, 0}
  k, a = 1, 6
  for i = 1, nb do
    redis.call('ZADD', KEYS[k + 1], now + lease, member .. ':' .. ARGV[a + 1])
    redis.call('PEXPIRE', KEYS[k + 1], 2 * lease)
    k, a = k + 2, a + 2
  end
  for i = 1, nc do
    redis.call('ZADD', KEYS[k], now + lease, member)
    redis.call('PEXPIRE', KEYS[k], 2 * lease)
    k = k + 1
  end
  for i = 1, nr do
    local r = rates[i]
    redis.call('HSET', r[1], 'l', r[3], 't', r[7])
    redis.call('PEXPIRE', r[1], 2 * r[5])
  end
else
  out = refused
end
for i = 1, nr do
  local r = rates[i]
  local level = r[2]
  if refused == nil then level = r[3] end
  local missing = r[6] - level
  out[#out + 1] = math.floor(math.max(level, 0) / r[5])
  if missing > 0 and r[4] > 0 then
    out[#out + 1] = math.floor((missing + r[4] - 1) / r[4])
  else
    out[#out + 1] = 0
  end
end
return out
",
);

/// KEYS: per rate: its bucket; per budget: the spent counter of the period the request
/// ended in, the reservations of the one it began in; per concurrency limit: its leases.
/// ARGV: member, #rates, #budgets, #concurrency; per rate: limit, period ms, tokens to
/// charge (negative: refund); per budget: micros spent, micros reserved, seconds the
/// counter is kept.
pub const SETTLE: &str = concat!(
    prelude!(),
    r"
local member = ARGV[1]
local nr, nb, nc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a = 1, 5
for i = 1, nr do
  local limit, period, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local level, at, cap = refill(KEYS[k], limit, period)
  level = math.max(math.min(level - delta * period, cap), -cap)
  redis.call('HSET', KEYS[k], 'l', level, 't', at)
  redis.call('PEXPIRE', KEYS[k], 2 * period)
  k, a = k + 1, a + 3
end
for i = 1, nb do
  local spent, reserved, keep = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  redis.call('ZREM', KEYS[k + 1], member .. ':' .. reserved)
  if spent > 0 then
    redis.call('INCRBY', KEYS[k], spent)
    redis.call('EXPIRE', KEYS[k], keep)
  end
  k, a = k + 2, a + 3
end
for i = 1, nc do
  redis.call('ZREM', KEYS[k], member)
  k = k + 1
end
return 1
",
);

/// KEYS: lease sets; ARGV: lease ms, then the member to renew in each. Members already
/// expired (and removed) are not brought back.
pub const RENEW: &str = concat!(
    prelude!(),
    r"
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return #KEYS
",
);
