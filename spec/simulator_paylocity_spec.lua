-- The simulator's Paylocity WebLink/NextGen endpoints, driven with the curl CLI.
local sim = require "spec.helpers.sim"

local TOKEN = "/paylocity/IdentityServer/connect/token"
local NEXTGEN = "/paylocity/public/security/v1/token"
local SECRETS = "/paylocity/api/v2/credentials/secrets"
local DAY = 86400

describe("simulator: paylocity #proc", function()
  local s, client

  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  before_each(function()
    s:reset()
    client = s:seed{ provider = "paylocity", client_id = "pl-client", code = { "code-1", "code-2" } }
  end)

  local function weblink(id, secret, form, raw)
    return assert(s:request{ method = "POST", path = TOKEN, basic = { id, secret, raw },
      form = form or { grant_type = "client_credentials", scope = "WebLinkAPI" } })
  end

  local function token(secret)
    local r = weblink("pl-client", secret or client.client_secret)
    assert.equal(200, r.status, r.body)
    return r.json.access_token
  end

  local function obtain(tok, code)
    return assert(s:request{ method = "POST", path = SECRETS, bearer = tok, json = { code = code } })
  end

  describe("IdentityServer token (WebLink)", function()
    it("issues a 1 h Bearer token for Basic + form + scope=WebLinkAPI", function()
      local r = weblink("pl-client", client.client_secret)
      assert.equal(200, r.status)
      assert.equal("Bearer", r.json.token_type)
      assert.equal(3600, r.json.expires_in)
      assert.is_string(r.json.access_token)
      assert.equal("no-store", r.headers["cache-control"])
    end)

    it("decodes Basic credentials as RFC 6749 App. B (secrets hold + / =)", function()
      assert.matches("[+/]", client.client_secret)
      assert.matches("=$", client.client_secret)
      assert.equal(200, weblink("pl-client", client.client_secret).status)
      -- sent without form-encoding, '+' decodes to ' ' and the secret no longer matches
      if client.client_secret:find("+", 1, true) then
        assert.equal(400, weblink("pl-client", client.client_secret, nil, true).status)
      end
    end)

    it("refuses a missing Basic header, also with id and secret in the body", function()
      local r = assert(s:request{ method = "POST", path = TOKEN, form = { grant_type = "client_credentials",
        scope = "WebLinkAPI", client_id = "pl-client", client_secret = client.client_secret } })
      assert.equal(400, r.status)
      assert.equal("invalid_client", r.json.error)
    end)

    it("refuses a wrong secret and an unknown client with invalid_client", function()
      assert.equal("invalid_client", weblink("pl-client", "nope").json.error)
      assert.equal("invalid_client", weblink("other", client.client_secret).json.error)
    end)

    it("refuses a missing or wrong scope with invalid_scope", function()
      local r = weblink("pl-client", client.client_secret, { grant_type = "client_credentials" })
      assert.equal(400, r.status)
      assert.equal("invalid_scope", r.json.error)
      r = weblink("pl-client", client.client_secret, { grant_type = "client_credentials", scope = "Other" })
      assert.equal("invalid_scope", r.json.error)
    end)

    it("refuses another grant type and a non-form body", function()
      local r = weblink("pl-client", client.client_secret, { grant_type = "password", scope = "WebLinkAPI" })
      assert.equal("unsupported_grant_type", r.json.error)
      r = assert(s:request{ method = "POST", path = TOKEN, basic = { "pl-client", client.client_secret },
        json = { grant_type = "client_credentials", scope = "WebLinkAPI" } })
      assert.equal(400, r.status)
      assert.equal("invalid_request", r.json.error)
    end)
  end)

  describe("NextGen token", function()
    it("takes id and secret in the form body", function()
      local r = assert(s:request{ method = "POST", path = NEXTGEN, form = { grant_type = "client_credentials",
        client_id = "pl-client", client_secret = client.client_secret } })
      assert.equal(200, r.status)
      assert.equal(3600, r.json.expires_in)
      -- a NextGen token has no WebLinkAPI scope: the WebLink API refuses it
      assert.equal(403, obtain(r.json.access_token, "code-1").status)
    end)

    it("refuses Basic auth without body credentials, and a bad secret", function()
      local r = assert(s:request{ method = "POST", path = NEXTGEN, basic = { "pl-client", client.client_secret },
        form = { grant_type = "client_credentials" } })
      assert.equal(401, r.status)
      assert.equal("invalid_client", r.json.error)
      r = assert(s:request{ method = "POST", path = NEXTGEN, form = { grant_type = "client_credentials",
        client_id = "pl-client", client_secret = "bad" } })
      assert.equal(401, r.status)
    end)
  end)

  describe("POST /api/v2/credentials/secrets", function()
    it("issues a new secret for a code: [{clientSecret, clientSecretExpirationDate}]", function()
      local now = s:clock().now
      local r = obtain(token(), "code-1")
      assert.equal(200, r.status, r.body)
      assert.equal(1, #r.json)
      local new = r.json[1]
      assert.is_string(new.clientSecret)
      assert.not_equal(client.client_secret, new.clientSecret)
      local y, m, d = new.clientSecretExpirationDate:match("^(%d+)-(%d+)-(%d+)T")
      assert.truthy(y)
      local want = os.date("!*t", math.floor(now + 365 * DAY))
      assert.same({ want.year, want.month, want.day }, { tonumber(y), tonumber(m), tonumber(d) })
      assert.truthy(#s:secrets() >= 2)
      assert.equal(new.clientSecret, s:secrets()[#s:secrets()])
    end)

    it("a code works once", function()
      local tok = token()
      assert.equal(200, obtain(tok, "code-1").status)
      local r = obtain(tok, "code-1")
      assert.equal(400, r.status)
      assert.equal("code", r.json[1].field)
      assert.is_string(r.json[1].message)
      assert.same({}, r.json[1].options)
      assert.equal(200, obtain(tok, "code-2").status)
    end)

    it("with paylocity_code_single_use=false a code can be reused", function()
      s:settings{ paylocity_code_single_use = false }
      local tok = token()
      assert.equal(200, obtain(tok, "code-1").status)
      assert.equal(200, obtain(tok, "code-1").status)
    end)

    it("keeps the old secret working until its own expiry date", function()
      s:reset()
      client = s:seed{ provider = "paylocity", client_id = "pl-client", code = "c", expires = s:clock().now + 10 * DAY }
      local new = obtain(token(), "c").json[1].clientSecret
      assert.equal(200, weblink("pl-client", client.client_secret).status)
      assert.equal(200, weblink("pl-client", new).status)
      s:advance(10 * DAY + 1)
      assert.equal("invalid_client", weblink("pl-client", client.client_secret).json.error)
      assert.equal(200, weblink("pl-client", new).status)
    end)

    it("refuses a missing, unknown or malformed code with 400 and the error array", function()
      local tok = token()
      local r = obtain(tok, nil)
      assert.equal(400, r.status)
      assert.equal("code", r.json[1].field)
      assert.equal(400, obtain(tok, "not-a-code").status)
      r = assert(s:request{ method = "POST", path = SECRETS, bearer = tok, body = "code=x",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
      assert.equal(400, r.status)
    end)

    it("answers 401 without a token, with an unknown token, and once the token expired", function()
      local r = assert(s:request{ method = "POST", path = SECRETS, json = { code = "code-1" } })
      assert.equal(401, r.status)
      assert.equal("Bearer", r.headers["www-authenticate"])
      assert.equal(401, obtain("nope", "code-1").status)
      local tok = token()
      s:advance(3601)
      assert.equal(401, obtain(tok, "code-1").status)
    end)

    it("answers 429 (no body) over 25 requests/s per client; the limit is a setting", function()
      s:settings{ paylocity_rate = 2 }
      local tok = token()
      local got429
      for _ = 1, 6 do
        local r = obtain(tok, "not-a-code")
        if r.status == 429 then got429 = r end
      end
      assert.truthy(got429)
      assert.equal("", got429.body)
      assert.is_nil(got429.headers["retry-after"])
      s:settings{ paylocity_retry_after = 1 }
      got429 = nil
      for _ = 1, 6 do
        local r = obtain(tok, "not-a-code")
        if r.status == 429 then got429 = r end
      end
      assert.equal("1", got429.headers["retry-after"])
    end)
  end)
end)
