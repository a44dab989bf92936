-- The simulator's Spreetail /api/v0 endpoints, driven with the curl CLI.
local sim = require "spec.helpers.sim"

local TOKEN = "/spreetail/api/v0/oauth/token"
local CREDS = "/spreetail/api/v0/client-credentials"

describe("simulator: spreetail #proc", function()
  local s, cred

  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  before_each(function()
    s:reset()
    cred = s:seed{ provider = "spreetail", name = "seeded" }
  end)

  local function token_req(fields, how)
    if how == "form" then return assert(s:request{ method = "POST", path = TOKEN, form = fields }) end
    if how == "json" then return assert(s:request{ method = "POST", path = TOKEN, json = fields }) end
    return assert(s:request{ method = "POST", path = TOKEN, multipart = fields })
  end

  local function fields(id, secret)
    return { GrantType = "client_credentials", ClientId = id, ClientSecret = secret }
  end

  local function token(id, secret)
    local r = token_req(fields(id or cred.clientId, secret or cred.secret))
    assert.equal(200, r.status, r.body)
    return r.json.accessToken
  end

  describe("POST /api/v0/oauth/token", function()
    it("takes multipart GrantType/ClientId/ClientSecret and answers camelCase", function()
      local r = token_req(fields(cred.clientId, cred.secret))
      assert.equal(200, r.status)
      assert.equal("bearer", r.json.tokenType)
      assert.equal(3600, r.json.expiresIn)
      assert.matches("^[%w_-]+%.[%w_-]+%.[%w_-]+$", r.json.accessToken)
      assert.is_nil(r.json.access_token)
    end)

    it("also takes form-urlencoded; JSON only when spreetail_accept_json is set", function()
      assert.equal(200, token_req(fields(cred.clientId, cred.secret), "form").status)
      assert.equal(415, token_req(fields(cred.clientId, cred.secret), "json").status)
      s:settings{ spreetail_accept_json = true }
      assert.equal(200, token_req(fields(cred.clientId, cred.secret), "json").status)
      s:settings{ spreetail_accept_urlencoded = false }
      assert.equal(415, token_req(fields(cred.clientId, cred.secret), "form").status)
    end)

    it("answers 400 with validation errors for missing fields and another grant type", function()
      local r = token_req({ GrantType = "client_credentials", ClientId = cred.clientId })
      assert.equal(400, r.status)
      assert.same({ "The ClientSecret field is required." }, r.json.errors.ClientSecret)
      r = token_req({ GrantType = "password", ClientId = cred.clientId, ClientSecret = cred.secret })
      assert.equal(400, r.status)
      assert.truthy(r.json.errors.GrantType)
    end)

    it("answers 401 for a wrong secret or an unknown client", function()
      assert.equal(401, token_req(fields(cred.clientId, "wrong")).status)
      assert.equal(401, token_req(fields("0123456789abcdef0123456789abcdef", cred.secret)).status)
    end)

    it("issues tokens that expire after expiresIn (simulated clock)", function()
      local tok = token()
      assert.equal(200, s:request{ path = CREDS, bearer = tok }.status)
      s:advance(3601)
      assert.equal(401, s:request{ path = CREDS, bearer = tok }.status)
    end)
  end)

  describe("client credentials", function()
    it("creates a new clientId + secret pair, shown once", function()
      local r = assert(s:request{ method = "POST", path = CREDS, bearer = token(),
        json = { name = "rotation 1", expires = "2099-06-21T00:00:00.000Z" } })
      assert.equal(201, r.status, r.body)
      local c = r.json
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", c.credentialId)
      assert.matches("^" .. string.rep("%x", 32) .. "$", c.clientId)
      assert.not_equal(cred.clientId, c.clientId)
      assert.matches("^[%w+/]+==$", c.secret)
      assert.equal("rotation 1", c.name)
      assert.equal("2099-06-21T00:00:00.000Z", c.expires)
      assert.is_string(c.created)
      -- the new pair works
      assert.is_string(token(c.clientId, c.secret))
      -- the secret is never listed
      local list = s:request{ path = CREDS, bearer = token() }
      assert.equal(200, list.status)
      assert.equal(2, #list.json)
      for _, e in ipairs(list.json) do assert.equal(require("cjson").null, e.secret) end
      local secrets = s:secrets()
      assert.equal(c.secret, secrets[#secrets])
    end)

    it("creates without expires (null: never) and answers the create status setting", function()
      s:settings{ spreetail_create_status = 200 }
      local r = s:request{ method = "POST", path = CREDS, bearer = token(), json = { name = "n" } }
      assert.equal(200, r.status)
      assert.equal(require("cjson").null, r.json.expires)
    end)

    it("refuses a missing name, a past or malformed expires, and a non-JSON body", function()
      local tok = token()
      local nameless = s:request{ method = "POST", path = CREDS, bearer = tok, json = { expires = "2099-01-01" } }
      assert.equal(400, nameless.status)
      local r = s:request{ method = "POST", path = CREDS, bearer = tok,
        json = { name = "n", expires = "2001-01-01T00:00:00Z" } }
      assert.equal(400, r.status)
      assert.truthy(r.json.errors.Expires)
      assert.equal(400, s:request{ method = "POST", path = CREDS, bearer = tok,
        json = { name = "n", expires = "soon" } }.status)
      assert.equal(415, s:request{ method = "POST", path = CREDS, bearer = tok, body = "name=n",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }.status)
    end)

    it("answers 401 without a token and 403 for a credential without the right", function()
      assert.equal(401, s:request{ path = CREDS }.status)
      assert.equal(401, s:request{ path = CREDS, bearer = "x.y.z" }.status)
      local weak = s:seed{ provider = "spreetail", can_manage = false }
      assert.equal(403, s:request{ path = CREDS, bearer = token(weak.clientId, weak.secret) }.status)
    end)

    it("lists an empty account as []", function()
      s:reset()
      cred = s:seed{ provider = "spreetail", account = "a" }
      local tok = token()
      s:request{ method = "DELETE", path = CREDS .. "/" .. cred.clientId, bearer = tok }
      s:settings{ spreetail_revoke_tokens = false }
      local r = s:request{ path = CREDS, bearer = tok }
      assert.equal(200, r.status)
      assert.equal("[]", r.body)
    end)

    it("deletes by clientId with 204 and revokes at once", function()
      local admin_tok = token()
      local c = s:request{ method = "POST", path = CREDS, bearer = admin_tok, json = { name = "new" } }.json
      local old_tok = token(c.clientId, c.secret)
      local r = s:request{ method = "DELETE", path = CREDS .. "/" .. c.clientId, bearer = admin_tok }
      assert.equal(204, r.status)
      assert.equal("", r.body)
      assert.equal(401, token_req(fields(c.clientId, c.secret)).status)
      assert.equal(401, s:request{ path = CREDS, bearer = old_tok }.status)   -- spreetail_revoke_tokens
      assert.equal(1, #s:request{ path = CREDS, bearer = admin_tok }.json)
      assert.equal(404, s:request{ method = "DELETE", path = CREDS .. "/" .. c.clientId, bearer = admin_tok }.status)
    end)

    it("keeps tokens of a deleted pair when spreetail_revoke_tokens is false", function()
      s:settings{ spreetail_revoke_tokens = false }
      local tok = token()
      assert.equal(204, s:request{ method = "DELETE", path = CREDS .. "/" .. cred.clientId, bearer = tok }.status)
      assert.equal(200, s:request{ path = CREDS, bearer = tok }.status)
    end)

    it("honours expires: the pair stops working and leaves the listing", function()
      local tok = token()
      local soon = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(s:clock().now) + 600)
      local c = s:request{ method = "POST", path = CREDS, bearer = tok, json = { name = "short", expires = soon } }.json
      assert.equal(200, token_req(fields(c.clientId, c.secret)).status)
      s:advance(601)
      assert.equal(401, token_req(fields(c.clientId, c.secret)).status)
      local list = s:request{ path = CREDS, bearer = token() }.json
      assert.equal(1, #list)
      assert.equal(cred.clientId, list[1].clientId)
    end)
  end)
end)
