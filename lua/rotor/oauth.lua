-- OAuth2 client-credentials tokens: cached in the core (C memory), refreshed ahead of expiry,
-- fetched once however many coroutines want the same token at the same time (rotor.singleflight
-- over the core's cache).
local core = require "rotor.core"
local singleflight = require "rotor.singleflight"
local http = require "rotor.http"
local json = require "rotor.json"
local errors = require "rotor.errors"

local _M = {}

_M.DEFAULT_MARGIN = 60      -- refresh this many seconds before expiry
_M.DEFAULT_TTL = 3600       -- when the server gives no expires_in


--- The cache key of a token spec: endpoint, client, scope and request style.
function _M.key(spec)
  return table.concat({ spec.url, spec.style or "basic", spec.client_id, spec.scope or "" }, "\0")
end

-- One token request; returns token_string, ttl | nil, err
local function fetch(spec)
  local req = http.with_transport(core.token_request(spec), spec)
  local res, err = http.request(req, {
    provider = spec.provider, op = "token", retries = spec.retries, max_wait = spec.max_wait,
    rate = spec.rate, interruptible = true, -- an abandoned token request changes nothing
  })
  req.body:close()
  for _, h in ipairs(req.headers) do
    if core.is_secret(h[2]) then h[2]:close() end
  end
  if not res then return nil, err end
  local base = { provider = spec.provider, op = "token", status = res.status,
    request_id = errors.request_id(res.headers) }
  if res.status == 400 or res.status == 401 or res.status == 403 then
    local detail = errors.detail(json.decode(res.body or "")) or errors.excerpt(res.body)
    base.kind = "auth"
    base.detail = detail
    base.message = "the token endpoint refused the client credentials" ..
      (detail and (" (" .. detail .. ")") or "")
    return nil, errors.new(base)
  end
  if res.status < 200 or res.status > 299 then
    base.kind = "http"
    base.detail = errors.detail(json.decode(res.body or "")) or errors.excerpt(res.body)
    base.message = "the token endpoint answered " .. res.status .. (base.detail and (": " .. base.detail) or "")
    return nil, errors.new(base)
  end
  local v, jerr = json.decode(res.body)
  if type(v) ~= "table" then
    base.kind = "protocol"
    base.message = "the token response is not a JSON object" .. (jerr and (": " .. jerr) or "")
    return nil, errors.new(base)
  end
  local names = spec.response or {}
  local tok = v[names.token or "access_token"]
  if type(tok) ~= "string" or tok == "" then
    base.kind = "protocol"
    base.message = "the token response has no " .. (names.token or "access_token")
    return nil, errors.new(base)
  end
  local ttl = v[names.expires or "expires_in"]
  ttl = tonumber(ttl) or _M.DEFAULT_TTL
  return tok, ttl
end

local backend -- the process's single-flight backend (rotor.singleflight), made on first use

--- token(spec) -> token (rotor.secret) | nil, err
-- spec: core.token_request fields (url, style, client_id, client_secret, scope, fields, extra),
-- plus provider, response = {token=, expires=}, margin, cainfo, proxy, timeout, user_agent.
-- spec.fresh = true bypasses the cache (verification of a new credential).
function _M.token(spec)
  if spec.fresh then
    local tok, ttl = fetch(spec)
    if not tok then return nil, ttl end
    return core.secret(tok), ttl
  end
  local key = spec.key
  if not key then
    key = _M.key(spec)
    spec.key = key
  end
  -- the common case, a cached token well ahead of its refresh: no single-flight state to build
  local cached, secs = core.token_get(key)
  if cached and secs > (spec.margin or _M.DEFAULT_MARGIN) then return cached, secs end
  backend = backend or singleflight.process_backend()
  local tok, left = singleflight.token(backend, key, {
    due = singleflight.within_margin(spec.margin or _M.DEFAULT_MARGIN),
    lock_timeout = 60,
    fetch = function()
      local ok, t, ttl = pcall(fetch, spec)
      if ok then return t, ttl end
      return nil, errors.new { kind = "protocol", provider = spec.provider, op = "token",
                               message = core.redact(tostring(t)) }
    end,
    timeout_error = function()
      return errors.new { kind = "timeout", provider = spec.provider, op = "token",
                          message = "gave up waiting for another token request to finish" }
    end,
  })
  if not tok then return nil, left end
  if not core.is_secret(tok) then tok = core.secret(tok) end
  return tok, left
end

--- Drop a cached token (after a 401). With `token`, only if the cache still holds that one.
function _M.invalidate(spec, token)
  return core.token_invalidate(spec.key or _M.key(spec), token)
end

return _M
