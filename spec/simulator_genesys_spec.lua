-- The simulator's Genesys Cloud login and OAuth client endpoints, driven with the curl CLI.
local sim = require "spec.helpers.sim"

local TOKEN = "/genesys/login/oauth/token"
local CLIENTS = "/genesys/api/v2/oauth/clients"
local ME = "/genesys/api/v2/tokens/me"
local VIEWER_ROLE = "00000000-0000-4000-8000-00000000a002"
local DIVISION = "00000000-0000-4000-8000-00000000d001"

describe("simulator: genesys #proc", function()
  local s, admin

  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  before_each(function()
    s:reset()
    admin = s:seed{ provider = "genesys", admin = true, name = "admin" }
  end)

  local function token_req(id, secret, form)
    return assert(s:request{ method = "POST", path = TOKEN, basic = { id, secret },
      form = form or { grant_type = "client_credentials" } })
  end

  local function token(id, secret)
    local r = token_req(id or admin.client_id, secret or admin.client_secret)
    assert.equal(200, r.status, r.body)
    return r.json.access_token
  end

  local function api(method, path, tok, body)
    return assert(s:request{ method = method, path = path, bearer = tok, json = body })
  end

  local function new_client(tok, extra)
    local body = { name = "reporting", authorizedGrantType = "CLIENT-CREDENTIALS",
      roleDivisions = { { roleId = VIEWER_ROLE, divisionId = DIVISION } } }
    for k, v in pairs(extra or {}) do body[k] = v end
    local r = api("POST", CLIENTS, tok, body)
    assert.equal(200, r.status, r.body)
    return r.json
  end

  describe("POST /oauth/token (login host)", function()
    it("issues a token for Basic + form grant_type=client_credentials", function()
      local r = token_req(admin.client_id, admin.client_secret)
      assert.equal(200, r.status)
      assert.equal("bearer", r.json.token_type)
      assert.equal(86400, r.json.expires_in)
    end)

    it("refuses a missing Basic header, a wrong secret, another grant, a non-form body", function()
      local r = assert(s:request{ method = "POST", path = TOKEN, form = { grant_type = "client_credentials",
        client_id = admin.client_id, client_secret = admin.client_secret } })
      assert.equal(400, r.status)
      assert.equal("invalid_client", r.json.error)
      r = token_req(admin.client_id, "wrong")
      assert.equal(401, r.status)
      assert.equal("invalid_client", r.json.error)
      assert.equal("unsupported_grant_type", token_req(admin.client_id, admin.client_secret,
        { grant_type = "password" }).json.error)
      r = assert(s:request{ method = "POST", path = TOKEN, basic = { admin.client_id, admin.client_secret },
        json = { grant_type = "client_credentials" } })
      assert.equal(400, r.status)
      assert.equal("invalid_request", r.json.error)
    end)

    it("refuses a client whose grant type is not CLIENT-CREDENTIALS", function()
      local c = s:seed{ provider = "genesys", authorizedGrantType = "CODE" }
      assert.equal("unauthorized_client", token_req(c.client_id, c.client_secret).json.error)
    end)

    it("lets tokens live accessTokenValiditySeconds of simulated time", function()
      local c = s:seed{ provider = "genesys", accessTokenValiditySeconds = 300 }
      local r = token_req(c.client_id, c.client_secret)
      assert.equal(300, r.json.expires_in)
      assert.equal(200, api("GET", ME, r.json.access_token).status)
      s:advance(301)
      assert.equal(401, api("GET", ME, r.json.access_token).status)
    end)
  end)

  describe("GET/HEAD /api/v2/tokens/me", function()
    it("describes the token's client", function()
      local r = api("GET", ME, token())
      assert.equal(200, r.status)
      assert.equal(admin.client_id, r.json.OAuthClient.id)
      assert.is_string(r.json.organization.id)
      assert.equal(200, s:request{ method = "HEAD", path = ME, bearer = token() }.status)
    end)

    it("answers 401 ErrorBody without a valid token", function()
      local r = api("GET", ME, nil)
      assert.equal(401, r.status)
      assert.equal("bad.credentials", r.json.code)
      assert.equal(401, r.json.status)
      assert.is_string(r.json.message)
      assert.equal(401, api("GET", ME, "nope").status)
    end)
  end)

  describe("OAuth clients", function()
    it("creates (POST) an OAuthClient with its secret, reads it back without", function()
      local tok = token()
      local c = new_client(tok, { accessTokenValiditySeconds = 3600, description = "d" })
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", c.id)
      assert.matches("^[%w_-]+$", c.secret)
      assert.equal(43, #c.secret)
      assert.equal("active", c.state)
      assert.equal(3600, c.accessTokenValiditySeconds)
      assert.equal("/api/v2/oauth/clients/" .. c.id, c.selfUri)
      assert.is_string(c.dateCreated)
      assert.equal(admin.client_id, c.createdBy.id)
      local g = api("GET", CLIENTS .. "/" .. c.id, tok)
      assert.equal(200, g.status)
      assert.equal(c.name, g.json.name)
      assert.is_nil(g.json.secret)
      -- the new client authenticates on its own
      assert.is_string(token(c.id, c.secret))
    end)

    it("validates OAuthClientRequest with 400 ErrorBody; 415 for a non-JSON body", function()
      local tok = token()
      local r = api("POST", CLIENTS, tok, { authorizedGrantType = "CLIENT-CREDENTIALS" })
      assert.equal(400, r.status)
      assert.equal("bad.request", r.json.code)
      assert.equal(400, api("POST", CLIENTS, tok, { name = "x", authorizedGrantType = "BOGUS" }).status)
      assert.equal(400, api("POST", CLIENTS, tok, { name = "x", authorizedGrantType = "CLIENT-CREDENTIALS",
        accessTokenValiditySeconds = 10 }).status)
      assert.equal(400, api("POST", CLIENTS, tok, { name = "x", authorizedGrantType = "CLIENT-CREDENTIALS",
        state = "gone" }).status)
      r = assert(s:request{ method = "POST", path = CLIENTS, bearer = tok, body = "name=x",
        headers = { ["Content-Type"] = "text/plain" } })
      assert.equal(415, r.status)
    end)

    it("answers 404 ErrorBody for an unknown client", function()
      local tok = token()
      local r = api("GET", CLIENTS .. "/00000000-0000-0000-0000-000000000000", tok)
      assert.equal(404, r.status)
      assert.equal("not.found", r.json.code)
      assert.equal(404, api("POST", CLIENTS .. "/nope/secret", tok).status)
      assert.equal(404, api("DELETE", CLIENTS .. "/nope", tok).status)
      assert.equal(404, api("PUT", CLIENTS .. "/nope", tok, { name = "x", authorizedGrantType = "CODE" }).status)
    end)

    it("regenerates the secret (POST .../secret); the old secret and its tokens die at once", function()
      local tok = token()
      local c = new_client(tok)
      local old_tok = token(c.id, c.secret)
      local r = api("POST", CLIENTS .. "/" .. c.id .. "/secret", tok)
      assert.equal(200, r.status)
      assert.equal(c.id, r.json.id)
      assert.not_equal(c.secret, r.json.secret)
      assert.equal(401, token_req(c.id, c.secret).status)
      assert.equal(401, api("GET", ME, old_tok).status)
      assert.is_string(token(c.id, r.json.secret))
      local secrets = s:secrets()
      assert.equal(r.json.secret, secrets[#secrets])
    end)

    it("keeps the old secret when genesys_regenerate_kills_old is false", function()
      s:settings{ genesys_regenerate_kills_old = false, genesys_regenerate_kills_tokens = false }
      local tok = token()
      local c = new_client(tok)
      local old_tok = token(c.id, c.secret)
      local new = api("POST", CLIENTS .. "/" .. c.id .. "/secret", tok).json.secret
      assert.equal(200, token_req(c.id, c.secret).status)
      assert.equal(200, token_req(c.id, new).status)
      assert.equal(200, api("GET", ME, old_tok).status)
    end)

    it("updates with PUT; state disabled kills tokens and refuses new ones; inactive too", function()
      local tok = token()
      local c = new_client(tok)
      local ctok = token(c.id, c.secret)
      local body = { name = "renamed", authorizedGrantType = "CLIENT-CREDENTIALS",
        roleDivisions = c.roleDivisions, state = "disabled" }
      local r = api("PUT", CLIENTS .. "/" .. c.id, tok, body)
      assert.equal(200, r.status)
      assert.equal("renamed", r.json.name)
      assert.equal("disabled", r.json.state)
      assert.is_nil(r.json.secret)
      assert.equal(401, api("GET", ME, ctok).status)
      assert.equal(401, token_req(c.id, c.secret).status)
      body.state = "active"
      assert.equal(200, api("PUT", CLIENTS .. "/" .. c.id, tok, body).status)
      assert.equal(200, token_req(c.id, c.secret).status)
      body.state = "inactive"
      r = api("PUT", CLIENTS .. "/" .. c.id, tok, body)
      assert.is_string(r.json.dateToDelete)
      assert.equal(401, token_req(c.id, c.secret).status)
    end)

    it("deletes (204, empty body); the client's tokens stop working", function()
      local tok = token()
      local c = new_client(tok)
      local ctok = token(c.id, c.secret)
      local r = api("DELETE", CLIENTS .. "/" .. c.id, tok)
      assert.equal(204, r.status)
      assert.equal("", r.body)
      assert.equal(404, api("GET", CLIENTS .. "/" .. c.id, tok).status)
      assert.equal(401, api("GET", ME, ctok).status)
    end)

    it("lists OAuthClientEntityListing pages linked by nextUri", function()
      s:settings{ genesys_page_size = 2 }
      for i = 1, 4 do s:seed{ provider = "genesys", name = "c" .. i } end
      local tok = token()
      local seen, pages = {}, 0
      local path = CLIENTS
      while path do
        local r = api("GET", path, tok)
        assert.equal(200, r.status)
        pages = pages + 1
        assert.equal(5, r.json.total)
        assert.equal(3, r.json.pageCount)
        assert.equal(2, r.json.pageSize)
        assert.is_string(r.json.firstUri)
        assert.is_string(r.json.lastUri)
        for _, e in ipairs(r.json.entities) do
          assert.is_nil(e.secret)
          seen[#seen + 1] = e.id
        end
        path = r.json.nextUri and ("/genesys" .. r.json.nextUri) or nil
        if pages > 1 then assert.is_string(r.json.previousUri) end
      end
      assert.equal(3, pages)
      assert.equal(5, #seen)
    end)

    it("checks permissions: 403 missing.permissions", function()
      local viewer = s:seed{ provider = "genesys", roleDivisions = { { roleId = VIEWER_ROLE, divisionId = DIVISION } } }
      local vt = token(viewer.client_id, viewer.client_secret)
      assert.equal(200, api("GET", CLIENTS, vt).status)
      local r = api("POST", CLIENTS, vt, { name = "x", authorizedGrantType = "CLIENT-CREDENTIALS" })
      assert.equal(403, r.status)
      assert.equal("missing.permissions", r.json.code)
      assert.equal(403, api("POST", CLIENTS .. "/" .. admin.client_id .. "/secret", vt).status)
      assert.equal(403, api("DELETE", CLIENTS .. "/" .. admin.client_id, vt).status)
      local none = s:seed{ provider = "genesys" }
      assert.equal(403, api("GET", CLIENTS, token(none.client_id, none.client_secret)).status)
      local listed = s:seed{ provider = "genesys", permissions = { "oauth:client:view" } }
      assert.equal(200, api("GET", CLIENTS, token(listed.client_id, listed.client_secret)).status)
    end)

    it("limits requests per token per minute: 429 with Retry-After", function()
      s:settings{ genesys_rate = 3 }
      local tok = token()
      local got
      for _ = 1, 7 do
        local r = api("GET", ME, tok)
        if r.status == 429 then got = r break end
      end
      assert.truthy(got)
      assert.equal("too.many.requests", got.json.code)
      local ra = tonumber(got.headers["retry-after"])
      assert.truthy(ra and ra >= 1 and ra <= 60)
      -- another token has its own budget
      assert.equal(200, api("GET", ME, token()).status)
    end)
  end)
end)
