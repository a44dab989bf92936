-- Paylocity WebLink API: obtainNewClientSecret (POST /api/v2/credentials/secrets).
local client = require "rotor.client"

local _M = {}

local Paylocity = client.class("paylocity")
_M.class = Paylocity

local HOSTS = {
  production = { api = "https://api.paylocity.com", nextgen = "https://dc1prodgwext.paylocity.com" },
  sandbox = { api = "https://dc1demogw.paylocity.com", nextgen = "https://dc1demogwext.paylocity.com" },
}
_M.HOSTS = HOSTS

local TOKEN_STYLES = {
  weblink = { path = "/IdentityServer/connect/token", style = "basic", scope = "WebLinkAPI" },
  nextgen = { path = "/public/security/v1/token", style = "form" },
}

-- WebLink: 25 calls per second, leaky bucket, no bursts.
local RATES = { default = { rate = 25, per = 1 } }

--- rotor.paylocity{ client_id=, client_secret=, sandbox=false, token_style="weblink"|"nextgen", ... }
function _M.new(opts)
  client.check_table("paylocity", opts)
  if opts.sandbox ~= nil and type(opts.sandbox) ~= "boolean" then
    return client.config_error("paylocity", "sandbox", "true or false expected")
  end
  local style_name = opts.token_style or "weblink"
  local style = TOKEN_STYLES[style_name]
  if not style then
    return client.config_error("paylocity", "token_style", "\"weblink\" or \"nextgen\" expected")
  end
  local hosts = HOSTS[opts.sandbox and "sandbox" or "production"]
  local token_host = style_name == "nextgen" and hosts.nextgen or hosts.api
  local token_url = token_host .. style.path
  if type(opts.base_url) == "string" and not opts.token_url then
    -- an overridden API root (a proxy, the simulator) serves the token endpoint too
    token_url = opts.base_url:gsub("/+$", "") .. style.path
  end
  return client.new(Paylocity, opts, {
    provider = "paylocity",
    base_url = hosts.api,
    token_url = token_url,
    token = { style = style.style, scope = style.scope },
    rates = RATES,
    own = { sandbox = client.validators.boolean, token_style = client.validators.string },
  })
end

local function shape(v)
  if type(v) ~= "table" or type(v[1]) ~= "table" then
    return nil, "an array of ClientCredentialsResponse expected"
  end
  if type(v[1].clientSecret) ~= "string" or v[1].clientSecret == "" then
    return nil, "clientSecret missing"
  end
  return true
end

local function secrets(v)
  for _, item in ipairs(v) do client.secret_field(item, "clientSecret") end
end

--- obtainNewClientSecret: { {clientSecret=<secret>, clientSecretExpirationDate=...} }
function Paylocity:obtain_new_client_secret(args)
  if type(args) ~= "table" then error("obtain_new_client_secret: a table {code=} expected", 2) end
  if type(args.code) ~= "string" or args.code == "" then
    error("obtain_new_client_secret: code must be a non-empty string", 2)
  end
  return self:call("obtain_new_client_secret", "POST", "/api/v2/credentials/secrets", {
    body = { code = args.code }, mint = true, shape = shape, secrets = secrets,
  })
end

return _M
