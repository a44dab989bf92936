-- Single-flight for access tokens: however many callers want the token of one key at once, one
-- of them fetches it and the others take its token, or its failure. One algorithm, over a
-- backend that says where tokens, locks and failures live:
--
--   rotor.oauth:  process_backend() — tokens in the core's C cache, locks and failures in this Lua
--                 state, waiting through the scheduler (coroutines under rotor.parallel)
--   rotor.ngx:    a lua_shared_dict — shared by every nginx worker; waiting by ngx.sleep
--
-- A backend is a table with:
--   get(key)                -> token, seconds_left, ttl | nil      (an unexpired token)
--   put(key, token, ttl)    -> the lifetime kept
--   drop(key[, token])      -> true when dropped (only if it still holds token, when given)
--   try_lock(key, seconds)  -> true when this caller fetches (a lock held longer than seconds is
--                              taken over: its holder died)
--   unlock(key)
--   fail(key, err, hold)    publish a fetch's failure: waiters and, for `hold` seconds, newcomers
--                           get it instead of fetching again
--   failure(key, since)     -> err | nil   (a failure published at or after `since`)
--   wait(key, seconds)      until notify(key) or the time passes (nginx: one poll step)
--   notify(key)
--   now()                   -> seconds (any clock, the same for every call)
local _M = {}

--- Is a token with `left` seconds of its lifetime `ttl` due for refresh? When fewer than margin
-- seconds are left (the default rule, `due` in token's options).
function _M.within_margin(margin)
  return function(left) return left <= margin end
end

--- The rule for background refresh: margin seconds before expiry, or half-way through a lifetime
-- shorter than twice the margin (a token is never refreshed on every use).
function _M.ahead_of_expiry(margin)
  return function(left, ttl)
    if ttl and ttl > 0 then return left <= math.min(margin, ttl / 2) end
    return left <= margin
  end
end

--- token(b, key, o) -> token, seconds_left | nil, err
-- o: fetch() -> token, ttl | nil, err (the one request); due(left, ttl) -> true when a token is
-- to be refreshed (default: within_margin(60)); lock_timeout (how long a fetch may hold the
-- lock, and how long a caller waits); fail_hold (seconds a failure answers newcomers, 0: only
-- those waiting for that fetch); background(start, release) (optional: when a valid token is due,
-- run start() off the caller's path — a timer in nginx — or release() when it cannot, and use
-- the current token; without it the caller fetches at once); timeout_error() -> err (for a
-- caller that waited lock_timeout in vain).
function _M.token(b, key, o)
  local due, hold = o.due or _M.within_margin(60), o.fail_hold or 0
  local started = b.now()
  local deadline = started + o.lock_timeout
  local function fetch_now()
    local tok, ttl = o.fetch()
    if tok then
      local kept = b.put(key, tok, ttl)
      b.unlock(key)
      b.notify(key)
      return tok, kept or ttl
    end
    b.fail(key, ttl, hold)
    b.unlock(key)
    b.notify(key)
    return nil, ttl
  end
  while true do
    local tok, left, ttl = b.get(key)
    if tok and not due(left, ttl) then return tok, left end
    if tok and o.background then
      -- still valid: use it, and have its successor fetched once, off this caller's path
      if b.try_lock(key, o.lock_timeout) then
        o.background(function() return fetch_now() end, function() b.unlock(key) end)
      end
      return tok, left
    end
    local err = b.failure(key, math.min(started, b.now() - hold))
    if err then return nil, err end
    if b.try_lock(key, o.lock_timeout) then return fetch_now() end
    -- another caller fetches it: wait for its outcome
    local now = b.now()
    if now >= deadline then return nil, o.timeout_error() end
    b.wait(key, deadline - now)
  end
end

--- The backend of one process: the core's C token cache for tokens, this Lua state for locks
-- and failures, the scheduler for waiting.
function _M.process_backend()
  local core = require "rotor.core"
  local sched = require "rotor.sched"
  local locks, failures = {}, {}
  return {
    get = function(key) return core.token_get(key) end,
    put = function(key, tok, ttl) return core.token_put(key, tok, ttl) end,
    drop = function(key, tok) return core.token_invalidate(key, tok) end,
    try_lock = function(key, seconds)
      local now = core.now()
      local held = locks[key]
      if held and now - held < seconds then return false end
      locks[key] = now
      return true
    end,
    unlock = function(key) locks[key] = nil end,
    fail = function(key, err)
      failures[key] = { err = err, at = core.now() }
    end,
    failure = function(key, since)
      local f = failures[key]
      if f and f.at >= since then return f.err end
      failures[key] = nil
      return nil
    end,
    wait = function(key, seconds) sched.wait(key, seconds) end,
    notify = function(key) sched.notify(key) end,
    now = core.now,
  }
end

return _M
