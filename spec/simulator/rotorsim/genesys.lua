-- rotorsim.genesys: Genesys Cloud login /oauth/token, the six OAuth client operations and
-- GET/HEAD /api/v2/tokens/me. As the provider documents them (lua/rotor/providers/genesys.lua).
local util = require "rotorsim.util"
local store = require "rotorsim.store"
local common = require "rotorsim.common"

local _M = {}

local S = store.S

-- built-in roles (roleDivisions[].roleId) and the permissions they carry
_M.ADMIN_ROLE = "00000000-0000-4000-8000-00000000a001"
_M.VIEWER_ROLE = "00000000-0000-4000-8000-00000000a002"
_M.HOME_DIVISION = "00000000-0000-4000-8000-00000000d001"
local ROLE_PERMS = {
  [_M.ADMIN_ROLE] = { "oauth:client:view", "oauth:client:add", "oauth:client:edit", "oauth:client:delete" },
  [_M.VIEWER_ROLE] = { "oauth:client:view" },
}
local ORG = { id = "00000000-0000-4000-8000-0000000000c1", name = "rotor simulated org",
  selfUri = "/api/v2/organizations/00000000-0000-4000-8000-0000000000c1" }
local GRANTS = { CODE = true, TOKEN = true, ["SAML2-BEARER"] = true, PASSWORD = true,
  ["CLIENT-CREDENTIALS"] = true }
local STATES = { active = true, disabled = true, inactive = true }
local BASE = "/api/v2/oauth/clients"

local function key(id) return "gc:client:" .. id end

local function err(status, code, message, extra)
  local b = { message = message, code = code, status = status, contextId = util.uuid(),
    details = util.EMPTY_ARRAY, errors = util.EMPTY_ARRAY }
  for k, v in pairs(extra or {}) do b[k] = v end
  return status, b, { ["inin-correlation-id"] = b.contextId }
end

local function shape(rec, with_secret)
  local out = {
    id = rec.id, name = rec.name, description = rec.description,
    accessTokenValiditySeconds = rec.accessTokenValiditySeconds,
    authorizedGrantType = rec.authorizedGrantType,
    roleDivisions = util.array(rec.roleDivisions), scope = rec.scope and util.array(rec.scope),
    registeredRedirectUri = rec.registeredRedirectUri and util.array(rec.registeredRedirectUri), state = rec.state,
    dateToDelete = rec.dateToDelete and util.iso(rec.dateToDelete) or nil,
    dateCreated = util.iso(rec.dateCreated), dateModified = util.iso(rec.dateModified),
    createdBy = { id = rec.createdBy, selfUri = "/api/v2/users/" .. rec.createdBy },
    modifiedBy = { id = rec.modifiedBy, selfUri = "/api/v2/users/" .. rec.modifiedBy },
    selfUri = BASE .. "/" .. rec.id,
  }
  if with_secret or S.genesys_secret_on_get then out.secret = rec.secret end
  return out
end

local function new_secret() return util.b64url(util.random_bytes(32)) end

-- validate an OAuthClientRequest into rec (creating fields); returns true or status, body, headers
local function apply_request(rec, b)
  if type(b.name) ~= "string" or b.name == "" then return err(400, "bad.request", "name is required") end
  if not GRANTS[b.authorizedGrantType] then
    return err(400, "bad.request",
      "authorizedGrantType is required: CODE, TOKEN, SAML2-BEARER, PASSWORD or CLIENT-CREDENTIALS")
  end
  local v = b.accessTokenValiditySeconds
  if v ~= nil and (type(v) ~= "number" or v < 300 or v > 172800) then
    return err(400, "bad.request", "accessTokenValiditySeconds must be between 300 and 172800")
  end
  if b.state ~= nil and not STATES[b.state] then
    return err(400, "bad.request", "state must be active, disabled or inactive")
  end
  if b.roleDivisions ~= nil then
    if type(b.roleDivisions) ~= "table" then return err(400, "bad.request", "roleDivisions must be an array") end
    for _, rd in ipairs(b.roleDivisions) do
      if type(rd) ~= "table" or type(rd.roleId) ~= "string" or type(rd.divisionId) ~= "string" then
        return err(400, "bad.request", "roleDivisions[] needs roleId and divisionId")
      end
    end
  end
  rec.name, rec.description = b.name, b.description
  rec.authorizedGrantType = b.authorizedGrantType
  rec.accessTokenValiditySeconds = v or S.genesys_token_ttl_default
  rec.roleDivisions = b.roleDivisions or {}
  rec.scope, rec.registeredRedirectUri = b.scope, b.registeredRedirectUri
  local old_state = rec.state
  rec.state = b.state or "active"
  if rec.state == "inactive" and old_state ~= "inactive" then
    rec.dateToDelete = store.now() + 30 * 86400
  elseif rec.state ~= "inactive" then
    rec.dateToDelete = nil
  end
  return true
end

local function new_record(creator)
  local now = store.now()
  return { id = util.uuid(), secret = new_secret(), gen = 1, dateCreated = now, dateModified = now,
    createdBy = creator, modifiedBy = creator, permissions = {} }
end

-- seed { client_id?, client_secret?, name?, admin? (ADMIN_ROLE), roleDivisions?, permissions?,
--        state?, accessTokenValiditySeconds?, authorizedGrantType? ("CLIENT-CREDENTIALS"), scope?,
--        registeredRedirectUri? }
function _M.seed(t)
  local rec = new_record(util.uuid())
  rec.id = t.client_id or rec.id
  rec.secret = t.client_secret or rec.secret
  local rds = t.roleDivisions
  if not rds and t.admin then rds = { { roleId = _M.ADMIN_ROLE, divisionId = _M.HOME_DIVISION } } end
  local ok, body = apply_request(rec, {
    name = t.name or ("seeded " .. rec.id:sub(1, 8)), description = t.description,
    authorizedGrantType = t.authorizedGrantType or "CLIENT-CREDENTIALS",
    accessTokenValiditySeconds = t.accessTokenValiditySeconds, state = t.state, roleDivisions = rds or {},
    scope = t.scope, registeredRedirectUri = t.registeredRedirectUri,
  })
  if ok ~= true then return nil, body.message end
  rec.permissions = t.permissions or {}
  store.put(key(rec.id), rec)
  store.record_secret("genesys", rec.id, rec.secret, "seed")
  local out = shape(rec, true)
  out.provider, out.client_id, out.client_secret = "genesys", rec.id, rec.secret
  return out
end

local function has_perm(rec, perm)
  for _, p in ipairs(rec.permissions or {}) do
    if p == perm or p == "*" then return true end
  end
  for _, rd in ipairs(rec.roleDivisions or {}) do
    for _, p in ipairs(ROLE_PERMS[rd.roleId] or {}) do
      if p == perm then return true end
    end
  end
  return false
end

-- login host: POST /oauth/token (Basic + form)
local function token()
  local f, kind = common.token_fields()
  if kind ~= "form" then return common.oauth_error(400, "invalid_request", "form body required") end
  local creds = common.basic_candidates(S)
  if not creds then return common.oauth_error(400, "invalid_client", "client authentication required") end
  if f.grant_type ~= "client_credentials" then
    return common.oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
  end
  local rec, secret_ok
  for _, c in ipairs(creds) do
    rec = store.get(key(c[1]))
    if rec and (rec.secret == c[2] or (rec.old_secret and rec.old_secret == c[2])) then
      secret_ok = true
      break
    end
  end
  if not rec or not secret_ok then
    local s, b, h = common.oauth_error(401, "invalid_client", "client not found or bad secret",
      { ["WWW-Authenticate"] = 'Basic realm="login"' })
    b.description = b.error_description
    return s, b, h
  end
  if rec.state ~= "active" then
    local s, b, h = common.oauth_error(401, "invalid_client", "client is " .. rec.state)
    b.description = b.error_description
    return s, b, h
  end
  if rec.authorizedGrantType ~= "CLIENT-CREDENTIALS" then
    return common.oauth_error(400, "unauthorized_client", "client is not a client-credentials client")
  end
  local ttl = rec.accessTokenValiditySeconds
  local tok = common.issue_token({ p = "genesys", cid = rec.id, gen = rec.gen }, ttl)
  return 200, { access_token = tok, token_type = "bearer", expires_in = ttl }, common.NO_STORE
end

local function authenticate()
  local tokstr = util.bearer()
  local tok = store.get_token(tokstr)
  local caller
  if tok and tok.p == "genesys" then
    caller = store.get(key(tok.cid))
    if not caller or caller.state ~= "active"
      or (S.genesys_regenerate_kills_tokens and caller.gen ~= tok.gen) then
      caller = nil
    end
  end
  if not caller then return nil, err(401, "bad.credentials", "Invalid login credentials.") end
  local ok, wait = store.rate_ok("gc:" .. tokstr, S.genesys_rate, 60)
  if not ok then
    local s, b, h = err(429, "too.many.requests",
      "Rate limit exceeded the maximum. Retry the request in [" .. wait .. "] seconds",
      { messageWithParams = "Rate limit exceeded the maximum. Retry the request in [{retryAfter}] seconds",
        messageParams = { retryAfter = tostring(wait) } })
    if S.genesys_retry_after then h["Retry-After"] = tostring(wait) end
    return nil, s, b, h
  end
  return caller, tokstr
end

local function need(caller, perm)
  if has_perm(caller, perm) then return nil end
  return err(403, "missing.permissions",
    "Unable to perform the requested action. You are missing the following permission(s): [" .. perm .. "]",
    { messageWithParams =
        "Unable to perform the requested action. You are missing the following permission(s): {permissions}",
      messageParams = { permissions = perm } })
end

local LIST_FIELDS = { "roleDivisions", "registeredRedirectUri", "scope", "roleIds" }

local function json_request()
  local ct = util.content_type()
  local raw = util.body()
  if #raw > 512000 then return nil, err(413, "request.entity.too.large", "request body exceeds 512000 bytes") end
  if not ct:find("application/json", 1, true) then
    return nil, err(415, "unsupported.media.type", "Content-Type must be application/json")
  end
  local b = util.decode(raw)
  if type(b) ~= "table" then return nil, err(400, "bad.request", "The request body could not be parsed") end
  -- a strict server: list fields must be JSON arrays (this cjson decodes [] and {} alike, so the
  -- text is checked)
  for _, f in ipairs(LIST_FIELDS) do
    if raw:find('"' .. f .. '"%s*:%s*{') then
      return nil, err(400, "bad.request", f .. " must be an array")
    end
  end
  return b
end

local function tokens_me(caller, method)
  if method == "HEAD" then return 200, "" end
  if method ~= "GET" then return err(405, "method.not.allowed", "method not allowed") end
  return 200, {
    organization = ORG, homeOrganization = ORG, authorizedScope = util.EMPTY_ARRAY,
    OAuthClient = { id = caller.id, name = caller.name, organization = { id = ORG.id } },
  }
end

local function list(caller)
  local s, b, h = need(caller, "oauth:client:view")
  if s then return s, b, h end
  local all = {}
  for _, rec in pairs(store.scan("gc:client:")) do all[#all + 1] = rec end
  table.sort(all, function(x, y)
    if x.dateCreated ~= y.dateCreated then return x.dateCreated < y.dateCreated end
    return x.id < y.id
  end)
  local args = ngx.req.get_uri_args()
  local size = tonumber(args.pageSize) or S.genesys_page_size
  local pn = tonumber(args.pageNumber) or 1
  size = math.max(1, math.min(500, math.floor(size)))
  pn = math.max(1, math.floor(pn))
  local total = #all
  local pages = math.max(1, math.ceil(total / size))
  local ents = {}
  for i = (pn - 1) * size + 1, math.min(total, pn * size) do ents[#ents + 1] = shape(all[i], false) end
  local function uri(n) return BASE .. "?pageSize=" .. size .. "&pageNumber=" .. n end
  return 200, {
    entities = util.array(ents), pageSize = size, pageNumber = pn, total = total, pageCount = pages,
    firstUri = uri(1), selfUri = uri(pn), lastUri = uri(pages),
    nextUri = (pn < pages) and uri(pn + 1) or nil, previousUri = (pn > 1) and uri(pn - 1) or nil,
  }
end

local function create(caller)
  local s, b, h = need(caller, "oauth:client:add")
  if s then return s, b, h end
  local req, es, eb, eh = json_request()
  if not req then return es, eb, eh end
  local rec = new_record(caller.id)
  local st, bd, hd = apply_request(rec, req)
  if st ~= true then return st, bd, hd end
  store.put(key(rec.id), rec)
  store.record_secret("genesys", rec.id, rec.secret, "issued")
  return 200, shape(rec, true)
end

local function notfound(id)
  return err(404, "not.found", "The requested resource was not found", { entityId = id })
end

local function one(caller, method, id, sub)
  if sub == "/secret" then
    if method ~= "POST" then return err(405, "method.not.allowed", "method not allowed") end
    local s, b, h = need(caller, "oauth:client:edit")
    if s then return s, b, h end
    util.body()
    return store.locked(function()
      local rec = store.get(key(id))
      if not rec then return notfound(id) end
      rec.old_secret = (not S.genesys_regenerate_kills_old) and rec.secret or nil
      rec.secret = new_secret()
      rec.gen = rec.gen + 1
      rec.dateModified, rec.modifiedBy = store.now(), caller.id
      store.put(key(id), rec)
      store.record_secret("genesys", rec.id, rec.secret, "issued")
      return 200, shape(rec, true)
    end)
  elseif sub ~= "" then
    return notfound(id)
  end
  if method == "GET" then
    local s, b, h = need(caller, "oauth:client:view")
    if s then return s, b, h end
    local rec = store.get(key(id))
    if not rec then return notfound(id) end
    return 200, shape(rec, false)
  elseif method == "PUT" then
    local s, b, h = need(caller, "oauth:client:edit")
    if s then return s, b, h end
    local req, es, eb, eh = json_request()
    if not req then return es, eb, eh end
    return store.locked(function()
      local rec = store.get(key(id))
      if not rec then return notfound(id) end
      local st, bd, hd = apply_request(rec, req)
      if st ~= true then return st, bd, hd end
      rec.dateModified, rec.modifiedBy = store.now(), caller.id
      store.put(key(id), rec)
      return 200, shape(rec, false)
    end)
  elseif method == "DELETE" then
    local s, b, h = need(caller, "oauth:client:delete")
    if s then return s, b, h end
    return store.locked(function()
      if not store.get(key(id)) then return notfound(id) end
      store.delete(key(id))
      return S.genesys_delete_status, ""
    end)
  end
  return err(405, "method.not.allowed", "method not allowed")
end

function _M.handle(path, method)
  if path == "/login/oauth/token" then
    if method ~= "POST" then return 405, "" end
    return token()
  end
  if path:sub(1, 8) ~= "/api/v2/" then return err(404, "not.found", "The requested resource was not found") end
  local caller, s, eb, h = authenticate()
  if not caller then return s, eb, h end
  if path == "/api/v2/tokens/me" then return tokens_me(caller, method) end
  if path == BASE then
    if method == "GET" then return list(caller) end
    if method == "POST" then return create(caller) end
    return err(405, "method.not.allowed", "method not allowed")
  end
  local id, sub = path:match("^/api/v2/oauth/clients/([^/]+)(.*)$")
  if id then return one(caller, method, ngx.unescape_uri(id), sub) end
  return err(404, "not.found", "The requested resource was not found")
end

return _M
