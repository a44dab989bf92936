-- rotor.oauth: the token cache, single-flight, refresh ahead of expiry, and 401 handling.
local core = require "rotor.core"
local oauth = require "rotor.oauth"
local sched = require "rotor.sched"
local sim = require "spec.helpers.sim"

describe("OAuth2 client-credentials tokens", function()
  local s, client
  local TOKEN = "/genesys/login/oauth/token"

  setup(function()
    s = sim.start()
    s:settings { genesys_rate = 0 }
  end)
  teardown(function() s:stop() end)
  before_each(function()
    core.token_clear()
    client = s:seed { provider = "genesys", admin = true, accessTokenValiditySeconds = 300 }
  end)

  local function spec(extra)
    local t = { url = s.url .. TOKEN, style = "basic", client_id = client.client_id,
      client_secret = core.secret(client.client_secret), cainfo = s.ca, provider = "genesys" }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end
  local function token_requests() return s:counters()[TOKEN] or 0 end

  it("200 coroutines sharing one credential cause exactly 1 token request", function()
    local before = token_requests()
    local items = {}
    for i = 1, 200 do items[i] = i end
    local sp = spec()
    local results, errs = sched.parallel(items, function()
      local tok, err = oauth.token(sp)
      if not tok then return nil, err end
      return tok:reveal()
    end, { concurrency = 200 })
    assert.same({}, errs)
    assert.equals(200, #results)
    for i = 2, 200 do assert.equals(results[1], results[i]) end
    assert.equals(before + 1, token_requests())
  end)

  it("serves a cached token without a request while it is fresh", function()
    local before = token_requests()
    local a = assert(oauth.token(spec()))
    local b = assert(oauth.token(spec()))
    assert.is_true(a == b)
    assert.equals(before + 1, token_requests())
  end)

  it("refreshes a token within its refresh margin before use", function()
    local before = token_requests()
    local a, ttl = assert(oauth.token(spec { margin = 60 }))
    assert.is_true(ttl <= 300)
    -- 300 s of life left is inside a 400 s margin: it must be refreshed, not used
    local b = assert(oauth.token(spec { margin = 400 }))
    assert.equals(before + 2, token_requests())
    assert.is_false(a == b)
  end)

  it("reports refused credentials as kind auth with the server's error, and no secret", function()
    local bad = spec { client_secret = core.secret("wrong-secret-value-123") }
    local tok, err = oauth.token(bad)
    assert.is_nil(tok)
    assert.equals("auth", err.kind)
    assert.equals("genesys", err.provider)
    assert.is_truthy(tostring(err):find("invalid_client", 1, true))
    assert.is_nil(tostring(err):find("wrong-secret-value-123", 1, true))
  end)

  it("hands the failure of a shared fetch to every waiter without more requests", function()
    s:fault { path = TOKEN, count = 1, status = 401 }
    local before = token_requests()
    local sp = spec()
    local _, errs = sched.parallel({ 1, 2, 3, 4, 5 }, function()
      return oauth.token(sp)
    end, { concurrency = 5 })
    for i = 1, 5 do assert.equals("auth", errs[i].kind) end
    assert.equals(before + 1, token_requests())
  end)

  it("fetches an uncached token for verification", function()
    local before = token_requests()
    assert(oauth.token(spec()))
    assert(oauth.token(spec { fresh = true }))
    assert(oauth.token(spec { fresh = true }))
    assert.equals(before + 3, token_requests())
  end)
end)
