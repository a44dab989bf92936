-- HTTP with rotor's policy on top of the core: retries with backoff and jitter, Retry-After,
-- pacing by token buckets, and the rule that a minting request is never sent twice.
local core = require "rotor.core"
local sched = require "rotor.sched"
local errors = require "rotor.errors"

local _M = {}

_M.RETRY_STATUS = { [429] = true, [502] = true, [503] = true, [504] = true }
_M.defaults = { retries = 4, max_wait = 120, base_delay = 0.5, max_delay = 30 }

-- random jitter from the core's CSPRNG (no math.random seeding issues across forks)
local function jitter()
  return tonumber(core.random_hex(4), 16) / 0xffffffff
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9,
  Oct = 10, Nov = 11, Dec = 12 }

local days_from_civil = require("rotor.timefmt").days_from_civil

--- Parse a Retry-After value: delta seconds or an HTTP date. Returns seconds to wait (>= 0) or nil.
function _M.parse_retry_after(v, now_epoch)
  if type(v) ~= "string" then return nil end
  v = v:match("^%s*(.-)%s*$")
  if v:match("^%d+$") then return tonumber(v) end
  -- IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  local d, mon, y, hh, mm, ss = v:match("^%a+,%s+(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+GMT$")
  if not d then return nil end
  local m = MONTHS[mon]
  if not m then return nil end
  local t = days_from_civil(tonumber(y), m, tonumber(d)) * 86400 + tonumber(hh) * 3600 +
    tonumber(mm) * 60 + tonumber(ss)
  local wait = t - (now_epoch or core.wallclock())
  if wait < 0 then wait = 0 end
  return wait
end

-- ---- pacing: token buckets per key, shared by every coroutine of the process ----
local buckets = {}

--- Reserve a slot under the limit {key=, rate=, per=, burst=}: `rate` requests every `per`
-- seconds. Returns how long the caller must wait before sending.
local function reserve(limit)
  local interval = (limit.per or 1) / limit.rate
  local burst = limit.burst or 1
  local b = buckets[limit.key]
  local t = core.now()
  if not b then
    b = { next = t - interval * (burst - 1) }
    buckets[limit.key] = b
  end
  -- never bank more than `burst` slots
  local earliest = t - interval * (burst - 1)
  if b.next < earliest then b.next = earliest end
  local at = b.next
  b.next = at + interval
  local wait = at - t
  if wait < 0 then wait = 0 end
  return wait
end
_M.reserve = reserve

-- the transfer options a provider object (or a notification spec) hands to each of its requests
local TRANSPORT = { "timeout", "connect_timeout", "cainfo", "proxy", "user_agent", "http2" }
_M.TRANSPORT = TRANSPORT

--- Fill req's transfer options from `from` where req has none; a long timeout also bounds how long
-- a transfer may stall (low_speed_time). Returns req.
function _M.with_transport(req, from)
  for _, k in ipairs(TRANSPORT) do
    if req[k] == nil then req[k] = from[k] end
  end
  if req.timeout and req.timeout > 30 then req.low_speed_time = req.low_speed_time or req.timeout end
  return req
end

function _M.reset_pacing()
  buckets = {}
end

local function backoff(attempt, d)
  local cap = math.min(d.max_delay, d.base_delay * 2 ^ (attempt - 1))
  return cap / 2 + jitter() * cap / 2
end

-- An error of a request under policy: the policy's provider and op unless fields name their own.
-- Returns nil, err.
local function fail(policy, fields)
  if fields.provider == nil then fields.provider = policy.provider end
  if fields.op == nil then fields.op = policy.op end
  return nil, errors.new(fields)
end

-- One attempt. Returns res | nil, err; or nil, nil, seconds to wait before the next attempt.
function _M.attempt(req, policy, attempt, waited, retries, max_wait)
  local d = _M.defaults
  if policy.rate then
    local w = reserve(policy.rate)
    if w > 0 then sched.sleep(w) end
  end
  local res, rerr = sched.request(req)
  if not res then
    return fail(policy, { kind = rerr.kind or "config", message = rerr.message })
  end
  local e = res.error
  if e then
    if not res.sent and attempt <= retries and e.kind ~= "config" and e.kind ~= "tls" and e.kind ~= "interrupted" then
      local w = backoff(attempt, d)
      if waited + w <= max_wait then return nil, nil, w end
    end
    if policy.mint and res.sent then
      return fail(policy, { kind = "ambiguous", message = "the minting request was sent but its outcome is "
        .. "unknown (" .. e.kind .. ": " .. e.message .. "); it was not retried" })
    end
    local msg = e.message
    if e.kind == "tls" and not tostring(msg):find("cainfo", 1, true) then
      msg = tostring(msg) .. " (a provider or test server with a private CA: set the provider option cainfo "
        .. "to its CA bundle, PEM)"
    end
    return fail(policy, { kind = e.kind, message = msg })
  end
  local status = res.status
  if _M.RETRY_STATUS[status] then
    if policy.mint and status ~= 429 then
      return fail(policy, { kind = "ambiguous", status = status, message = "the minting request got "
        .. status .. "; whether a secret was minted is unknown, so it was not retried" })
    end
    local ra = _M.parse_retry_after(res.headers["retry-after"])
    local w = ra or backoff(attempt, d)
    if attempt <= retries + (ra and 4 or 0) and waited + w <= max_wait then
      return nil, nil, w
    end
    if status == 429 then
      return fail(policy, { kind = "rate_limited", status = 429, retry_after = ra,
        message = "rate limited; gave up after waiting " .. string.format("%.1f", waited) .. " s" })
    end
    -- a 5xx that stayed: hand it back to the caller's error mapping
  end
  res.attempts = attempt
  res.waited = waited
  return res
end

local NO_POLICY = {}

--- request(req, policy) -> res | nil, err
-- policy: provider, op, mint (never re-send once it may have reached the server), retries,
-- max_wait (bound on the total time spent waiting for retries, s), rate ({key, rate, per, burst}),
-- interruptible (see below).
-- A request whose loss changes nothing at the provider is abandoned in flight when the rotor host
-- gets SIGINT/SIGTERM (kind "interrupted"): a GET or HEAD, or one whose policy says interruptible
-- (a token request, a long poll of a queue). A mint never is, nor any other request that changes
-- something (a deletion): those run to their end, and the run stops after them.
function _M.request(req, policy)
  policy = policy or NO_POLICY
  if not policy.mint and req.interruptible == nil then
    local m = req.method
    req.interruptible = policy.interruptible or m == nil or m == "GET" or m == "HEAD"
  end
  local d = _M.defaults
  local retries = policy.retries or d.retries
  local max_wait = policy.max_wait or d.max_wait
  local waited = 0
  local attempt = 0
  while true do
    attempt = attempt + 1
    local res, err, retry_in = _M.attempt(req, policy, attempt, waited, retries, max_wait)
    if not retry_in then return res, err end
    waited = waited + retry_in
    -- a signal to the rotor host ends the wait: no request is left half done (a retry follows
    -- only an answer that says the request was not carried out, or none was sent)
    if not sched.sleep(retry_in, true) then
      return fail(policy, { kind = "interrupted", message = ("stopped on a signal while waiting %g s to retry "
        .. "(attempt %d)"):format(retry_in, attempt + 1) })
    end
  end
end

return _M
