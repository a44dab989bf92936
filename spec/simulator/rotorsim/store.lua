-- rotorsim.store: state shared by the nginx workers (lua_shared_dict), settings, simulated clock,
-- a global lock for compound updates, tokens, and the record of issued secrets.
local util = require "rotorsim.util"

local _M = {}

local sim = ngx.shared.sim        -- clients, codes, queues, messages, faults, settings, clock
local tok = ngx.shared.simtok     -- access tokens
local rate = ngx.shared.simrate   -- rate-limit windows
_M.sim, _M.tok, _M.rate, _M.logd = sim, tok, rate, ngx.shared.simlog

-- settings -----------------------------------------------------------------------------------
-- Every rate limit, delay and UNCONFIRMED behaviour. spec/simulator/README.md documents each.
local DEFAULTS = {
  latency = 0,
  hang_seconds = 60,
  oversize_bytes = 2 * 1024 * 1024,
  log_enabled = true,
  log_max = 10000,
  basic_decoding = "rfc",

  paylocity_rate = 25,
  paylocity_retry_after = 0,
  paylocity_token_ttl = 3600,
  paylocity_secret_days = 365,
  paylocity_code_single_use = true,
  paylocity_weblink_body_auth = false,
  paylocity_require_scope = true,

  spreetail_token_ttl = 3600,
  spreetail_create_status = 201,
  spreetail_accept_urlencoded = true,
  spreetail_accept_json = false,
  spreetail_revoke_tokens = true,
  spreetail_rate = 0,

  genesys_rate = 300,
  genesys_retry_after = true,
  genesys_page_size = 25,
  genesys_regenerate_kills_old = true,
  genesys_regenerate_kills_tokens = true,
  genesys_secret_on_get = false,
  genesys_token_ttl_default = 86400,
  genesys_delete_status = 204,

  lwa_token_ttl = 3600,
  lwa_accept_json = true,
  spapi_rotate_interval = 60,
  spapi_old_secret_seconds = 7 * 86400,
  spapi_new_secret_seconds = 180 * 86400,
  spapi_delivery_delay = 0,

  sqs_verify_signature = true,
  sqs_require_signed_target = true,
  sqs_max_clock_skew = 900,
  sqs_region = "us-east-1",
  sqs_account = "123456789012",
  sqs_queue = "rotor-sim",
  sqs_max_wait = 20,
  sqs_visibility_timeout = 30,
  sqs_stale_receipt_deletes = false,
  sqs_poll_interval = 0.05,
}
_M.DEFAULTS = DEFAULTS

local cached_ver = -1
local S = {}
_M.S = S

local function load_settings()
  local over = util.decode(sim:get("settings") or "{}") or {}
  for k in pairs(S) do S[k] = nil end
  for k, v in pairs(DEFAULTS) do S[k] = v end
  for k, v in pairs(over) do S[k] = v end
end

-- called at the start of every request: picks up settings changed by another worker
function _M.refresh()
  local ver = sim:get("settings_ver") or 0
  if ver ~= cached_ver then
    load_settings()
    cached_ver = ver
  end
  return S
end

-- set settings from a table; returns the merged settings, or nil, err for an unknown name/type
function _M.set_settings(t)
  for k, v in pairs(t) do
    local d = DEFAULTS[k]
    if d == nil then return nil, "unknown setting: " .. tostring(k) end
    if v ~= util.null and type(v) ~= type(d) then
      return nil, "setting " .. k .. " must be a " .. type(d)
    end
  end
  local over = util.decode(sim:get("settings") or "{}") or {}
  for k, v in pairs(t) do
    if v == util.null then over[k] = nil else over[k] = v end
  end
  sim:set("settings", util.encode(over))
  sim:incr("settings_ver", 1, 0)
  return _M.refresh()
end

-- clock --------------------------------------------------------------------------------------
function _M.now()
  return ngx.now() + (sim:get("clock_offset") or 0)
end

function _M.advance(seconds)
  return sim:incr("clock_offset", seconds, 0)
end

-- lock ---------------------------------------------------------------------------------------
local function lock()
  for _ = 1, 10000 do
    if sim:add("__lock", true, 5) then return true end
    ngx.sleep(0.001)
  end
  error("rotorsim: lock timeout")
end

local function unlock() sim:delete("__lock") end

local function pack(...) return { n = select("#", ...), ... } end

-- run fn(...) holding the global lock; returns its results (errors are re-raised after unlock)
function _M.locked(fn, ...)
  lock()
  local res = pack(pcall(fn, ...))
  unlock()
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

-- records ------------------------------------------------------------------------------------
function _M.get(key)
  local v = sim:get(key)
  if v == nil then return nil end
  return util.decode(v)
end

function _M.put(key, t)
  local ok, err = sim:set(key, util.encode(t))
  if not ok then error("rotorsim: shared dict full: " .. tostring(err)) end
  return t
end

function _M.delete(key) sim:delete(key) end

-- all records whose key starts with prefix, as key -> record
function _M.scan(prefix)
  local out = {}
  for _, k in ipairs(sim:get_keys(0)) do
    if k:sub(1, #prefix) == prefix then
      local v = _M.get(k)
      if v then out[k] = v end
    end
  end
  return out
end

-- tokens -------------------------------------------------------------------------------------
-- rec: { p = provider, cid = client id, exp = sim epoch, ... }
function _M.put_token(token, rec, ttl)
  tok:set(token, util.encode(rec), math.max(1, ttl + 3600))
  _M.log_issued(token, "token", rec.cid)
end

-- the token's record if it exists and has not expired (simulated clock), else nil, reason
function _M.get_token(token)
  if not token then return nil, "missing" end
  local v = tok:get(token)
  if not v then return nil, "unknown" end
  local rec = util.decode(v)
  if rec.exp and rec.exp <= _M.now() then return nil, "expired", rec end
  return rec
end

function _M.delete_token(token) tok:delete(token) end

-- rate limits (fixed windows on the simulated clock) -----------------------------------------
-- returns true when allowed, else false, seconds until the window ends
function _M.rate_ok(key, limit, period)
  if not limit or limit <= 0 then return true end
  -- a token bucket: `limit` requests at once at most, refilled at limit/period per second (what
  -- "N requests per period" reads as; a client that paces at the rate never meets a 429, whatever
  -- the network jitter, and one that bursts past the limit does)
  return _M.locked(function()
    local now = _M.now()
    local refill = limit / period
    local tokens = rate:get(key .. ":tokens")
    local last = rate:get(key .. ":last") or now
    if tokens == nil then tokens = limit end
    tokens = math.min(limit, tokens + math.max(0, now - last) * refill)
    if tokens < 1 then
      rate:set(key .. ":tokens", tokens)
      rate:set(key .. ":last", now)
      return false, math.max(1, math.ceil((1 - tokens) / refill))
    end
    rate:set(key .. ":tokens", tokens - 1)
    rate:set(key .. ":last", now)
    return true
  end)
end

-- issued secrets -----------------------------------------------------------------------------
function _M.record_secret(provider, client_id, secret, source)
  local n = sim:incr("__nsecrets", 1, 0)
  local ok, err = sim:set("__secret:" .. n, util.encode({
    provider = provider, client_id = client_id, secret = secret, source = source,
    at = util.iso(_M.now()),
  }))
  if not ok then error("rotorsim: shared dict full: " .. tostring(err)) end
  _M.log_issued(secret, "secret", client_id)
end

-- append to $ROTOR_SECRETS_LOG (the leak scan's list): "<value>\t<secret|token>\t<client id>"
function _M.log_issued(value, what, client_id)
  local path = os.getenv("ROTOR_SECRETS_LOG")
  if not path or path == "" or type(value) ~= "string" then return end
  local f = io.open(path, "a")
  if f then
    f:write(value, "\t", what, "\t", tostring(client_id or ""), "\n")
    f:close()
  end
end

function _M.secrets()
  local out = {}
  for i = 1, sim:get("__nsecrets") or 0 do
    local v = sim:get("__secret:" .. i)
    if v then out[#out + 1] = util.decode(v) end
  end
  return out
end

function _M.reset(keep_settings)
  local settings, ver = sim:get("settings"), sim:get("settings_ver")
  local account = sim:get("sqs:account")   -- the simulated AWS account keeps its keys
  sim:flush_all()
  sim:flush_expired()
  tok:flush_all()
  tok:flush_expired()
  rate:flush_all()
  rate:flush_expired()
  _M.logd:flush_all()
  _M.logd:flush_expired()
  sim:set("settings_ver", (ver or 0) + 1)
  if keep_settings and settings then sim:set("settings", settings) end
  if account then sim:set("sqs:account", account) end
  _M.refresh()
end

return _M
