-- rotor.spreetail against the simulator: create, list, delete client credentials; tokens; errors.
local kit = require "spec.helpers.rotor_fixtures"
local core = require "rotor.core"
local spreetail = require "rotor.providers.spreetail"

local ID, SECRET = "0123456789abcdef0123456789abcdef", "iObGKtihdEScOmDiZxZ+6Q=="
local PATH = "/spreetail/api/v0/client-credentials"
local TOKEN_PATH = "/spreetail/api/v0/oauth/token"

describe("rotor.spreetail", function()
  local S

  setup(function() S = kit.start() end)
  teardown(function() kit.stop(S) end)

  before_each(function()
    kit.reset(S)
    kit.ctl(S, "POST", "/seed", { provider = "spreetail", client_id = ID, client_secret = SECRET, name = "main" })
  end)

  local function opts(extra)
    return kit.merge({ client_id = ID, client_secret = SECRET, base_url = S.url .. "/spreetail",
                       cainfo = S.ca, timeout = 3, max_wait = 5 }, extra)
  end

  local function new(extra)
    return assert(spreetail.new(opts(extra)))
  end

  it("has the production defaults and validates its options", function()
    local p = assert(spreetail.new{ client_id = ID, client_secret = SECRET })
    assert.equal("https://api.spreetail.com", p.options.base_url)
    assert.equal("https://api.spreetail.com/api/v0/oauth/token", p.options.token_url)
    assert.equal(S.url .. "/spreetail/api/v0/oauth/token", new().options.token_url)
    local q, err = spreetail.new{ client_secret = SECRET }
    assert.is_nil(q)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find("client_id", 1, true))
    q, err = spreetail.new(opts{ base_url = "http://spreetail.example" })
    assert.is_nil(q)
    assert.truthy(err.message:find("base_url", 1, true))
  end)

  it("gets a token with multipart GrantType/ClientId/ClientSecret (camelCase answer)", function()
    local p = new()
    assert.truthy(p:token())
    local log = kit.log(S)
    assert.equal(TOKEN_PATH, log[1].path)
    assert.truthy(log[1].content_type:find("multipart/form-data", 1, true))
  end)

  it("create_client_credentials: a new pair, secret as a rotor.secret, shown once", function()
    local p = new()
    local c = assert(p:create_client_credentials{ name = "rotation 1", expires = "2099-01-01T00:00:00.000Z" })
    assert.truthy(core.is_secret(c.secret))
    assert.is_string(c.clientId)
    assert.not_equal(ID, c.clientId)
    assert.is_string(c.credentialId)
    assert.equal("rotation 1", c.name)
    assert.is_true(p:verify{ client_id = c.clientId, client_secret = c.secret })
    assert.equal(1, kit.counter(S, PATH))
  end)

  it("list_client_credentials: every active pair, no secrets", function()
    local p = new()
    local c = assert(p:create_client_credentials{ name = "second" })
    local list = assert(p:list_client_credentials())
    assert.equal(2, #list)
    local ids = {}
    for _, e in ipairs(list) do
      ids[e.clientId] = true
      assert.falsy(type(e.secret) == "string")
    end
    assert.truthy(ids[ID] and ids[c.clientId])
  end)

  it("delete_client_credentials: 204 -> true; the pair stops working; 404 after", function()
    local p = new()
    local c = assert(p:create_client_credentials{ name = "to delete" })
    assert.is_true(p:delete_client_credentials(c.clientId))
    local ok, err = p:verify{ client_id = c.clientId, client_secret = c.secret }
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    kit.assert_no_secret(S, err, c.secret)
    local r
    r, err = p:delete_client_credentials(c.clientId)
    assert.is_nil(r)
    assert.equal("http", err.kind)
    assert.equal(404, err.status)
    assert.truthy(err.detail:find("Not Found", 1, true))
    assert.equal(1, #assert(p:list_client_credentials()))
  end)

  -- a 404 answered without acting was taken at its word: retire journalled the old pair deleted
  -- (and dropped its secret from the record) while it stayed live
  it("delete_client_credentials: a 404 for a pair the account still lists is kind protocol", function()
    local p = new()
    local c = assert(p:create_client_credentials{ name = "stays" })
    kit.fault(S, { path = PATH .. "/" .. c.clientId, method = "DELETE", status = 404, count = 1 })
    local r, err = p:delete_client_credentials(c.clientId)
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    assert.is_nil(err.status) -- callers take a 404 as "deleted already"
    assert.matches("still lists it: it was not deleted", err.message, 1, true)
    assert.is_true(p:verify{ client_id = c.clientId, client_secret = c.secret })
  end)

  it("400 validation problem details are kind http with the field in detail", function()
    local p = new()
    local r, err = p:create_client_credentials{ name = "past", expires = "2001-01-01T00:00:00Z" }
    assert.is_nil(r)
    assert.equal("http", err.kind)
    assert.equal(400, err.status)
    assert.truthy(err.detail:find("Expires", 1, true))
  end)

  it("403 (a credential that may not manage) is kind auth", function()
    kit.ctl(S, "POST", "/seed", { provider = "spreetail", client_id = "feedfeedfeedfeedfeedfeedfeedfeed",
                                  client_secret = "limited+secret==", can_manage = false })
    local p = new{ client_id = "feedfeedfeedfeedfeedfeedfeedfeed", client_secret = "limited+secret==" }
    local r, err = p:list_client_credentials()
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal(403, err.status)
  end)

  it("401 on a call: the token is dropped and the call retried once", function()
    local p = new()
    kit.fault(S, { path = PATH, status = 401 })
    assert(p:list_client_credentials())
    assert.equal(2, kit.counter(S, PATH))
    assert.equal(2, kit.counter(S, TOKEN_PATH))
    kit.fault(S, { path = PATH, status = 401, count = 2, headers = { ["X-Request-Id"] = "st-req-7" } })
    local r, err = p:list_client_credentials()
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal("st-req-7", err.request_id)
  end)

  it("a refused token request is kind auth, without the secret", function()
    local wrong = "wrongwrong+Secret=="
    local p = new{ client_secret = wrong }
    local r, err = p:create_client_credentials{ name = "x" }
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    kit.assert_no_secret(S, err, wrong)
    assert.equal(0, kit.counter(S, PATH))
  end)

  it("a token that expires mid-run is refreshed", function()
    local p = new()
    assert(p:list_client_credentials())
    kit.advance(S, 3700)
    assert(p:list_client_credentials())
    assert.equal(2, kit.counter(S, TOKEN_PATH))
  end)

  it("429: retried after Retry-After; past the bound kind rate_limited", function()
    local p = new()
    kit.fault(S, { path = PATH, status = 429, retry_after = 1 })
    local dt, list = kit.timed(function() return p:list_client_credentials() end)
    assert.truthy(list)
    assert.truthy(dt >= 0.9)
    p = new{ max_wait = 1 }
    kit.fault(S, { path = PATH, status = 429, retry_after = 10, count = 2 })
    local r, err = p:create_client_credentials{ name = "x" }
    assert.is_nil(r)
    assert.equal("rate_limited", err.kind)
    assert.equal(10, err.retry_after)
  end)

  it("paces when given a rate limit", function()
    local p = new{ rate_limits = { default = { rate = 10, per = 1 } } }
    local dt = kit.timed(function()
      for _ = 1, 6 do assert(p:list_client_credentials()) end
    end)
    assert.truthy(dt >= 0.45, dt)
  end)

  it("malformed answers are kind protocol; to the mint, ambiguous; no secret in the error", function()
    local p = new()
    kit.fault(S, { path = PATH, method = "GET", malformed = true })
    local r, err = p:list_client_credentials()
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    kit.fault(S, { path = PATH, method = "POST", truncate = true })
    r, err = p:create_client_credentials{ name = "cut" }
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    kit.assert_no_secret(S, err)
  end)

  it("a hang after send on create is kind ambiguous, sent exactly once", function()
    local p = new{ timeout = 1 }
    kit.fault(S, { path = PATH, method = "POST", hang = true })
    local r, err = p:create_client_credentials{ name = "hung" }
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(1, kit.counter(S, PATH))
    kit.assert_no_secret(S, err)
  end)

  it("raises on wrong argument types", function()
    local p = new()
    assert.error_matches(function() p:create_client_credentials{} end, "name must be a non-empty string", nil, true)
    assert.error_matches(function() p:create_client_credentials{ name = "x", expires = 5 } end,
      "expires must be an ISO-8601 string or nil", nil, true)
    assert.error_matches(function() p:delete_client_credentials() end, "a clientId string expected", nil, true)
    assert.error_matches(function() p:verify("x") end,
      "verify: a table {client_id=, client_secret=} expected", nil, true)
  end)
end)
