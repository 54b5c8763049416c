"""The Lua scripts of the Redis session store (stores/sessions/redis.py): each runs whole in Redis,
so a turn is stored whole or not at all and the owner rule is checked in the same step."""

from __future__ import annotations

LIMIT = "MSEV15_SESSION_LIMIT"  # the error a script raises: over the tenant limit
NOT_OWNER = "MSEV15_NOT_OWNER"  # ... and: another end user's session

# KEYS: hash, list, index. ARGV: now, cutoff, ttl_ms, max_messages, max_per_tenant, session id,
# metadata JSON ('' keeps it), user ('' for a tenant-wide caller), that user's index key, the
# save's own id, then the message records. A new session belongs to the user; an existing one must
# be visible to it. A save whose id was already applied (its reply was lost, and it is retried)
# changes nothing. Returns created flag, created_at, last_activity, metadata, owner, then every
# message record.
SAVE = f"""
local hash, list, index = KEYS[1], KEYS[2], KEYS[3]
local now, cutoff, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_messages, max_per_tenant, sid, meta = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local user, user_index, save_id = ARGV[8], ARGV[9], ARGV[10]
local function state(flag)
  local h = redis.call('HMGET', hash, 'created_at', 'last_activity', 'metadata', 'user_id')
  local out = {{flag, h[1], h[2], h[3], h[4] or ''}}
  for _, record in ipairs(redis.call('LRANGE', list, 0, -1)) do
    out[#out + 1] = record
  end
  return out
end
if redis.call('HGET', hash, 'save_id') == save_id then
  return state('0')
end
local last = redis.call('HGET', hash, 'last_activity')
if last and tonumber(last) < cutoff then
  redis.call('DEL', hash, list)
  last = false
end
local created = '0'
if not last then
  redis.call('ZREM', index, sid)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. ARGV[2])
  if redis.call('ZCARD', index) >= max_per_tenant then
    return redis.error_reply('{LIMIT}')
  end
  redis.call('DEL', list)
  redis.call('HSET', hash, 'created_at', now, 'metadata', '{{}}')
  if user ~= '' then
    redis.call('HSET', hash, 'user_id', user, 'user_index', user_index)
  end
  created = '1'
elseif user ~= '' and redis.call('HGET', hash, 'user_id') ~= user then
  return redis.error_reply('{NOT_OWNER}')
end
redis.call('HSET', hash, 'last_activity', now, 'save_id', save_id)
if meta ~= '' then
  redis.call('HSET', hash, 'metadata', meta)
end
if #ARGV > 10 then
  redis.call('RPUSH', list, unpack(ARGV, 11))
  redis.call('LTRIM', list, -max_messages, -1)
end
redis.call('PEXPIRE', hash, ttl)
redis.call('PEXPIRE', list, ttl)
redis.call('ZADD', index, now, sid)
redis.call('PEXPIRE', index, ttl)
local owner_index = redis.call('HGET', hash, 'user_index')
if owner_index then
  redis.call('ZADD', owner_index, now, sid)
  redis.call('PEXPIRE', owner_index, ttl)
end
return state(created)
"""

# KEYS: hash, list. ARGV: cutoff, user ('' for tenant-wide). The owner is checked here, in the read
# itself: returns {} for an absent, expired or foreign session, else the fields and the records.
GET = """
local h = redis.call('HMGET', KEYS[1], 'created_at', 'last_activity', 'metadata', 'user_id')
if not h[2] or tonumber(h[2]) < tonumber(ARGV[1]) then
  return {}
end
if ARGV[2] ~= '' and h[4] ~= ARGV[2] then
  return {}
end
local out = {h[1], h[2], h[3], h[4] or ''}
for _, record in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = record
end
return out
"""

# KEYS: hash, list, index. ARGV: cutoff, session id, user ('' for tenant-wide). Returns 1 when a
# live session visible to the user was deleted; a foreign session is left as it is.
DELETE = """
local h = redis.call('HMGET', KEYS[1], 'last_activity', 'user_id', 'user_index')
if ARGV[3] ~= '' and h[2] ~= ARGV[3] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if h[3] then
  redis.call('ZREM', h[3], ARGV[2])
end
if h[1] and tonumber(h[1]) >= tonumber(ARGV[1]) then
  return 1
end
return 0
"""
