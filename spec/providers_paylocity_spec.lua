-- rotor.paylocity against the simulator: obtainNewClientSecret, tokens, errors, pacing.
local kit = require "spec.helpers.rotor_fixtures"
local core = require "rotor.core"
local paylocity = require "rotor.providers.paylocity"

local ID, SECRET = "pl-client-0001", "pl+Secret/0001=="
local OP_PATH = "/paylocity/api/v2/credentials/secrets"
local TOKEN_PATH = "/paylocity/IdentityServer/connect/token"

describe("rotor.paylocity", function()
  local S

  setup(function() S = kit.start() end)
  teardown(function() kit.stop(S) end)

  local function seed(codes)
    kit.ctl(S, "POST", "/seed", { provider = "paylocity", client_id = ID, client_secret = SECRET,
                                  code = codes or { "CODE-1", "CODE-2" } })
  end

  before_each(function()
    kit.reset(S)
    seed()
  end)

  local function opts(extra)
    return kit.merge({ client_id = ID, client_secret = SECRET, base_url = S.url .. "/paylocity",
                       cainfo = S.ca, timeout = 3, max_wait = 5, pacing = false }, extra)
  end

  local function new(extra)
    return assert(paylocity.new(opts(extra)))
  end

  describe("options", function()
    it("requires client_id", function()
      local p, err = paylocity.new{ client_secret = SECRET }
      assert.is_nil(p)
      assert.equal("config", err.kind)
      assert.truthy(tostring(err):find("client_id", 1, true))
    end)

    it("refuses http:// to a non-loopback host, and names the option", function()
      local p, err = paylocity.new(opts{ base_url = "http://api.example.com" })
      assert.is_nil(p)
      assert.equal("config", err.kind)
      assert.truthy(err.message:find("base_url", 1, true))
      p, err = paylocity.new(opts{ token_url = "http://10.0.0.1/token" })
      assert.is_nil(p)
      assert.truthy(err.message:find("token_url", 1, true))
      assert.truthy(paylocity.new(opts{ base_url = "http://127.0.0.1:1/paylocity" }))
    end)

    it("refuses unknown options, bad values and unknown token styles", function()
      for name, bad in pairs{ client_secert = "x", timeout = -1, token_style = "soap", sandbox = "yes",
                              cainfo = "/nonexistent/ca.pem", rate_limits = { default = { rate = 0 } } } do
        local p, err = paylocity.new(opts{ [name] = bad })
        assert.is_nil(p)
        assert.equal("config", err.kind)
        assert.truthy(err.message:find(name, 1, true), err.message)
      end
    end)

    it("chooses the production, sandbox and NextGen hosts", function()
      local p = assert(paylocity.new{ client_id = ID, client_secret = SECRET })
      assert.equal("https://api.paylocity.com", p.options.base_url)
      assert.equal("https://api.paylocity.com/IdentityServer/connect/token", p.options.token_url)
      p = assert(paylocity.new{ client_id = ID, client_secret = SECRET, sandbox = true })
      assert.equal("https://dc1demogw.paylocity.com", p.options.base_url)
      assert.equal("https://dc1demogw.paylocity.com/IdentityServer/connect/token", p.options.token_url)
      p = assert(paylocity.new{ client_id = ID, client_secret = SECRET, token_style = "nextgen" })
      assert.equal("https://dc1prodgwext.paylocity.com/public/security/v1/token", p.options.token_url)
      p = assert(paylocity.new{ client_id = ID, client_secret = SECRET, token_style = "nextgen", sandbox = true })
      assert.equal("https://dc1demogwext.paylocity.com/public/security/v1/token", p.options.token_url)
    end)

    it("keeps the secret out of the options, and knows its provider and client", function()
      local p = new()
      assert.equal("paylocity", p.provider)
      assert.equal(ID, p.client_id)
      assert.is_nil(p.options.client_secret)
      assert.falsy(tostring(p):find(SECRET, 1, true))
    end)

    it("raises on a wrong argument type", function()
      assert.error_matches(function() paylocity.new("x") end, "rotor.paylocity: an options table expected", nil, true)
      local p = new()
      assert.error_matches(function() p:obtain_new_client_secret() end, "a table {code=} expected", nil, true)
      assert.error_matches(function() p:obtain_new_client_secret{ code = 5 } end,
        "code must be a non-empty string", nil, true)
    end)
  end)

  describe("tokens", function()
    it("gets a WebLink token (Basic, scope WebLinkAPI) and caches it", function()
      local p = new()
      local t1 = assert(p:token())
      local t2 = assert(p:token())
      assert.truthy(core.is_secret(t1) or type(t1) == "string")
      assert.equal(1, kit.counter(S, TOKEN_PATH))
      if core.is_secret(t1) then assert.equal(t1:reveal(), t2:reveal()) end
    end)

    it("gets a NextGen token (form body)", function()
      local p = new{ token_style = "nextgen" }
      assert.equal(S.url .. "/paylocity/public/security/v1/token", p.options.token_url)
      assert.truthy(p:token())
      assert.equal(1, kit.counter(S, "/paylocity/public/security/v1/token"))
    end)

    it("verify: true for good credentials, kind auth for a wrong secret, never the secret", function()
      local p = new()
      assert.is_true(p:verify{ client_id = ID, client_secret = SECRET })
      assert.is_true(p:verify{ client_id = ID, client_secret = core.secret(SECRET) })
      local wrong = "wrong+Secret/9999=="
      local ok, err = p:verify{ client_id = ID, client_secret = wrong }
      assert.is_nil(ok)
      assert.equal("auth", err.kind)
      assert.equal("paylocity", err.provider)
      kit.assert_no_secret(S, err, wrong, SECRET)
    end)

    it("a refused token request is kind auth on the operation", function()
      local p = new{ client_secret = "not+the/secret==" }
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("auth", err.kind)
      assert.equal("obtain_new_client_secret", err.op)
      kit.assert_no_secret(S, err, "not+the/secret==")
      assert.equal(0, kit.counter(S, OP_PATH))
    end)

    it("set_credentials switches the credential and drops the cached token", function()
      local p = new()
      local r = assert(p:obtain_new_client_secret{ code = "CODE-1" })
      assert(p:token())
      p:set_credentials(ID, r[1].clientSecret)
      assert.truthy(p:token())
      assert.equal(2, kit.counter(S, TOKEN_PATH))
      assert.error_matches(function() p:set_credentials(nil, "x") end,
        "client_id must be a non-empty string", nil, true)
    end)
  end)

  describe("obtain_new_client_secret", function()
    it("returns the array with clientSecret as a rotor.secret, and the secret works", function()
      local p = new()
      local r = assert(p:obtain_new_client_secret{ code = "CODE-1" })
      assert.equal(1, #r)
      assert.truthy(core.is_secret(r[1].clientSecret))
      assert.falsy(tostring(r[1].clientSecret):find(r[1].clientSecret:reveal(), 1, true))
      assert.not_equal(SECRET, r[1].clientSecret:reveal())
      assert.matches("^%d%d%d%d%-%d%d%-%d%d", r[1].clientSecretExpirationDate)
      -- both secrets work during the overlap
      assert.is_true(p:verify{ client_id = ID, client_secret = r[1].clientSecret })
      assert.is_true(p:verify{ client_id = ID, client_secret = SECRET })
      -- one request, on its own
      assert.equal(1, kit.counter(S, OP_PATH))
    end)

    it("400 for a bad or reused code: kind http, the provider's field and message in detail", function()
      local p = new()
      local r, err = p:obtain_new_client_secret{ code = "NO-SUCH-CODE" }
      assert.is_nil(r)
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert.equal("obtain_new_client_secret", err.op)
      assert.truthy(err.detail:find("code", 1, true))
      assert(p:obtain_new_client_secret{ code = "CODE-2" })
      r, err = p:obtain_new_client_secret{ code = "CODE-2" }
      assert.is_nil(r)
      assert.equal(400, err.status)
      assert.truthy(err.detail:find("already", 1, true))
      kit.assert_no_secret(S, err)
    end)

    it("401: the token is dropped and the call retried once, then kind auth", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, status = 401, count = 2 })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.equal(2, kit.counter(S, OP_PATH))
      assert.equal(2, kit.counter(S, TOKEN_PATH))
      kit.assert_no_secret(S, err)
    end)

    it("403 is kind auth, not retried", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, status = 403 })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("auth", err.kind)
      assert.equal(403, err.status)
      assert.equal(1, kit.counter(S, OP_PATH))
    end)

    it("500 with the documented error array: kind ambiguous (a minting call), detail, request id", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, status = 500, headers = { ["X-Request-Id"] = "req-pl-500" },
                     body = { { field = "", message = "Internal failure", options = {}, path = "" } } })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("ambiguous", err.kind)
      assert.equal(500, err.status)
      assert.equal("req-pl-500", err.request_id)
      assert.truthy(err.detail:find("Internal failure", 1, true))
      assert.truthy(tostring(err):find("req-pl-500", 1, true))
      assert.equal(1, kit.counter(S, OP_PATH))
    end)

    it("429: waits for Retry-After and succeeds", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, status = 429, retry_after = 1 })
      local dt, r = kit.timed(function() return p:obtain_new_client_secret{ code = "CODE-1" } end)
      assert.truthy(r and core.is_secret(r[1].clientSecret))
      assert.truthy(dt >= 0.9, dt)
      assert.equal(2, kit.counter(S, OP_PATH))
    end)

    it("429 past the wait bound: kind rate_limited with retry_after", function()
      local p = new{ max_wait = 1 }
      kit.fault(S, { path = OP_PATH, status = 429, retry_after = 5, count = 3 })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("rate_limited", err.kind)
      assert.equal(429, err.status)
      assert.equal(5, err.retry_after)
    end)

    it("paces at 25 requests per second by default (no 429 from the simulator)", function()
      local codes = {}
      for i = 1, 30 do codes[i] = "BULK-" .. i end
      seed(codes)
      local p = new{ pacing = kit.NIL }
      local dt = kit.timed(function()
        for i = 1, 30 do assert(p:obtain_new_client_secret{ code = codes[i] }) end
      end)
      assert.truthy(dt >= 1.0, dt)
      for _, e in ipairs(kit.log(S)) do assert.not_equal(429, e.status) end
    end)

    it("a rate_limits option overrides the pacing", function()
      local codes = {}
      for i = 1, 6 do codes[i] = "FAST-" .. i end
      seed(codes)
      local p = new{ pacing = kit.NIL, rate_limits = { default = { rate = 10, per = 1 } } }
      local dt = kit.timed(function()
        for i = 1, 6 do assert(p:obtain_new_client_secret{ code = codes[i] }) end
      end)
      assert.truthy(dt >= 0.45, dt)
    end)

    it("a token that expires mid-run is refreshed", function()
      local p = new()
      assert(p:obtain_new_client_secret{ code = "CODE-1" })
      kit.advance(S, 3700)
      assert(p:obtain_new_client_secret{ code = "CODE-2" })
      assert.equal(2, kit.counter(S, TOKEN_PATH))
    end)

    it("malformed and truncated answers to the mint are kind ambiguous, with no secret in the error", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, malformed = true })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("ambiguous", err.kind)
      kit.fault(S, { path = OP_PATH, truncate = true })
      r, err = p:obtain_new_client_secret{ code = "CODE-2" }
      assert.is_nil(r)
      assert.equal("ambiguous", err.kind)
      kit.assert_no_secret(S, err)
    end)

    it("a hang after send is kind ambiguous and is not retried", function()
      local p = new{ timeout = 1 }
      kit.fault(S, { path = OP_PATH, hang = true })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("ambiguous", err.kind)
      assert.equal("obtain_new_client_secret", err.op)
      assert.equal(1, kit.counter(S, OP_PATH))
      kit.assert_no_secret(S, err)
    end)

    it("a 503 on the minting call is ambiguous, not retried", function()
      local p = new()
      kit.fault(S, { path = OP_PATH, status = 503 })
      local r, err = p:obtain_new_client_secret{ code = "CODE-1" }
      assert.is_nil(r)
      assert.equal("ambiguous", err.kind)
      assert.equal(1, kit.counter(S, OP_PATH))
    end)
  end)
end)
