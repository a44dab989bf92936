-- Spreetail /api/v0 client credentials: create, list, delete.
local client = require "rotor.client"
local json = require "rotor.json"
local errors = require "rotor.errors"

local _M = {}

local Spreetail = client.class("spreetail")
_M.class = Spreetail

local BASE = "https://api.spreetail.com"
local TOKEN_PATH = "/api/v0/oauth/token"
local PATH = "/api/v0/client-credentials"

--- rotor.spreetail{ client_id=, client_secret=, ... }
function _M.new(opts)
  client.check_table("spreetail", opts)
  local token_url = BASE .. TOKEN_PATH
  if type(opts.base_url) == "string" then token_url = opts.base_url:gsub("/+$", "") .. TOKEN_PATH end
  return client.new(Spreetail, opts, {
    provider = "spreetail",
    base_url = BASE,
    token_url = token_url,
    token = {
      style = "multipart",
      fields = { grant_type = "GrantType", client_id = "ClientId", client_secret = "ClientSecret" },
      response = { token = "accessToken", expires = "expiresIn" },
    },
    rates = {}, -- none documented; rate_limits = { default = {rate=, per=} } adds one
  })
end

local function credential_shape(v)
  if type(v) ~= "table" or v[1] ~= nil then return nil, "a credential object expected" end
  if type(v.clientId) ~= "string" or v.clientId == "" then return nil, "clientId missing" end
  if type(v.secret) ~= "string" or v.secret == "" then return nil, "secret missing" end
  return true
end

local function list_shape(v)
  if type(v) ~= "table" then return nil, "an array of credentials expected" end
  for k, item in pairs(v) do
    if type(k) ~= "number" or type(item) ~= "table" then return nil, "an array of credentials expected" end
  end
  return true
end

local function wrap_secret(v)
  if v.secret == json.null then return end
  client.secret_field(v, "secret")
end

--- "Create New Client Credentials": { credentialId, clientId, name, secret=<secret>, expires, created }
function Spreetail:create_client_credentials(args)
  args = args or {}
  if type(args) ~= "table" then error("create_client_credentials: a table {name=, expires=} expected", 2) end
  if type(args.name) ~= "string" or args.name == "" then
    error("create_client_credentials: name must be a non-empty string", 2)
  end
  if args.expires ~= nil and args.expires ~= json.null and type(args.expires) ~= "string" then
    error("create_client_credentials: expires must be an ISO-8601 string or nil", 2)
  end
  return self:call("create_client_credentials", "POST", PATH, {
    body = { name = args.name, expires = args.expires == nil and json.null or args.expires },
    mint = true, shape = credential_shape, secrets = wrap_secret,
  })
end

--- Every active credential: { {credentialId, clientId, name, secret=null, expires, created}, ... }
function Spreetail:list_client_credentials()
  local v, err = self:call("list_client_credentials", "GET", PATH, { shape = list_shape })
  if v then for _, item in ipairs(v) do wrap_secret(item) end end
  return v, err
end

--- Revoke a credential (immediately) by its clientId: true.
function Spreetail:delete_client_credentials(id)
  if type(id) ~= "string" or id == "" then
    error("delete_client_credentials: a clientId string expected", 2)
  end
  local ok, err = self:call("delete_client_credentials", "DELETE", PATH .. "/" .. client.escape(id))
  if ok or not (errors.is(err) and err.status == 404) then return ok, err end
  -- a 404 is taken as "deleted already" by the callers: only once the pair is seen to be gone
  local list, lerr = self:list_client_credentials()
  if not list then return nil, lerr end
  for _, c in ipairs(list) do
    if c.clientId == id then
      return nil, errors.new { kind = "protocol", provider = self.provider, op = "delete_client_credentials",
        message = ("deleting pair %s was answered 404 (not found), but the account still lists it: it was not "
          .. "deleted"):format(id) }
    end
  end
  return nil, err
end

return _M
