-- rotorsim.common: helpers shared by the provider modules.
local util = require "rotorsim.util"
local store = require "rotorsim.store"

local _M = {}

_M.NO_STORE = { ["Cache-Control"] = "no-store", ["Pragma"] = "no-cache" }

local function merge(a, b)
  local out = {}
  for k, v in pairs(a or {}) do out[k] = v end
  for k, v in pairs(b or {}) do out[k] = v end
  return out
end
_M.merge = merge

-- an RFC 6749 §5.2 error answer
function _M.oauth_error(status, code, desc, extra_headers)
  local body = { error = code }
  if desc then body.error_description = desc end
  return status, body, merge(_M.NO_STORE, extra_headers)
end

-- candidate (id, secret) pairs from the Basic header, by the basic_decoding setting
function _M.basic_candidates(S)
  local id, secret, raw_id, raw_secret = util.basic_auth()
  if not id then return nil end
  local mode = S.basic_decoding
  if mode == "raw" then return { { raw_id, raw_secret } } end
  if mode == "either" then return { { id, secret }, { raw_id, raw_secret } } end
  return { { id, secret } }
end

-- true when secret matches one of secrets[] ({secret=, expires=epoch|nil}) still valid at now
function _M.secret_valid(secrets, secret, now)
  if type(secret) ~= "string" or secret == "" then return false end
  for _, s in ipairs(secrets or {}) do
    if s.secret == secret and not s.revoked and (s.expires == nil or s.expires > now) then
      return true, s
    end
  end
  return false
end

-- the parsed request body for token endpoints: fields table, kind ("form"|"multipart"|"json"|other)
function _M.token_fields()
  local ct = util.content_type()
  local body = util.body()
  if ct:find("application/x-www-form-urlencoded", 1, true) then
    return util.parse_form(body), "form"
  elseif ct:find("multipart/form-data", 1, true) then
    local f = util.parse_multipart(body, ngx.var.content_type or "")
    return f or {}, f and "multipart" or "bad-multipart"
  elseif ct:find("application/json", 1, true) then
    local v = util.decode(body)
    if type(v) ~= "table" then return {}, "bad-json" end
    return v, "json"
  end
  return {}, ct == "" and "none" or "other"
end

-- issue an opaque access token; returns the token string
function _M.issue_token(rec, ttl)
  local token = rec.jwt and _M.jwt(rec, ttl) or util.b64url(util.random_bytes(32))
  rec.jwt = nil
  rec.exp = store.now() + ttl
  store.put_token(token, rec, ttl)
  return token
end

-- a JWT-looking token (signature is random bytes: nobody verifies it)
function _M.jwt(rec, ttl)
  local now = math.floor(store.now())
  local header = util.b64url('{"alg":"RS256","typ":"JWT"}')
  local payload = util.b64url(util.encode({
    sub = rec.cid, iat = now, exp = now + ttl, iss = "rotor-simulator", jti = util.uuid(),
  }))
  return header .. "." .. payload .. "." .. util.b64url(util.random_bytes(64))
end

-- secret generators --------------------------------------------------------------------------
-- base64 that always contains '+' or '/' and ends in '=' (exercises RFC 6749 App. B encoding)
function _M.b64_secret(nbytes)
  for _ = 1, 100 do
    local s = util.b64(util.random_bytes(nbytes))
    if s:find("[+/]") and s:find("=") then return s end
  end
  return util.b64(util.random_bytes(nbytes))
end

function _M.seed_expires(v, default_seconds)
  if v == nil then return store.now() + default_seconds end
  if v == false or v == util.null then return nil end
  local t = util.to_epoch(v)
  if not t then error("bad expires: " .. tostring(v)) end
  return t
end

return _M
