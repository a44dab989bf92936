-- rotor.genesys against the simulator: the six OAuth client operations, regions, paging, errors.
local kit = require "spec.helpers.rotor_fixtures"
local core = require "rotor.core"
local genesys = require "rotor.providers.genesys"

local ADMIN, ADMIN_SECRET = "a0000000-0000-4000-8000-000000000001", "admin-Secret_0001-xyz"
local BASE = "/genesys/api/v2/oauth/clients"
local TOKEN_PATH = "/genesys/login/oauth/token"
local ADMIN_ROLE = "00000000-0000-4000-8000-00000000a001"
local HOME_DIVISION = "00000000-0000-4000-8000-00000000d001"

local function request_body(name, extra)
  local b = { name = name, authorizedGrantType = "CLIENT-CREDENTIALS",
              roleDivisions = { { roleId = ADMIN_ROLE, divisionId = HOME_DIVISION } } }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

describe("rotor.genesys", function()
  local S

  setup(function() S = kit.start() end)
  teardown(function() kit.stop(S) end)

  before_each(function()
    kit.reset(S)
    kit.ctl(S, "POST", "/seed", { provider = "genesys", client_id = ADMIN, client_secret = ADMIN_SECRET,
                                  admin = true, name = "rotor admin" })
  end)

  local function opts(extra)
    return kit.merge({ client_id = ADMIN, client_secret = ADMIN_SECRET, base_url = S.url .. "/genesys",
                       token_url = S.url .. TOKEN_PATH, cainfo = S.ca, timeout = 3, max_wait = 5,
                       pacing = false }, extra)
  end

  local function new(extra)
    return assert(genesys.new(opts(extra)))
  end

  describe("regions", function()
    it("knows the 15 regions by domain and by name", function()
      local n = 0
      for name, domain in pairs(genesys.REGIONS) do
        n = n + 1
        for _, r in ipairs{ name, domain, (name:gsub("_", "-")) } do
          local p = assert(genesys.new{ region = r, client_id = "x", client_secret = "y" })
          assert.equal("https://api." .. domain, p.options.base_url)
          assert.equal("https://login." .. domain .. "/oauth/token", p.options.token_url)
        end
      end
      assert.equal(15, n)
      local p = assert(genesys.new{ region = "mypurecloud.ie", client_id = "x" })
      assert.equal("https://api.mypurecloud.ie", p.options.base_url)
      p = assert(genesys.new{ region = "eu_west_1", client_id = "x" })
      assert.equal("https://login.mypurecloud.ie/oauth/token", p.options.token_url)
      p = assert(genesys.new{ region = "ap_southeast_2", client_id = "x" })
      assert.equal("https://api.mypurecloud.com.au", p.options.base_url)
      p = assert(genesys.new{ base_url = "https://api.example.test/", client_id = "x" })
      assert.equal("https://api.example.test", p.options.base_url)
      assert.equal("https://login.example.test/oauth/token", p.options.token_url)
    end)

    it("refuses an unknown region, naming the option", function()
      local p, err = genesys.new{ region = "mars_north_1", client_id = "x" }
      assert.is_nil(p)
      assert.equal("config", err.kind)
      assert.truthy(err.message:find("region", 1, true))
      p, err = genesys.new{ region = "eu_west_1" }
      assert.is_nil(p)
      assert.truthy(err.message:find("client_id", 1, true))
    end)
  end)

  it("gets a token with Basic (RFC 6749 App. B encoding) and caches it", function()
    local p = new()
    assert.truthy(p:token())
    assert.truthy(p:token())
    assert.equal(1, kit.counter(S, TOKEN_PATH))
    assert.equal("Basic", kit.log(S)[1].auth)
  end)

  it("get_oauth_clients merges every page following nextUri", function()
    kit.ctl(S, "POST", "/settings", { genesys_page_size = 2 })
    for i = 1, 4 do kit.ctl(S, "POST", "/seed", { provider = "genesys", name = "extra " .. i }) end
    local p = new()
    local all = assert(p:get_oauth_clients())
    assert.equal(5, #all.entities)
    assert.equal(5, all.total)
    assert.is_nil(all.nextUri)
    local names = {}
    for _, e in ipairs(all.entities) do
      names[e.name] = true
      assert.falsy(type(e.secret) == "string")
    end
    assert.truthy(names["rotor admin"] and names["extra 4"])
    assert.equal(3, kit.counter(S, BASE))
  end)

  -- a nextUri holding CR/LF or a space was sent on, and refused as a bad URL of kind config: the
  -- provider's answer is at fault, not the configuration
  it("get_oauth_clients: a nextUri that is no path is kind protocol", function()
    for _, nxt in ipairs { "/api/v2/oauth/clients?pageNumber=2\r\nX-Injected: 1", "/api/v2/oauth/clients?a b" } do
      kit.fault(S, { path = BASE, method = "GET", status = 200, body = { entities = {}, nextUri = nxt }, count = 1 })
      local v, err = new():get_oauth_clients()
      assert.is_nil(v)
      assert.equal("protocol", err.kind, err.message)
      assert.truthy(err.message:find("nextUri", 1, true), err.message)
      assert.is_nil(err.message:find("\r", 1, true))
    end
  end)

  -- entities of another shape reached recovery, which indexed them (a Lua error, found by a probe)
  it("get_oauth_clients: a listing whose entities are no array of objects is kind protocol", function()
    local bodies = { { entities = { 1, "x" } }, { entities = { a = { id = "x" } } }, { entities = { { "x" } } } }
    for _, body in ipairs(bodies) do
      kit.fault(S, { path = BASE, method = "GET", status = 200, body = body, count = 1 })
      local v, err = new():get_oauth_clients()
      assert.is_nil(v)
      assert.equal("protocol", err.kind, err.message)
    end
  end)

  it("post_oauth_clients: a new client with its secret as a rotor.secret", function()
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("second client")))
    assert.truthy(core.is_secret(c.secret))
    assert.is_string(c.id)
    assert.equal("second client", c.name)
    assert.is_true(p:verify{ client_id = c.id, client_secret = c.secret })
    local got = assert(p:get_oauth_client(c.id))
    assert.equal(c.id, got.id)
    assert.equal("second client", got.name)
    assert.falsy(type(got.secret) == "string")
  end)

  it("put_oauth_client: disabling a client stops its credential", function()
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("to disable")))
    local u = assert(p:put_oauth_client(c.id, request_body("to disable", { state = "disabled" })))
    assert.equal("disabled", u.state)
    local ok, err = p:verify{ client_id = c.id, client_secret = c.secret }
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    kit.assert_no_secret(S, err, c.secret)
  end)

  it("post_oauth_client_secret: a new secret; the old one is refused", function()
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("to regenerate")))
    local r = assert(p:post_oauth_client_secret(c.id))
    assert.truthy(core.is_secret(r.secret))
    assert.not_equal(c.secret:reveal(), r.secret:reveal())
    assert.is_true(p:verify{ client_id = c.id, client_secret = r.secret })
    local ok, err = p:verify{ client_id = c.id, client_secret = c.secret }
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    assert.equal(1, kit.counter(S, BASE .. "/" .. c.id .. "/secret"))
  end)

  it("delete_oauth_client: true; then 404 with the ErrorBody and the correlation id", function()
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("to delete")))
    assert.is_true(p:delete_oauth_client(c.id))
    local r, err = p:get_oauth_client(c.id)
    assert.is_nil(r)
    assert.equal("http", err.kind)
    assert.equal(404, err.status)
    assert.equal("get_oauth_client", err.op)
    assert.equal("genesys", err.provider)
    assert.truthy(err.detail:find("not.found", 1, true))
    assert.is_string(err.request_id)
    assert.truthy(tostring(err):find(err.request_id, 1, true))
  end)

  -- a 404 answered without acting was taken at its word: the old client's deletion journalled as
  -- done while it stayed
  it("delete_oauth_client: a 404 for a client that is still there is kind protocol", function()
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("stays")))
    kit.fault(S, { path = BASE .. "/" .. c.id, method = "DELETE", status = 404, count = 1 })
    local r, err = p:delete_oauth_client(c.id)
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    assert.is_nil(err.status)
    assert.matches("the client is still there: it was not deleted", err.message, 1, true)
    assert.truthy(p:get_oauth_client(c.id))
  end)

  it("400 for a bad OAuthClientRequest: kind http with the message", function()
    local p = new()
    -- the documented ErrorBody, injected (the simulator's own validation answer is covered too
    -- once it returns 400 for a missing name)
    kit.fault(S, { path = BASE, method = "POST", status = 400,
                   headers = { ["inin-correlation-id"] = "corr-400" },
                   body = { message = "name is required", code = "bad.request", status = 400 } })
    local r, err = p:post_oauth_clients{ authorizedGrantType = "CLIENT-CREDENTIALS" }
    assert.is_nil(r)
    assert.equal("http", err.kind)
    assert.equal(400, err.status)
    assert.truthy(err.detail:find("name is required", 1, true))
    assert.equal("corr-400", err.request_id)
    r, err = p:post_oauth_clients{ authorizedGrantType = "CLIENT-CREDENTIALS" }
    assert.is_nil(r)
    assert.equal("http", err.kind)
  end)

  it("403 for a missing permission: kind auth", function()
    kit.ctl(S, "POST", "/seed", { provider = "genesys", client_id = "v0000000-0000-4000-8000-000000000002",
                                  client_secret = "viewer-Secret-0002", permissions = { "oauth:client:view" } })
    local p = new{ client_id = "v0000000-0000-4000-8000-000000000002", client_secret = "viewer-Secret-0002" }
    assert(p:get_oauth_clients())
    local r, err = p:post_oauth_clients(request_body("nope"))
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal(403, err.status)
    assert.truthy(err.detail:find("oauth:client:add", 1, true))
    kit.assert_no_secret(S, err)
  end)

  it("401: the token is dropped and the call retried once", function()
    local p = new()
    kit.fault(S, { path = BASE, status = 401 })
    assert(p:get_oauth_clients())
    assert.equal(2, kit.counter(S, TOKEN_PATH))
    -- a 401 that stays: one refresh and one retry, then the error — not a loop
    kit.fault(S, { path = BASE, status = 401, count = 5 })
    local api_before, tok_before = kit.counter(S, BASE), kit.counter(S, TOKEN_PATH)
    local r, err = p:get_oauth_clients()
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal(401, err.status)
    assert.equal(api_before + 2, kit.counter(S, BASE))
    assert.equal(tok_before + 1, kit.counter(S, TOKEN_PATH))
  end)

  it("a token that expires mid-run is refreshed", function()
    local p = new()
    assert(p:get_oauth_clients())
    kit.advance(S, 86400 + 100)
    assert(p:get_oauth_clients())
    assert.equal(2, kit.counter(S, TOKEN_PATH))
  end)

  it("429: honours Retry-After; past the bound kind rate_limited", function()
    local p = new()
    kit.fault(S, { path = BASE, status = 429, retry_after = 1 })
    local dt, r = kit.timed(function() return p:get_oauth_clients() end)
    assert.truthy(r)
    assert.truthy(dt >= 0.9)
    p = new{ max_wait = 1 }
    kit.fault(S, { path = BASE, status = 429, retry_after = 30, count = 2 })
    local err
    r, err = p:get_oauth_clients()
    assert.is_nil(r)
    assert.equal("rate_limited", err.kind)
    assert.equal(30, err.retry_after)
  end)

  it("the simulator's own 300/min limit is met with a Retry-After wait", function()
    kit.ctl(S, "POST", "/settings", { genesys_rate = 2 })
    local p = new{ max_wait = 1 }
    assert(p:get_oauth_clients())
    assert(p:get_oauth_clients())
    local r, err = p:get_oauth_clients()
    assert.is_nil(r)
    assert.equal("rate_limited", err.kind)
    assert.truthy(err.retry_after and err.retry_after > 1)
  end)

  it("paces at 300 requests per minute per token by default (one every 0.2 s)", function()
    local p = new{ pacing = kit.NIL }
    local dt = kit.timed(function()
      for _ = 1, 6 do assert(p:get_oauth_client(ADMIN)) end
    end)
    assert.truthy(dt >= 0.95, dt)
  end)

  it("malformed answers are kind protocol; on a minting call, ambiguous (it may have minted); no secret in the error",
     function()
    local p = new()
    kit.fault(S, { path = BASE, method = "GET", malformed = true })
    local r, err = p:get_oauth_clients()
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    local c = assert(p:post_oauth_clients(request_body("cut")))
    kit.fault(S, { path = BASE .. "/" .. c.id .. "/secret", truncate = true })
    r, err = p:post_oauth_client_secret(c.id)
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.truthy(err.message:find("may have minted", 1, true), err.message)
    kit.assert_no_secret(S, err)
    kit.fault(S, { path = BASE, method = "POST", malformed = true })
    r, err = p:post_oauth_clients(request_body("cut2"))
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    kit.fault(S, { path = BASE, method = "POST", status = 500 })
    r, err = p:post_oauth_clients(request_body("cut3"))
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(500, err.status)
  end)

  it("a hang after send on a minting call is kind ambiguous, sent exactly once", function()
    local p = new{ timeout = 1 }
    local c = assert(p:post_oauth_clients(request_body("hang")))
    local path = BASE .. "/" .. c.id .. "/secret"
    kit.fault(S, { path = path, hang = true })
    local r, err = p:post_oauth_client_secret(c.id)
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(1, kit.counter(S, path))
    kit.fault(S, { path = BASE, method = "POST", hang = true })
    local before = kit.counter(S, BASE)
    r, err = p:post_oauth_clients(request_body("hang 2"))
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(before + 1, kit.counter(S, BASE))
    kit.assert_no_secret(S, err)
  end)

  -- a regenerate on the warm connection of the call before it; the simulator processes it and
  -- closes the connection without a reply: libcurl would send it again on a new connection
  it("regenerates on a warm connection; a reset after it was processed: ambiguous, sent exactly once", function()
    kit.ctl(S, "POST", "/settings", { log_enabled = true })
    local p = new()
    local c = assert(p:post_oauth_clients(request_body("warm")))
    local path = BASE .. "/" .. c.id .. "/secret"
    assert(p:get_oauth_client(c.id))
    kit.fault(S, { path = path, reset = true })
    local r, err = p:post_oauth_client_secret(c.id)
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(1, kit.counter(S, path))
    local get_conn, mint_conns = nil, {}
    for _, e in ipairs(kit.log(S)) do
      if e.path == BASE .. "/" .. c.id and e.method == "GET" then get_conn = e.conn end
      if e.path == path then mint_conns[#mint_conns + 1] = e.conn end
    end
    assert.equal(1, #mint_conns)
    assert.equal(get_conn, mint_conns[1])   -- no fresh connection was opened for it
    kit.assert_no_secret(S, err)
    -- with mint_fresh_connection = true, every regenerate opens a connection of its own
    local f = new { mint_fresh_connection = true }
    assert(f:post_oauth_client_secret(c.id))
    assert(f:post_oauth_client_secret(c.id))
    mint_conns = {}
    for _, e in ipairs(kit.log(S)) do
      if e.path == path and e.status == 200 then mint_conns[#mint_conns + 1] = e.conn end
    end
    assert.equal(2, #mint_conns)
    assert.are_not.equal(mint_conns[1], mint_conns[2])
  end)

  it("raises on wrong argument types", function()
    local p = new()
    assert.error_matches(function() p:get_oauth_client() end,
      "get_oauth_client: a client id string expected", nil, true)
    assert.error_matches(function() p:put_oauth_client("id") end,
      "put_oauth_client: an OAuthClientRequest table expected",
      nil, true)
    assert.error_matches(function() p:post_oauth_clients("x") end,
      "post_oauth_clients: an OAuthClientRequest table expected", nil, true)
    assert.error_matches(function() p:delete_oauth_client(5) end,
      "delete_oauth_client: a client id string expected", nil, true)
  end)
end)
