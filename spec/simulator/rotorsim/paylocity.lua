-- rotorsim.paylocity: Paylocity WebLink (IdentityServer token, POST /api/v2/credentials/secrets)
-- and the NextGen token endpoint. As the provider documents them (lua/rotor/providers/paylocity.lua).
local util = require "rotorsim.util"
local store = require "rotorsim.store"
local common = require "rotorsim.common"

local _M = {}

local S = store.S
local DAY = 86400

local function key(id) return "pl:client:" .. id end

local function public(rec)
  local secrets = {}
  for i, s in ipairs(rec.secrets) do
    secrets[i] = { secret = s.secret, expires = s.expires and util.iso(s.expires) or util.null }
  end
  local codes = {}
  for c, used in pairs(rec.codes) do codes[#codes + 1] = { code = c, used = used } end
  return {
    provider = "paylocity", client_id = rec.client_id,
    client_secret = rec.secrets[#rec.secrets] and rec.secrets[#rec.secrets].secret or util.null,
    secrets = util.array(secrets), codes = util.array(codes),
  }
end

-- seed { client_id?, client_secret?, expires? (ISO/epoch; default now+365 d; false = never),
--        code? (string or array of strings) }; seeding an existing client adds to it
function _M.seed(t)
  return store.locked(function()
    local id = t.client_id or util.random_hex(16)
    local rec = store.get(key(id)) or { client_id = id, secrets = {}, codes = {} }
    if t.client_secret ~= false then
      local secret = t.client_secret or common.b64_secret(32)
      rec.secrets[#rec.secrets + 1] = {
        secret = secret, expires = common.seed_expires(t.expires, S.paylocity_secret_days * DAY),
      }
      store.record_secret("paylocity", id, secret, "seed")
    end
    local codes = type(t.code) == "table" and t.code or { t.code }
    for _, c in ipairs(codes) do rec.codes[c] = false end
    store.put(key(id), rec)
    return public(rec)
  end)
end

local function client_ok(id, secret)
  if not id or id == "" then return nil end
  local rec = store.get(key(id))
  if not rec then return nil end
  if common.secret_valid(rec.secrets, secret, store.now()) then return rec end
  return nil
end

local function token_answer(cid, scope)
  local ttl = S.paylocity_token_ttl
  local token = common.issue_token({ p = "paylocity", cid = cid, scope = scope }, ttl)
  return 200, { access_token = token, expires_in = ttl, token_type = "Bearer" }, common.NO_STORE
end

-- WebLink: IdentityServer, Basic auth, form body, scope=WebLinkAPI
local function weblink_token()
  local f, kind = common.token_fields()
  if kind ~= "form" then return common.oauth_error(400, "invalid_request", "form body required") end
  local creds = common.basic_candidates(S)
  if not creds then
    if S.paylocity_weblink_body_auth and f.client_id then
      creds = { { f.client_id, f.client_secret } }
    else
      return common.oauth_error(400, "invalid_client")
    end
  end
  if f.grant_type ~= "client_credentials" then
    return common.oauth_error(400, "unsupported_grant_type")
  end
  local rec
  for _, c in ipairs(creds) do
    rec = client_ok(c[1], c[2])
    if rec then break end
  end
  if not rec then return common.oauth_error(400, "invalid_client") end
  local scope = f.scope
  if scope == nil or scope == "" then
    if S.paylocity_require_scope then return common.oauth_error(400, "invalid_scope") end
    scope = "WebLinkAPI"
  end
  for s in scope:gmatch("%S+") do
    if s ~= "WebLinkAPI" then return common.oauth_error(400, "invalid_scope") end
  end
  return token_answer(rec.client_id, "WebLinkAPI")
end

-- NextGen: id and secret in the form body, no scope
local function nextgen_token()
  local f, kind = common.token_fields()
  if kind ~= "form" then return common.oauth_error(400, "invalid_request", "form body required") end
  if f.grant_type ~= "client_credentials" then
    return common.oauth_error(400, "unsupported_grant_type")
  end
  if not f.client_id or not f.client_secret then return common.oauth_error(401, "invalid_client") end
  local rec = client_ok(f.client_id, f.client_secret)
  if not rec then return common.oauth_error(401, "invalid_client") end
  return token_answer(rec.client_id, "")
end

local function err400(field, message)
  return 400, { { field = field, message = message, options = util.EMPTY_ARRAY, path = field } }
end

local function authenticate()
  local tokstr = util.bearer()
  local tok, why = store.get_token(tokstr)
  if not tok or tok.p ~= "paylocity" then
    local hdr = 'Bearer error="invalid_token"'
    if why == "missing" then hdr = "Bearer" elseif why == "expired" then
      hdr = 'Bearer error="invalid_token", error_description="The token expired"'
    end
    return nil, 401, "", { ["WWW-Authenticate"] = hdr }
  end
  if tok.scope ~= "WebLinkAPI" then
    return nil, 403, "", { ["WWW-Authenticate"] = 'Bearer error="insufficient_scope"' }
  end
  local ok, wait = store.rate_ok("pl:" .. tok.cid, S.paylocity_rate, 1)
  if not ok then
    local h = {}
    if S.paylocity_retry_after > 0 then h["Retry-After"] = tostring(math.max(wait, S.paylocity_retry_after)) end
    return nil, 429, "", h
  end
  return tok
end

local function new_secret(tok)
  local ct = util.content_type()
  local raw = util.body()
  if not ct:find("application/json", 1, true) then
    return err400("", "The request content type must be application/json.")
  end
  local b = util.decode(raw)
  if type(b) ~= "table" then return err400("", "The request body is not valid JSON.") end
  if type(b.code) ~= "string" or b.code == "" then return err400("code", "The code field is required.") end
  return store.locked(function()
    local rec = store.get(key(tok.cid))
    if not rec then return 401, "" end
    local used = rec.codes[b.code]
    if used == nil then return err400("code", "The code is not valid for this client.") end
    if used and S.paylocity_code_single_use then
      return err400("code", "The code has already been used.")
    end
    rec.codes[b.code] = true
    local secret = common.b64_secret(32)
    local expires = store.now() + S.paylocity_secret_days * DAY
    rec.secrets[#rec.secrets + 1] = { secret = secret, expires = expires }
    store.record_secret("paylocity", rec.client_id, secret, "issued")
    store.put(key(rec.client_id), rec)
    return 200, { { clientSecret = secret, clientSecretExpirationDate = util.iso(expires) } }
  end)
end

function _M.handle(path, method)
  if path == "/IdentityServer/connect/token" then
    if method ~= "POST" then return 405, { error = "method not allowed" } end
    return weblink_token()
  elseif path == "/public/security/v1/token" then
    if method ~= "POST" then return 405, { error = "method not allowed" } end
    return nextgen_token()
  elseif path == "/api/v2/credentials/secrets" then
    local tok, status, body, headers = authenticate()
    if not tok then return status, body, headers end
    if method ~= "POST" then return 405, "" end
    return new_secret(tok)
  end
  return 404, ""
end

return _M
