-- rotorsim.spapi: Login with Amazon (/lwa/auth/o2/token) and the SP-API Application Management
-- rotateApplicationClientSecret (/spapi/applications/2023-11-30/clientSecret). As Amazon documents it
-- (lua/rotor/providers/spapi.lua).
local util = require "rotorsim.util"
local store = require "rotorsim.store"
local common = require "rotorsim.common"
local sqs = require "rotorsim.sqs"

local _M = {}

local S = store.S
local ROTATION_SCOPE = "sellingpartnerapi::client_credential:rotation"
local SCOPES = { [ROTATION_SCOPE] = true, ["sellingpartnerapi::notifications"] = true,
  ["sellingpartnerapi::migration"] = true }

local function key(id) return "sp:app:" .. id end

local function lwa_secret() return "amzn1.oa2-cs.v1." .. util.random_hex(32) end

local function public(rec)
  local secrets = {}
  for i, s in ipairs(rec.secrets) do
    secrets[i] = { secret = s.secret, expires = s.expires and util.iso(s.expires) or util.null }
  end
  local out = {
    provider = "spapi", client_id = rec.client_id, application_id = rec.application_id,
    client_secret = rec.secrets[#rec.secrets].secret, secrets = secrets, queue = rec.queue or util.null,
    sqs = sqs.account_info(rec.queue),
  }
  out.queue_url = out.sqs.queue_url
  return out
end

-- seed { client_id?, client_secret?, application_id?, queue? (true: the default queue; a name;
--        false: none registered), expires? (secret expiry; default now+180 d) }
function _M.seed(t)
  local rec = {
    client_id = t.client_id or ("amzn1.application-oa2-client." .. util.random_hex(16)),
    application_id = t.application_id or ("amzn1.sp.solution." .. util.uuid()),
    secrets = {},
  }
  if t.queue == nil or t.queue == true then rec.queue = S.sqs_queue
  elseif type(t.queue) == "string" then rec.queue = t.queue end
  if rec.queue then sqs.create_queue(rec.queue) end
  local secret = t.client_secret or lwa_secret()
  rec.secrets[1] = { secret = secret, expires = common.seed_expires(t.expires, S.spapi_new_secret_seconds) }
  store.put(key(rec.client_id), rec)
  store.record_secret("spapi", rec.client_id, secret, "seed")
  return public(rec)
end

-- LWA: POST /auth/o2/token, form (or JSON) body with client_id, client_secret, grant_type, scope
local function lwa_token()
  local f, kind = common.token_fields()
  if not (kind == "form" or (kind == "json" and S.lwa_accept_json)) then
    return common.oauth_error(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
  end
  if f.grant_type == nil or f.grant_type == "" then
    return common.oauth_error(400, "invalid_request", "The request is missing a required parameter : grant_type")
  end
  if f.grant_type ~= "client_credentials" then
    return common.oauth_error(400, "unsupported_grant_type", "The authorization grant type is not supported")
  end
  for _, p in ipairs({ "client_id", "client_secret" }) do
    if type(f[p]) ~= "string" or f[p] == "" then
      return common.oauth_error(400, "invalid_request", "The request is missing a required parameter : " .. p)
    end
  end
  local rec = store.get(key(f.client_id))
  if not rec or not common.secret_valid(rec.secrets, f.client_secret, store.now()) then
    return common.oauth_error(401, "invalid_client", "Client authentication failed")
  end
  if type(f.scope) ~= "string" or f.scope == "" then
    return common.oauth_error(400, "invalid_scope", "The request has an invalid parameter : scope")
  end
  for s in f.scope:gmatch("%S+") do
    if not SCOPES[s] then return common.oauth_error(400, "invalid_scope", "An unknown scope was requested") end
  end
  local ttl = S.lwa_token_ttl
  local tok = "Atc|" .. util.b64url(util.random_bytes(48))
  store.put_token(tok, { p = "lwa", cid = rec.client_id, scope = f.scope, exp = store.now() + ttl }, ttl)
  return 200, { access_token = tok, token_type = "bearer", expires_in = ttl, scope = f.scope }, common.NO_STORE
end

local function sp_error(status, code, message, details, headers)
  local h = common.merge({ ["x-amzn-RequestId"] = util.uuid(), ["x-amzn-ErrorType"] = code }, headers)
  return status, { errors = { { code = code, message = message, details = details or "" } } }, h
end

local function rotate()
  util.body()
  local tokstr = ngx.var.http_x_amz_access_token
  if not tokstr or tokstr == "" then
    return sp_error(403, "Unauthorized", "Access to requested resource is denied.",
      "The request is missing the x-amz-access-token header.")
  end
  local tok, why = store.get_token(tokstr)
  if not tok or tok.p ~= "lwa" then
    return sp_error(403, "Unauthorized", "Access to requested resource is denied.",
      why == "expired" and "The access token you provided has expired."
      or "The access token you provided is revoked, malformed or invalid.")
  end
  local has_scope = false
  for s in (tok.scope or ""):gmatch("%S+") do
    if s == ROTATION_SCOPE then has_scope = true end
  end
  if not has_scope then
    return sp_error(403, "Unauthorized", "Access to requested resource is denied.",
      "The access token does not grant the scope " .. ROTATION_SCOPE .. ".")
  end
  local limit = { ["x-amzn-RateLimit-Limit"] = "0.0167" }
  return store.locked(function()
    local rec = store.get(key(tok.cid))
    if not rec then return sp_error(403, "Unauthorized", "Access to requested resource is denied.") end
    local now = store.now()
    if S.spapi_rotate_interval > 0 and rec.last_rotation and now - rec.last_rotation < S.spapi_rotate_interval then
      return sp_error(429, "QuotaExceeded", "You exceeded your quota for the requested resource.", nil, limit)
    end
    if not rec.queue then
      return sp_error(400, "InvalidInput",
        "Please set the notification preference for APPLICATION_OAUTH_CLIENT_NEW_SECRET in Developer Console "
        .. "before calling this operation.", nil, limit)
    end
    rec.last_rotation = now
    local old_expiry = now + S.spapi_old_secret_seconds
    for _, s in ipairs(rec.secrets) do
      if s.expires == nil or s.expires > old_expiry then s.expires = old_expiry end
    end
    local secret = lwa_secret()
    local new_expiry = now + S.spapi_new_secret_seconds
    rec.secrets[#rec.secrets + 1] = { secret = secret, expires = new_expiry }
    store.put(key(rec.client_id), rec)
    store.record_secret("spapi", rec.client_id, secret, "issued")
    local body = util.encode({
      notificationVersion = "1.0", notificationType = "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
      payloadVersion = "2023-11-30", eventTime = util.iso(now),
      payload = { applicationOAuthClientNewSecret = {
        clientId = rec.client_id, newClientSecret = secret,
        newClientSecretExpiryTime = util.iso(new_expiry), oldClientSecretExpiryTime = util.iso(old_expiry),
      } },
      notificationMetadata = {
        applicationId = rec.application_id, subscriptionId = "sim-subscription-" .. rec.queue,
        publishTime = util.iso(now), notificationId = util.uuid(),
      },
    })
    sqs.enqueue(rec.queue, body, S.spapi_delivery_delay)
    return 204, "", common.merge(limit, { ["x-amzn-RequestId"] = util.uuid() })
  end)
end

function _M.handle(path, method, prefix)
  if prefix == "lwa" then
    if path == "/auth/o2/token" then
      if method ~= "POST" then return 405, "" end
      return lwa_token()
    end
    return 404, ""
  end
  if path == "/applications/2023-11-30/clientSecret" then
    if method ~= "POST" then
      return sp_error(405, "MethodNotAllowed", "Method not allowed.")
    end
    return rotate()
  end
  return sp_error(404, "NotFound", "Resource not found.")
end

return _M
