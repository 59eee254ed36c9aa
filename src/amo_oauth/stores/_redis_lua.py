"""``RedisStore``'s Lua: one script per operation, each run by Redis alone (atomically).

Every script but ``migrate`` gets ``KEYS[1]`` = the schema marker, ``KEYS[2]`` = the due sorted
set, ``ARGV[1]`` = the schema version, ``ARGV[2]`` = the key prefix and ``ARGV[3]`` = the change
channel, and refuses a database without the marker of this schema (``SCHEMA_REPLY``). Every
write keeps the indexes and PUBLISHes the record key on the change channel.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEMA_REPLY", "SCHEMA_VERSION", "SCRIPTS"]

#: The value of ``{prefix}schema`` this library writes and reads; a database of any other schema
#: is refused. 3 keeps a connection's lifecycle value as its status (in the record body, format
#: 2), which databases of 1 and 2, made before any release, call ``state``: they are not
#: converted.
SCHEMA_VERSION: Final = 3

#: The error a script raises when the schema marker is missing or of another version.
SCHEMA_REPLY: Final = "AMO_OAUTH_SCHEMA"

# Every script gets KEYS[1] = the schema marker, KEYS[2] = the due sorted set, and
# ARGV[1] = the schema version, ARGV[2] = the key prefix, ARGV[3] = the change channel.
_PREAMBLE: Final = f"""
local SCHEMA, DUE = KEYS[1], KEYS[2]
local PREFIX, CHANNEL = ARGV[2], ARGV[3]
local ALL = PREFIX .. 'keys'
local found = redis.call('GET', SCHEMA)
if found ~= ARGV[1] then
  return redis.error_reply('{SCHEMA_REPLY} ' .. (found or 'missing'))
end

local function unlink(rkey, key)
  local account = redis.call('HGET', rkey, 'a')
  if account then
    redis.call('SREM', PREFIX .. 'a:' .. account, key)
  end
  redis.call('ZREM', DUE, key)
  redis.call('ZREM', ALL, key)
  redis.call('DEL', rkey)
end

local function matches(rkey, expected)
  local current = redis.call('HGET', rkey, 'v')
  if expected == '' then
    return not current
  end
  return current == expected
end

-- ARGV[first .. first + 5]: key, version, status, account id, refresh due, data ('' = none)
local function put(rkey, first)
  local key, account, due = ARGV[first], ARGV[first + 3], ARGV[first + 4]
  unlink(rkey, key)
  redis.call('HSET', rkey, 'v', ARGV[first + 1], 's', ARGV[first + 2], 'd', ARGV[first + 5])
  if account ~= '' then
    redis.call('HSET', rkey, 'a', account)
    redis.call('SADD', PREFIX .. 'a:' .. account, key)
  end
  if due ~= '' then
    redis.call('ZADD', DUE, due, key)
  end
  redis.call('ZADD', ALL, 0, key)
  redis.call('PUBLISH', CHANNEL, key)
end

-- key, body, key, body, ...: what a read of many returns, so an unreadable body is named.
local function keyed(keys)
  local out = {{}}
  for _, key in ipairs(keys) do
    local data = redis.call('HGET', PREFIX .. 'c:' .. key, 'd')
    if data then
      table.insert(out, key)
      table.insert(out, data)
    end
  end
  return out
end

-- A ledger entry still held on the store's clock: Redis expires it at its expiry on the
-- server's clock; a store clock ``ahead`` ms in front of it ends it that much sooner.
local function live(lkey, ahead)
  local left = redis.call('PTTL', lkey)
  return left == -1 or left > tonumber(ahead)
end
"""

# KEYS[3] = record key. The server's clock (TIME: seconds, microseconds) with the body (false:
# none), read in one script.
_LOAD: Final = (
    _PREAMBLE
    + """
local now = redis.call('TIME')
return {now[1], now[2], redis.call('HGET', KEYS[3], 'd')}
"""
)

# KEYS[3] = record key; ARGV[4] = expected version ('' = insert); ARGV[5..10] = the row.
_CAS: Final = (
    _PREAMBLE
    + """
if not matches(KEYS[3], ARGV[4]) then
  return 0
end
put(KEYS[3], 5)
return 1
"""
)

# KEYS[3] = record key; ARGV[4] = key, ARGV[5] = expected version.
_DELETE: Final = (
    _PREAMBLE
    + """
if redis.call('HGET', KEYS[3], 'v') ~= ARGV[5] then
  return 0
end
unlink(KEYS[3], ARGV[4])
redis.call('PUBLISH', CHANNEL, ARGV[4])
return 1
"""
)

# KEYS[3] = ledger key; ARGV[4] = value, ARGV[5] = expiry (ms), ARGV[6] = '1' with a holder,
# ARGV[7] = how far (ms) the store's clock runs ahead of the server's.
_CONSUME: Final = (
    _PREAMBLE
    + """
if not live(KEYS[3], ARGV[7]) then
  redis.call('SET', KEYS[3], ARGV[4], 'PXAT', ARGV[5])
  return 1
end
if ARGV[6] == '1' and redis.call('GET', KEYS[3]) == ARGV[4] then
  return 1
end
return 0
"""
)

# KEYS[3] = ledger key; ARGV[4] = how far (ms) the store's clock runs ahead of the server's.
_HOLDER: Final = (
    _PREAMBLE
    + """
if not live(KEYS[3], ARGV[4]) then
  return false
end
return redis.call('GET', KEYS[3])
"""
)

# KEYS[3] = record key, KEYS[4] = code ledger key, KEYS[5] = state ledger key (optional);
# ARGV[4] = expected version, ARGV[5..10] = the row, ARGV[11], ARGV[12] = code value, expiry;
# ARGV[13], ARGV[14] = state value, expiry; ARGV[15] = how far (ms) the store's clock runs ahead
# of the server's. Everything is checked before anything is written.
_CLAIM: Final = (
    _PREAMBLE
    + """
local AHEAD = ARGV[15]
local function free_or_ours(lkey, value)
  return (not live(lkey, AHEAD)) or redis.call('GET', lkey) == value
end
local function take(lkey, value, expiry)
  if not live(lkey, AHEAD) then
    redis.call('SET', lkey, value, 'PXAT', expiry)
  end
end
local with_state = #KEYS >= 5
if with_state and not free_or_ours(KEYS[5], ARGV[13]) then
  return 'state_used'
end
if not free_or_ours(KEYS[4], ARGV[11]) then
  return 'code_taken'
end
if not matches(KEYS[3], ARGV[4]) then
  return 'record_changed'
end
if with_state then
  take(KEYS[5], ARGV[13], ARGV[14])
end
take(KEYS[4], ARGV[11], ARGV[12])
put(KEYS[3], 5)
return 'claimed'
"""
)

# ARGV[4] = account id.
_FIND: Final = _PREAMBLE + "return keyed(redis.call('SMEMBERS', PREFIX .. 'a:' .. ARGV[4]))\n"

# ARGV[4] = '(' + cutoff (exclusive), ARGV[5] = limit, ARGV[6] = the cursor's score ('' = from
# the start), ARGV[7] = the cursor's key. Records of one score are ordered by member (bytes);
# the first one past the cursor's key is found by bisecting that run by rank, comparing bytes
# (Lua's own string order follows the server's locale, so it is not used).
_DUE_PAGE: Final = (
    _PREAMBLE
    + """
local function key_before(a, b)
  if a == b then
    return false
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end
local start = 0
if ARGV[6] ~= '' then
  local lo = redis.call('ZCOUNT', DUE, '-inf', '(' .. ARGV[6])
  local hi = lo + redis.call('ZCOUNT', DUE, ARGV[6], ARGV[6])
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if key_before(ARGV[7], redis.call('ZRANGE', DUE, mid, mid)[1]) then
      hi = mid
    else
      lo = mid + 1
    end
  end
  start = lo
end
local stop = math.min(start + tonumber(ARGV[5]), redis.call('ZCOUNT', DUE, '-inf', ARGV[4])) - 1
if stop < start then
  return {}
end
return keyed(redis.call('ZRANGE', DUE, start, stop))
"""
)

# ARGV[4] = '(' + the key to start after, or '-' (from the first); ARGV[5] = limit.
_SCAN: Final = (
    _PREAMBLE
    + "return keyed(redis.call('ZRANGE', ALL, ARGV[4], '+', 'BYLEX', 'LIMIT', 0, ARGV[5]))\n"
)

# KEYS[1] = the schema marker; ARGV[1] = this library's version. Returns the stored version:
# a database of another schema keeps it (and is refused); a new one gets this library's.
_MIGRATE: Final = """
local found = redis.call('GET', KEYS[1])
if found then
  return found
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# KEYS[1] = the schema marker. The server's clock and the marker ('' when missing), without the
# preamble: ``check`` reports a missing schema instead of failing on it.
_CHECK: Final = """
local now = redis.call('TIME')
return {now[1], now[2], redis.call('GET', KEYS[1]) or ''}
"""

SCRIPTS: Final = {
    "load": _LOAD,
    "cas": _CAS,
    "delete": _DELETE,
    "consume": _CONSUME,
    "holder": _HOLDER,
    "claim": _CLAIM,
    "find": _FIND,
    "due_page": _DUE_PAGE,
    "scan": _SCAN,
    "migrate": _MIGRATE,
    "check": _CHECK,
}
