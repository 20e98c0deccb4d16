/**
 * The Lua scripts that change a job in Redis. Each runs atomically, so two replicas that receive calls for the same
 * job (a worker's progress at one, its result at another, a client's cancel at a third) never interleave: the
 * ownership check (the job runs on this worker, in this attempt) and the change are one step. That is what makes
 * the answer to a client exactly-once although delivery to workers is at-least-once.
 *
 * Keys (prefix `chorus:<endpoint>:`): `pending` (list of waiting job ids, head first), `job:<id>` (hash),
 * `ev:<id>` (stream of the job's events), `active` (sorted set of unfinished jobs by deadline), `run:<worker>` (set
 * of the jobs running on a worker), `seen` (sorted set of live workers by last call), `offline` (set), `wake`
 * (pub/sub channel: new jobs waiting). The scripts name keys they derive from the prefix (standalone Redis allows
 * it; a Redis Cluster would need hash tags).
 *
 * Job hash fields: `st` (queued, running, done, failed, canceled, expired), `req` (the request, JSON), `w` (worker),
 * `att` (attempts), `sub`/`adm`/`asg`/`ftk`/`end` (submitted, first handed out, this attempt handed out, first token,
 * ended; epoch ms), `dl` (deadline), `em` (tokens streamed over all attempts), `et` (their text), `rc` (tokens the
 * current attempt reported), `stt`/`pt` (started, prompt tokens), `cx` (canceled while running: the worker is told
 * at its next call), `fin` (the end, JSON), `ho`/`hob`/`hot` (the AIME result was handed out, by which replica, when), `aime`
 * (AIME job info, JSON).
 *
 * Event stream entries have one field `e`, JSON: `a` handed to a worker, `q` back in the queue, `s` started
 * (`pt`), `k` tokens (`i` ids, `x` their texts), `f` finished, `x` failed (`k`: `gen` or `deadline`), `c` canceled.
 *
 * @since 0.3.0
 */
import { luaScript } from "./RedisConnection.ts"

const prelude = `
local P = ARGV[1]
local function jk(id) return P .. 'job:' .. id end
local function ev(id, e) redis.call('XADD', P .. 'ev:' .. id, '*', 'e', cjson.encode(e)) end
local function finish(id, now, ttl)
  redis.call('ZREM', P .. 'active', id)
  redis.call('HSET', jk(id), 'end', now)
  redis.call('PEXPIRE', jk(id), ttl)
  redis.call('PEXPIRE', P .. 'ev:' .. id, ttl)
end
-- 200: the job runs on this worker; 299: it was canceled while running there (released now); 404: unknown or
-- ended; 409: it belongs to another worker (or went back to the queue).
local function own(id, worker)
  local h = redis.call('HMGET', jk(id), 'st', 'w', 'cx')
  if not h[1] then return 404 end
  if h[3] == '1' and h[2] == worker then
    redis.call('HSET', jk(id), 'cx', '0', 'w', '')
    redis.call('SREM', P .. 'run:' .. worker, id)
    return 299
  end
  if h[1] ~= 'running' and h[1] ~= 'queued' then return 404 end
  if h[2] ~= worker then return 409 end
  return 200
end
-- New tokens of the current attempt; those an earlier attempt already streamed are skipped. The new ones go out
-- as one event per call (a progress post carries 8 tokens or 100 ms of them).
local function apply(id, now, d)
  local j = jk(id)
  local h = redis.call('HMGET', j, 'stt', 'em', 'rc', 'et', 'ftk')
  local em, rc, et = tonumber(h[2]), tonumber(h[3]), h[4]
  local ids, texts = {}, {}
  if h[1] ~= '1' then
    redis.call('HSET', j, 'stt', '1', 'pt', d.pt)
    ev(id, {t = 's', pt = d.pt})
  end
  if type(d.ids) == 'table' then
    if d.from <= rc then
      for i = rc - d.from + 1, #d.ids do
        local text = d.texts[i] or ''
        rc = rc + 1
        if rc > em then
          em = em + 1
          et = et .. text
          ids[#ids + 1] = d.ids[i]
          texts[#texts + 1] = text
        end
      end
    end
  elseif type(d.text) == 'string' then
    if #d.text > #et and string.sub(d.text, 1, #et) == et then
      ids[1] = -1
      texts[1] = string.sub(d.text, #et + 1)
      em = em + 1
      et = d.text
      rc = em
    end
  end
  redis.call('HSET', j, 'em', em, 'rc', rc, 'et', et)
  if #ids > 0 then
    ev(id, {t = 'k', i = ids, x = texts})
    if h[5] == '0' then redis.call('HSET', j, 'ftk', now) end
  end
  return et, em
end
`

/** KEYS: none. ARGV: prefix, id, request JSON, now, deadline, AIME info JSON (or ''), max waiting. -> 1, or 0 (full). */
export const submitScript = luaScript(`${prelude}
local id, now = ARGV[2], ARGV[4]
if redis.call('LLEN', P .. 'pending') >= tonumber(ARGV[7]) then return 0 end
redis.call('HSET', jk(id), 'st', 'queued', 'req', ARGV[3], 'sub', now, 'dl', ARGV[5], 'aime', ARGV[6], 'w', '', 'att', 0,
  'adm', 0, 'asg', 0, 'ftk', 0, 'end', 0, 'em', 0, 'et', '', 'rc', 0, 'stt', 0, 'pt', 0, 'cx', 0, 'ho', 0)
redis.call('RPUSH', P .. 'pending', id)
redis.call('ZADD', P .. 'active', ARGV[5], id)
redis.call('PUBLISH', P .. 'wake', '1')
return 1
`)

/** ARGV: prefix, worker, max jobs, now. -> flat list of (id, request JSON, submitted) of the jobs now on the worker. */
export const takeScript = luaScript(`${prelude}
local worker, max, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
local n = 0
while n < max do
  local id = redis.call('LPOP', P .. 'pending')
  if not id then break end
  local h = redis.call('HMGET', jk(id), 'st', 'req', 'sub', 'adm')
  if h[1] == 'queued' then
    redis.call('HSET', jk(id), 'st', 'running', 'w', worker, 'asg', now, 'rc', 0)
    redis.call('HINCRBY', jk(id), 'att', 1)
    if h[4] == '0' then redis.call('HSET', jk(id), 'adm', now) end
    redis.call('SADD', P .. 'run:' .. worker, id)
    ev(id, {t = 'a'})
    out[#out + 1] = id
    out[#out + 1] = h[2]
    out[#out + 1] = h[3]
    n = n + 1
  end
end
return out
`)

/** ARGV: prefix, id, worker, now, progress JSON {pt, from, ids, texts} or {pt, text}. -> status (200, 299, 404, 409). */
export const progressScript = luaScript(`${prelude}
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
local r = own(id, worker)
if r ~= 200 then return r end
if redis.call('HGET', jk(id), 'st') ~= 'running' then return 409 end
apply(id, now, cjson.decode(ARGV[5]))
return 200
`)

/**
 * ARGV: prefix, id, worker, now, ttl of an ended job, result JSON {pt, from, ids, texts | text, full, fr, sr, ptk,
 * ct, error}. -> status (200, 299, 404, 409).
 */
export const resultScript = luaScript(`${prelude}
local id, worker, now, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local r = own(id, worker)
if r ~= 200 then return r end
if redis.call('HGET', jk(id), 'st') ~= 'running' then return 409 end
local d = cjson.decode(ARGV[6])
redis.call('SREM', P .. 'run:' .. worker, id)
if type(d.error) == 'string' then
  redis.call('HSET', jk(id), 'st', 'failed', 'fin', cjson.encode({error = d.error}))
  ev(id, {t = 'x', k = 'gen', m = 'worker ' .. worker .. ': ' .. d.error})
  finish(id, now, ttl)
  return 200
end
local et, em = apply(id, now, d)
local tail = ''
if type(d.full) == 'string' and #d.full > #et and string.sub(d.full, 1, #et) == et then
  tail = string.sub(d.full, #et + 1)
  redis.call('HSET', jk(id), 'et', d.full)
end
local ct = d.ct
if type(ct) ~= 'number' then ct = em end
local fin = {fr = d.fr, sr = d.sr, pt = d.ptk, ct = ct}
redis.call('HSET', jk(id), 'st', 'done', 'fin', cjson.encode(fin))
ev(id, {t = 'f', fr = d.fr, sr = d.sr, pt = d.ptk, ct = ct, x = tail})
finish(id, now, ttl)
return 200
`)

/** ARGV: prefix, id, now, ttl. -> the state before ('' for an unknown job); queued and running jobs end canceled. */
export const cancelScript = luaScript(`${prelude}
local id, now, ttl = ARGV[2], ARGV[3], ARGV[4]
local st = redis.call('HGET', jk(id), 'st')
if not st then return '' end
if st == 'queued' then
  redis.call('LREM', P .. 'pending', 0, id)
  redis.call('HSET', jk(id), 'st', 'canceled')
elseif st == 'running' then
  -- The worker hears it in the answer to its next progress post (canceled: true) and stops.
  redis.call('HSET', jk(id), 'st', 'canceled', 'cx', 1)
else
  return st
end
ev(id, {t = 'c'})
finish(id, now, ttl)
return st
`)

/**
 * The watchdog, run by every replica on every tick (atomic, so two replicas never re-queue a job twice). Workers
 * silent past the worker timeout go offline and their running jobs back to the head of the queue, in the order
 * they were handed out; jobs past their deadline expire. ARGV: prefix, now, worker timeout, ttl of an ended job.
 * -> {jobs re-queued, jobs expired}.
 */
export const sweepScript = luaScript(`${prelude}
local now, timeout, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local requeued, expired = 0, 0
for _, name in ipairs(redis.call('ZRANGEBYSCORE', P .. 'seen', '-inf', now - timeout)) do
  redis.call('ZREM', P .. 'seen', name)
  redis.call('SADD', P .. 'offline', name)
  local mine = {}
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'run:' .. name)) do
    local h = redis.call('HMGET', jk(id), 'st', 'w', 'asg')
    if h[2] == name and h[1] == 'running' then
      mine[#mine + 1] = {id = id, asg = tonumber(h[3])}
    elseif h[2] == name then
      redis.call('HSET', jk(id), 'w', '', 'cx', 0)
    end
  end
  redis.call('DEL', P .. 'run:' .. name)
  table.sort(mine, function(a, b) return a.asg < b.asg end)
  for i = #mine, 1, -1 do
    local id = mine[i].id
    redis.call('HSET', jk(id), 'st', 'queued', 'w', '', 'rc', 0)
    ev(id, {t = 'q'})
    redis.call('LPUSH', P .. 'pending', id)
    requeued = requeued + 1
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now)) do
  local h = redis.call('HMGET', jk(id), 'st', 'w')
  if h[1] == 'queued' or h[1] == 'running' then
    if h[1] == 'queued' then redis.call('LREM', P .. 'pending', 0, id) end
    if h[2] ~= '' and h[2] then redis.call('SREM', P .. 'run:' .. h[2], id) end
    redis.call('HSET', jk(id), 'st', 'expired')
    ev(id, {t = 'x', k = 'deadline', waiting = (h[1] == 'queued') and 1 or 0})
    finish(id, now, ttl)
    expired = expired + 1
  else
    redis.call('ZREM', P .. 'active', id)
  end
end
if requeued > 0 then redis.call('PUBLISH', P .. 'wake', '1') end
return {requeued, expired}
`)

/**
 * The AIME result's hand-out. ARGV: prefix, id, replica, now, window (ms). -> 1 when this poll carries the result:
 * the first poll after the end, or a poll at another replica within the window after it (the replica that handed
 * it out may have died before its answer reached the client, who then asks elsewhere); else 0.
 */
export const handOutScript = luaScript(`${prelude}
local id, replica, now, window = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local h = redis.call('HMGET', jk(id), 'ho', 'hob', 'hot')
if h[1] == '0' or (h[2] and h[2] ~= replica and now - tonumber(h[3]) < window) then
  redis.call('HSET', jk(id), 'ho', 1, 'hob', replica, 'hot', now)
  return 1
end
return 0
`)

/**
 * A long poll whose worker went away before its answer was sent: the jobs just taken for it go back to the head of
 * the queue, untouched (no token reported yet). ARGV: prefix, worker, job ids... -> jobs returned.
 */
export const returnScript = luaScript(`${prelude}
local worker = ARGV[2]
local n = 0
for i = #ARGV, 3, -1 do
  local id = ARGV[i]
  local h = redis.call('HMGET', jk(id), 'st', 'w', 'rc')
  if h[1] == 'running' and h[2] == worker and h[3] == '0' then
    redis.call('HSET', jk(id), 'st', 'queued', 'w', '')
    redis.call('SREM', P .. 'run:' .. worker, id)
    ev(id, {t = 'q'})
    redis.call('LPUSH', P .. 'pending', id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', P .. 'wake', '1') end
return n
`)
