"""Lua scripts of the grant store and of usage budgets. Imports nothing; one hash slot each.

Every write uses an absolute expiry (PXAT) in the same atomic step as the data. A key that might
exist without a TTL is never created: index keys get PEXPIREAT right after ZADD, inside the script.
"""

# KEYS: decision, grant, index, revoked, quarantine, life, published, view marker (of the
#       agent's slot: keyspace.view_marker), owner, rate, and optionally the partition's claimed
#       epoch (keyspace.fence: another slot, so never on a cluster, where the store reads it first)
# ARGV: decision record, grant_json ('' if denied), expires_at_ms, received_at_ms, now_ms,
#       record_until_ms, grant_id, fence epoch (0 = unfenced), rate capacity (0 = no limit),
#       rate period ms
# Returns {status, decision record, live grant_json or '', legacy published 0/1 (or blocked
# detail)}. The record is in broker/adapters/redis/records.py's form (its first byte: published
# or not).
# Order: a stale owner (of the partition, or of the agent) is fenced before anything; a recorded
# decision stands; nothing is decided on a view that was not rebuilt; a grant must survive
# quarantine/revocation/staleness; only then does the request take a token of its agent's rate
# limit (so a blocked attempt costs none).
# Epochs are microseconds (16 digits): string.format('%d'), as tostring would print 1.79e+15.
COMMIT = """
local epoch = tonumber(ARGV[8])
if epoch > 0 then
  if KEYS[11] then
    local claimed = tonumber(redis.call('GET', KEYS[11]) or '0')
    if claimed > epoch then return {'fenced', string.format('%d', claimed), '', 0} end
  end
  local owner = tonumber(redis.call('GET', KEYS[9]) or '0')
  if owner > epoch then return {'fenced', string.format('%d', owner), '', 0} end
  if owner < epoch then redis.call('SET', KEYS[9], ARGV[8], 'PXAT', ARGV[6]) end
end
local existing = redis.call('GET', KEYS[1])
if existing then
  return {'existing', existing, redis.call('GET', KEYS[2]) or '', redis.call('EXISTS', KEYS[7])}
end
if redis.call('EXISTS', KEYS[8]) == 0 then return {'blocked', 'view', '', 0} end
if ARGV[2] ~= '' then
  local q = redis.call('GET', KEYS[5])
  if q then return {'blocked', 'quarantine', q, 0} end
  local rv = redis.call('GET', KEYS[4])
  if rv and tonumber(rv) >= tonumber(ARGV[4]) then return {'blocked', 'revoked', rv, 0} end
  if tonumber(ARGV[3]) <= tonumber(ARGV[5]) then return {'blocked', 'stale', ARGV[3], 0} end
end
local cap = tonumber(ARGV[9])
if cap > 0 then
  local per, now = tonumber(ARGV[10]), tonumber(ARGV[5])
  local b = redis.call('HMGET', KEYS[10], 't', 'ts')
  local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * cap / per); ts = now end
  if tokens < 1 then
    return {'blocked', 'rate', string.format('%d', math.ceil((1 - tokens) * per / cap)), 0}
  end
  local left = string.format('%.6f', tokens - 1)
  redis.call('HSET', KEYS[10], 't', left, 'ts', string.format('%d', ts))
  redis.call('PEXPIREAT', KEYS[10], string.format('%d', ts + per))
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3])
  redis.call('SET', KEYS[6], ARGV[3], 'PXAT', ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[7])
  if redis.call('PTTL', KEYS[3]) < 0 then
    redis.call('PEXPIREAT', KEYS[3], ARGV[6])
  else
    redis.call('PEXPIREAT', KEYS[3], ARGV[6], 'GT')
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[6])
return {'stored', ARGV[1], ARGV[2], 0}
"""

# KEYS: index, revoked, quarantine, revocation-record, owner [, partition claim]
# ARGV: now_ms, marker_until_ms, quarantine_until_ms (0 = none), record_until_ms, agent prefix,
#       quarantine rule, fence epoch (0 = unfenced)
# Returns a JSON array of the GrantIssued JSON of every grant it removed (or the recorded one),
# or the string 'fenced:<epoch>' when a newer owner claimed the signal's partition (the claim
# key, when given) or has written here.
REVOKE_ALL = """
local epoch = tonumber(ARGV[7])
if epoch > 0 then
  if KEYS[6] then
    local claimed = tonumber(redis.call('GET', KEYS[6]) or '0')
    if claimed > epoch then return 'fenced:' .. string.format('%d', claimed) end
  end
  local owner = tonumber(redis.call('GET', KEYS[5]) or '0')
  if owner > epoch then return 'fenced:' .. string.format('%d', owner) end
  if owner < epoch then redis.call('SET', KEYS[5], ARGV[7], 'PXAT', ARGV[4]) end
end
local rec = redis.call('GET', KEYS[4])
if rec then return rec end
local prefix = ARGV[5]
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, gid in ipairs(ids) do
  local g = redis.call('GET', prefix .. 'grant:' .. gid)
  if g then
    table.insert(out, g)
    redis.call('DEL', prefix .. 'grant:' .. gid)
  end
  redis.call('DEL', prefix .. 'life:' .. gid)
end
redis.call('DEL', KEYS[1])
-- requests received up to the end of the quarantine (or the revocation itself) stay denied
local blocked = math.max(tonumber(ARGV[1]), tonumber(ARGV[3]))
local prev = redis.call('GET', KEYS[2])
if (not prev) or tonumber(prev) < blocked then
  redis.call('SET', KEYS[2], string.format('%d', blocked), 'PXAT', ARGV[2])
end
if tonumber(ARGV[3]) > 0 then
  local pt = redis.call('PTTL', KEYS[3])
  local cur = 0
  if pt > 0 then cur = tonumber(ARGV[1]) + pt end
  if tonumber(ARGV[3]) > cur then
    redis.call('SET', KEYS[3], ARGV[6], 'PXAT', ARGV[3])
  end
end
local enc = '[' .. table.concat(out, ',') .. ']'
redis.call('SET', KEYS[4], enc, 'PXAT', ARGV[4])
return enc
"""

# KEYS: index   ARGV: now_ms, scope, resource, agent prefix
# Returns the GrantIssued JSON of a live grant covering (scope, resource), or false.
CHECK = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
for _, gid in ipairs(ids) do
  local g = redis.call('GET', ARGV[4] .. 'grant:' .. gid)
  if g then
    local d = cjson.decode(g)
    local has_scope = false
    for _, s in ipairs(d['scopes']) do if s == ARGV[2] then has_scope = true end end
    if has_scope then
      if #d['resources'] == 0 then return g end
      for _, r in ipairs(d['resources']) do if r == ARGV[3] then return g end end
    end
  end
end
return false
"""

# KEYS: grant, index, life, revoked, quarantine
# ARGV: grant_json, expires_at_ms, now_ms, life_until_ms, grant_id, issued_at_ms,
#       revoked_at_ms (0 = none), marker_until_ms, quarantine_until_ms (0 = none), quarantine rule
# Rebuild: restores one active grant (if it is still live and not revoked) or one revocation.
RESTORE = """
if tonumber(ARGV[7]) > 0 then
  local prev = redis.call('GET', KEYS[4])
  if (not prev) or tonumber(prev) < tonumber(ARGV[7]) then
    redis.call('SET', KEYS[4], ARGV[7], 'PXAT', ARGV[8])
  end
  if tonumber(ARGV[9]) > tonumber(ARGV[3]) then
    redis.call('SET', KEYS[5], ARGV[10], 'PXAT', ARGV[9])
  end
  return 0
end
if tonumber(ARGV[2]) <= tonumber(ARGV[3]) then return 0 end
local rv = redis.call('GET', KEYS[4])
if rv and tonumber(rv) >= tonumber(ARGV[6]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('SET', KEYS[3], ARGV[2], 'PXAT', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
if redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
else
  redis.call('PEXPIREAT', KEYS[2], ARGV[4], 'GT')
end
return 1
"""

# KEYS: life, grant, index   ARGV: grant_id. Ends a grant by release; returns 1 if it was live.
RELEASE = """
local live = redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return live
"""

# KEYS: risk   ARGV: severity, until_ms. Keeps the highest recent severity.
NOTE_RISK = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
end
return redis.call('GET', KEYS[1])
"""

# KEYS: record, grant, index, life, revoked, quarantine, budget (usage counters of the grant)
# ARGV: decision_json, renewed grant_json ('' if denied), new_expires_ms, received_ms, now_ms,
#       record_until_ms, grant_id, life_until_ms, expected current expires_ms
# Returns {status, decision_json or blocked reason}. The life key holds the current expiry.
RENEW = """
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
if ARGV[2] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {'blocked', 'gone'} end
  local cur = redis.call('GET', KEYS[4])
  if (not cur) or cur ~= ARGV[9] then return {'blocked', 'changed'} end
  if redis.call('EXISTS', KEYS[6]) == 1 then return {'blocked', 'quarantine'} end
  local rv = redis.call('GET', KEYS[5])
  if rv and tonumber(rv) >= tonumber(ARGV[4]) then return {'blocked', 'revoked'} end
  if tonumber(ARGV[3]) <= tonumber(ARGV[5]) then return {'blocked', 'stale'} end
  redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3])
  if KEYS[7] and redis.call('EXISTS', KEYS[7]) == 1 then
    redis.call('PEXPIREAT', KEYS[7], ARGV[3], 'GT')  -- budgets last as long as the grant
  end
  redis.call('SET', KEYS[4], ARGV[3], 'PXAT', ARGV[8])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[7])
  if redis.call('PTTL', KEYS[3]) < 0 then
    redis.call('PEXPIREAT', KEYS[3], ARGV[8])
  else
    redis.call('PEXPIREAT', KEYS[3], ARGV[8], 'GT')
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[6])
return {'stored', ARGV[1]}
"""

# KEYS: record, grant, life, index   ARGV: decision_json, release? 1/0, grant_id, record_until_ms
# Returns {status, decision_json or blocked reason}.
RELEASE_OWN = """
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
if ARGV[2] == '1' then
  if redis.call('DEL', KEYS[2]) == 0 then return {'blocked', 'gone'} end
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[4])
return {'stored', ARGV[1]}
"""

# KEYS: decision record, legacy published marker   ARGV: marker_until_ms
# Marks a stored decision as published: flips its first byte (SETRANGE keeps its PXAT); a record
# in the legacy JSON form gets the legacy marker key instead. Nothing is created for a missing one.
MARK_PUBLISHED = """
local flag = redis.call('GETRANGE', KEYS[1], 0, 0)
if flag == '0' then
  redis.call('SETRANGE', KEYS[1], 0, '1')
  return 1
elseif flag == '{' then
  redis.call('SET', KEYS[2], '1', 'PXAT', ARGV[1])
  return 1
end
return 0
"""

# KEYS: fence   Returns the new ownership epoch of one input partition: above every earlier
# one and never below Redis's clock in microseconds, so it keeps growing across a Redis wipe.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = math.max(cur + 1, now)
redis.call('SET', KEYS[1], string.format('%d', new))
return string.format('%d', new)
"""


# --- usage budgets ----------------------------------------------------------------------------
# The budget hash lives exactly as long as its grant: every write sets PEXPIREAT to the grant
# key's own absolute expiry (PEXPIRETIME) in the same atomic step, so no budget key ever lacks a
# TTL.

# KEYS: grant, budget   ARGV: use_id, scope
# Returns {status, used, limit}: 'ok' (counted), 'dup' (this use id was counted before: same
# answer), 'exhausted' (refused, nothing counted), 'gone' (no live grant), 'unlimited'.
# Consumption is atomic: concurrent uses of the last unit cannot both pass, whether or not the
# revocation that follows has reached anyone yet.
CONSUME = """
local prev = redis.call('HGET', KEYS[2], 'use:' .. ARGV[1])
if prev then
  return {'dup', prev, redis.call('HGET', KEYS[2], 'limit:' .. ARGV[2]) or '0'}
end
local g = redis.call('GET', KEYS[1])
if not g then return {'gone', '0', '0'} end
local budgets = cjson.decode(g)['budgets']
local limit = nil
if type(budgets) == 'table' then limit = tonumber(budgets[ARGV[2]]) end
if not limit then return {'unlimited', '0', '0'} end
local used = tonumber(redis.call('HGET', KEYS[2], 'used:' .. ARGV[2]) or '0')
if used >= limit then return {'exhausted', tostring(used), tostring(limit)} end
used = used + 1
redis.call('HSET', KEYS[2], 'used:' .. ARGV[2], used, 'limit:' .. ARGV[2], limit,
           'use:' .. ARGV[1], used)
local until_ms = redis.call('PEXPIRETIME', KEYS[1])
if until_ms > 0 then
  redis.call('PEXPIREAT', KEYS[2], until_ms, 'GT')
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIREAT', KEYS[2], until_ms) end
else
  redis.call('DEL', KEYS[2])
  return {'gone', '0', '0'}
end
return {'ok', tostring(used), tostring(limit)}
"""

# KEYS: grant, life, index, record, budget
# ARGV: grant_id, scope, record_until_ms
# Ends one grant because its budget of ``scope`` is used up, once per cause. Only the store's
# own counter decides (a forged or mistaken report revokes nothing).
# Returns {status, grant_json or detail}: 'revoked', 'existing' (done before: same grant),
# 'unverified' (no use of the scope counted), 'not-exhausted'.
REVOKE_EXHAUSTED = """
local rec = redis.call('GET', KEYS[4])
if rec then return {'existing', rec} end
local used = redis.call('HGET', KEYS[5], 'used:' .. ARGV[2])
local limit = redis.call('HGET', KEYS[5], 'limit:' .. ARGV[2])
if (not used) or (not limit) then return {'unverified', ''} end
if tonumber(used) < tonumber(limit) then return {'not-exhausted', used} end
local g = redis.call('GET', KEYS[1]) or ''
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], g, 'PXAT', ARGV[3])
return {'revoked', g}
"""
