"""Lua scripts of usage budgets. Imports nothing; each script touches one agent's hash slot.

The budget hash lives exactly as long as its grant: every write sets PEXPIREAT to the grant key's
own absolute expiry (PEXPIRETIME) in the same atomic step, so no budget key ever lacks a TTL.
"""

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
