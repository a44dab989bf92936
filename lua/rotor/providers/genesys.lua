-- Genesys Cloud Platform API v2, OAuthApi: /api/v2/oauth/clients...
local client = require "rotor.client"
local json = require "rotor.json"
local errors = require "rotor.errors"

local _M = {}

local Genesys = client.class("genesys")
_M.class = Genesys

-- region name -> domain (API host api.<domain>, token host login.<domain>)
local REGIONS = {
  us_east_1 = "mypurecloud.com",
  us_east_2 = "use2.us-gov-pure.cloud",
  us_west_2 = "usw2.pure.cloud",
  ca_central_1 = "cac1.pure.cloud",
  sa_east_1 = "sae1.pure.cloud",
  eu_west_1 = "mypurecloud.ie",
  eu_west_2 = "euw2.pure.cloud",
  eu_central_1 = "mypurecloud.de",
  eu_central_2 = "euc2.pure.cloud",
  me_central_1 = "mec1.pure.cloud",
  ap_south_1 = "aps1.pure.cloud",
  ap_northeast_1 = "mypurecloud.jp",
  ap_northeast_2 = "apne2.pure.cloud",
  ap_northeast_3 = "apne3.pure.cloud",
  ap_southeast_2 = "mypurecloud.com.au",
}
_M.REGIONS = REGIONS

local DOMAINS = {}
for _, d in pairs(REGIONS) do DOMAINS[d] = true end

local MAX_PAGES = 10000
local PATH = "/api/v2/oauth/clients"

-- 300 requests per client-credentials token per minute.
local RATES = { default = { rate = 300, per = 60 } }

--- The domain of a region given as a domain ("mypurecloud.ie") or a name ("eu_west_1", "eu-west-1").
function _M.domain(region)
  if type(region) ~= "string" then return nil end
  local r = region:lower()
  if DOMAINS[r] then return r end
  return REGIONS[(r:gsub("-", "_"))]
end

--- rotor.genesys{ region="mypurecloud.ie" | "eu_west_1", client_id=, client_secret=, ... }
function _M.new(opts)
  client.check_table("genesys", opts)
  local domain = "mypurecloud.com"
  if opts.region ~= nil then
    domain = _M.domain(opts.region)
    if not domain then
      return client.config_error("genesys", "region",
        ("unknown region %q (a domain such as mypurecloud.ie or a name such as eu_west_1)")
          :format(tostring(opts.region)))
    end
  end
  local token_url = "https://login." .. domain .. "/oauth/token"
  if type(opts.base_url) == "string" and opts.token_url == nil then
    -- as the SDKs do: the login host is the API host with api. replaced by login.
    local scheme, rest = opts.base_url:match("^(https?://)api%.([^/]+)")
    if scheme then token_url = scheme .. "login." .. rest .. "/oauth/token" end
  end
  local o, err = client.new(Genesys, opts, {
    provider = "genesys",
    base_url = "https://api." .. domain,
    token_url = token_url,
    token = { style = "basic" },
    rates = RATES,
    own = { region = client.validators.string },
  })
  if not o then return nil, err end
  o.domain = domain
  return o
end

local function object_shape(v)
  if type(v) ~= "table" or v[1] ~= nil then return nil, "an OAuthClient object expected" end
  return true
end

local function minted_shape(v)
  local ok, why = object_shape(v)
  if not ok then return nil, why end
  if type(v.secret) ~= "string" or v.secret == "" then return nil, "secret missing" end
  if type(v.id) ~= "string" then return nil, "id missing" end
  return true
end

-- entities: absent, null, or an array of objects (recovery reads each one's name and id)
local function listing_shape(v)
  if type(v) ~= "table" or v[1] ~= nil then return nil, "an OAuthClientEntityListing expected" end
  local e = v.entities
  if e == nil or e == json.null then return true end
  if type(e) ~= "table" then return nil, "entities is not an array" end
  for k, item in pairs(e) do
    if type(k) ~= "number" then return nil, "entities is not an array" end
    if type(item) ~= "table" or item[1] ~= nil then return nil, "an entity is not an object" end
  end
  return true
end

local function wrap_client(v)
  if type(v) == "table" and v.secret ~= json.null then client.secret_field(v, "secret") end
end

local function wrap_listing(v)
  if type(v.entities) == "table" then
    for _, e in ipairs(v.entities) do wrap_client(e) end
  end
end

local function check_id(name, id)
  if type(id) ~= "string" or id == "" then error(name .. ": a client id string expected", 3) end
end

local function check_body(name, body)
  if type(body) ~= "table" then error(name .. ": an OAuthClientRequest table expected", 3) end
end

--- getOauthClients, every page merged: { entities = {...}, total = n, ... }
function Genesys:get_oauth_clients()
  local op = "get_oauth_clients"
  local first, err = self:call(op, "GET", PATH, { shape = listing_shape, secrets = wrap_listing })
  if not first then return nil, err end
  local all = json.array({})
  local seen = { [PATH] = true }
  local page = first
  local pages = 1
  while true do
    if type(page.entities) == "table" then
      for _, e in ipairs(page.entities) do all[#all + 1] = e end
    end
    local nxt = page.nextUri
    if type(nxt) ~= "string" or nxt == "" then break end
    if nxt:find("[%c%s]") then
      return nil, errors.new { kind = "protocol", provider = self.provider, op = op,
        message = "the listing's nextUri holds a control character or a space, so it is no link to the next page: "
          .. errors.printable(nxt:sub(1, 120)) }
    end
    if nxt:find("^%a[%w+.-]*://") then
      -- an absolute nextUri: keep only its path, the host is ours
      nxt = nxt:match("^%a[%w+.-]*://[^/]*(.*)$")
    end
    if nxt:sub(1, 1) ~= "/" then nxt = "/" .. nxt end
    if seen[nxt] then break end
    seen[nxt] = true
    pages = pages + 1
    if pages > MAX_PAGES then
      return nil, errors.new { kind = "protocol", provider = self.provider, op = op,
        message = "more than " .. MAX_PAGES .. " pages" }
    end
    page, err = self:call(op, "GET", nxt, { shape = listing_shape, secrets = wrap_listing })
    if not page then return nil, err end
  end
  local merged = {}
  for k, v in pairs(first) do merged[k] = v end
  merged.entities = all
  merged.total = #all
  merged.pageCount, merged.pageNumber, merged.pageSize = 1, 1, #all
  merged.nextUri, merged.previousUri, merged.lastUri = nil, nil, nil
  return merged
end

--- getOauthClient: OAuthClient
function Genesys:get_oauth_client(id)
  check_id("get_oauth_client", id)
  return self:call("get_oauth_client", "GET", PATH .. "/" .. client.escape(id),
                   { shape = object_shape, secrets = wrap_client })
end

--- postOauthClients: the new OAuthClient with secret=<secret>
function Genesys:post_oauth_clients(body)
  check_body("post_oauth_clients", body)
  return self:call("post_oauth_clients", "POST", PATH,
                   { body = body, mint = true, shape = minted_shape, secrets = wrap_client })
end

--- putOauthClient: the updated OAuthClient
function Genesys:put_oauth_client(id, body)
  check_id("put_oauth_client", id)
  check_body("put_oauth_client", body)
  return self:call("put_oauth_client", "PUT", PATH .. "/" .. client.escape(id),
                   { body = body, shape = object_shape, secrets = wrap_client })
end

--- deleteOauthClient: true
function Genesys:delete_oauth_client(id)
  check_id("delete_oauth_client", id)
  local ok, err = self:call("delete_oauth_client", "DELETE", PATH .. "/" .. client.escape(id))
  if ok or not (errors.is(err) and err.status == 404) then return ok, err end
  -- a 404 is taken as "deleted already" by the callers: only once the client is seen to be gone
  local still, gerr = self:get_oauth_client(id)
  if still then
    return nil, errors.new { kind = "protocol", provider = self.provider, op = "delete_oauth_client",
      message = ("deleting client %s was answered 404 (not found), but the client is still there: it was not "
        .. "deleted"):format(id) }
  end
  if errors.is(gerr) and gerr.status == 404 then return nil, err end
  return nil, gerr
end

--- postOauthClientSecret: the OAuthClient with its new secret=<secret>
function Genesys:post_oauth_client_secret(id)
  check_id("post_oauth_client_secret", id)
  return self:call("post_oauth_client_secret", "POST", PATH .. "/" .. client.escape(id) .. "/secret",
                   { mint = true, shape = minted_shape, secrets = wrap_client })
end

--- GET /api/v2/tokens/me: the token's session info (a cheap authenticated call).
function Genesys:get_tokens_me()
  return self:call("get_tokens_me", "GET", "/api/v2/tokens/me", { shape = object_shape })
end

return _M
