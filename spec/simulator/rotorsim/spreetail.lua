-- rotorsim.spreetail: Spreetail /api/v0 token and client-credentials endpoints. As the provider documents them
-- (lua/rotor/providers/spreetail.lua).
local util = require "rotorsim.util"
local store = require "rotorsim.store"
local common = require "rotorsim.common"

local _M = {}

local S = store.S

local function key(id) return "st:cred:" .. id end

local function shape(rec, with_secret)
  return {
    credentialId = rec.credentialId, clientId = rec.clientId, name = rec.name or util.null,
    secret = with_secret and rec.secret or util.null,
    expires = rec.expires and util.iso(rec.expires) or util.null, created = util.iso(rec.created),
  }
end

local function new_record(t)
  return {
    credentialId = util.uuid(), clientId = t.client_id or util.random_hex(16),
    name = t.name, secret = t.client_secret or common.b64_secret(16), expires = t.expires,
    created = store.now(), account = t.account or "default", can_manage = t.can_manage ~= false,
  }
end

-- seed { client_id?, client_secret?, name?, expires? (ISO/epoch; default never),
--        account? ("default"), can_manage? (true; false: credential endpoints answer 403) }
function _M.seed(t)
  local rec = new_record({
    client_id = t.client_id, client_secret = t.client_secret, name = t.name or "seeded",
    expires = t.expires ~= nil and common.seed_expires(t.expires) or nil, account = t.account,
    can_manage = t.can_manage,
  })
  store.put(key(rec.clientId), rec)
  store.record_secret("spreetail", rec.clientId, rec.secret, "seed")
  local out = shape(rec, true)
  out.provider, out.client_id, out.client_secret, out.account = "spreetail", rec.clientId, rec.secret, rec.account
  return out
end

local function active(rec, now)
  return rec and (rec.expires == nil or rec.expires > now)
end

local PROBLEM = { ["Content-Type"] = "application/problem+json; charset=utf-8" }

local function validation(field, msg)
  return 400, {
    type = "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    title = "One or more validation errors occurred.", status = 400, errors = { [field] = { msg } },
  }, PROBLEM
end

local function field(f, name)
  local lname = name:lower()
  for k, v in pairs(f) do
    if type(k) == "string" and k:lower() == lname then return v end
  end
  return nil
end

local function token()
  local f, kind = common.token_fields()
  local accepted = kind == "multipart" or (kind == "form" and S.spreetail_accept_urlencoded)
    or (kind == "json" and S.spreetail_accept_json)
  if not accepted then
    return 415, {
      type = "https://tools.ietf.org/html/rfc7231#section-6.5.13", title = "Unsupported Media Type",
      status = 415,
    }, PROBLEM
  end
  local grant, id, secret = field(f, "GrantType"), field(f, "ClientId"), field(f, "ClientSecret")
  if not grant or grant == "" then return validation("GrantType", "The GrantType field is required.") end
  if not id or id == "" then return validation("ClientId", "The ClientId field is required.") end
  if not secret or secret == "" then return validation("ClientSecret", "The ClientSecret field is required.") end
  if grant ~= "client_credentials" then
    return validation("GrantType", "The GrantType must be client_credentials.")
  end
  local rec = store.get(key(id))
  if not active(rec, store.now()) or rec.secret ~= secret then
    return 401, "", { ["WWW-Authenticate"] = "Bearer" }
  end
  local ttl = S.spreetail_token_ttl
  local tok = common.issue_token({ p = "spreetail", cid = id, acct = rec.account, jwt = true }, ttl)
  return 200, { accessToken = tok, tokenType = "bearer", expiresIn = ttl }, common.NO_STORE
end

local function authenticate()
  local tok, why = store.get_token(util.bearer())
  local caller
  if tok and tok.p == "spreetail" then
    caller = store.get(key(tok.cid))
    if S.spreetail_revoke_tokens and not active(caller, store.now()) then tok = nil end
  else
    tok = nil
  end
  if not tok then
    local h = (why == "expired") and 'Bearer error="invalid_token", error_description="The token expired"'
      or 'Bearer'
    return nil, 401, "", { ["WWW-Authenticate"] = h }
  end
  local ok, wait = store.rate_ok("st:" .. tok.cid, S.spreetail_rate, 1)
  if not ok then return nil, 429, "", { ["Retry-After"] = tostring(wait) } end
  if caller and caller.can_manage == false then return nil, 403, "" end
  return tok
end

local function create(tok)
  if not util.content_type():find("application/json", 1, true) then
    util.body()
    return 415, { title = "Unsupported Media Type", status = 415 }, PROBLEM
  end
  local b = util.decode(util.body())
  if type(b) ~= "table" then return validation("$", "The JSON value could not be converted.") end
  if type(b.name) ~= "string" or b.name == "" then return validation("Name", "The Name field is required.") end
  local expires
  if b.expires ~= nil and b.expires ~= util.null then
    expires = util.parse_iso(b.expires)
    if not expires then return validation("Expires", "The Expires field is not a valid date.") end
    if expires <= store.now() then return validation("Expires", "Expires must be in the future.") end
  end
  local rec = new_record({ name = b.name, expires = expires, account = tok.acct })
  store.put(key(rec.clientId), rec)
  store.record_secret("spreetail", rec.clientId, rec.secret, "issued")
  return S.spreetail_create_status, shape(rec, true)
end

local function list(tok)
  local now = store.now()
  local out = {}
  for _, rec in pairs(store.scan("st:cred:")) do
    if rec.account == tok.acct and active(rec, now) then out[#out + 1] = rec end
  end
  table.sort(out, function(a, b)
    if a.created ~= b.created then return a.created < b.created end
    return a.clientId < b.clientId
  end)
  for i, rec in ipairs(out) do out[i] = shape(rec, false) end
  return 200, util.array(out)
end

local function delete(tok, id)
  return store.locked(function()
    local rec = store.get(key(id))
    if not rec or rec.account ~= tok.acct or not active(rec, store.now()) then
      return 404, {
        type = "https://tools.ietf.org/html/rfc7231#section-6.5.4", title = "Not Found", status = 404,
      }, PROBLEM
    end
    store.delete(key(id))
    return 204, ""
  end)
end

function _M.handle(path, method)
  if path == "/api/v0/oauth/token" then
    if method ~= "POST" then return 405, "" end
    return token()
  end
  if path == "/api/v0/client-credentials" or path:match("^/api/v0/client%-credentials/") then
    local tok, status, body, headers = authenticate()
    if not tok then return status, body, headers end
    if path == "/api/v0/client-credentials" then
      if method == "POST" then return create(tok) end
      if method == "GET" then return list(tok) end
      return 405, ""
    end
    local id = path:match("^/api/v0/client%-credentials/([^/]+)$")
    if id and method == "DELETE" then return delete(tok, ngx.unescape_uri(id)) end
    return 405, ""
  end
  return 404, ""
end

return _M
