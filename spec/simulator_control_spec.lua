-- The simulator's control API (/_sim/), faults, clock, settings, logs, and its lifecycle.
local sim = require "spec.helpers.sim"
local cjson = require "cjson"

local TOKEN = "/genesys/login/oauth/token"
local CLIENTS = "/genesys/api/v2/oauth/clients"
local ME = "/genesys/api/v2/tokens/me"

local function now_ms()
  local p = io.popen("date +%s%3N")
  local v = tonumber(p:read("*a"))
  p:close()
  return v
end

describe("simulator: control API #proc", function()
  local s, admin, secrets_log

  setup(function()
    secrets_log = os.tmpname()
    s = sim.start{ env = { ROTOR_SECRETS_LOG = secrets_log } }
  end)
  teardown(function()
    if s then s:stop() end
    -- under `make test`, what this instance issued joins the run's list for the leak scan
    local all = os.getenv("ROTOR_SECRETS_LOG")
    local mine = sim.read_file(secrets_log)
    if all and all ~= "" and mine then
      local f = assert(io.open(all, "ab"))
      f:write(mine)
      f:close()
    end
    os.remove(secrets_log)
  end)

  before_each(function()
    s:reset()
    admin = s:seed{ provider = "genesys", admin = true }
  end)

  local function token()
    local r = assert(s:request{ method = "POST", path = TOKEN, basic = { admin.client_id, admin.client_secret },
      form = { grant_type = "client_credentials" } })
    return r.json.access_token
  end

  local function regenerate(tok, o)
    o = o or {}
    return s:request{ method = "POST", path = CLIENTS .. "/" .. admin.client_id .. "/secret", bearer = tok,
      timeout = o.timeout }
  end

  it("writes env with the URL and CA, serves HTTP/1.1 and HTTP/2 over TLS on 127.0.0.1", function()
    assert.matches("^https://127%.0%.0%.1:%d+$", s.url)
    local f = assert(io.open(s.dir .. "/env"))
    local env = f:read("*a")
    f:close()
    assert.matches("ROTOR_SIM_URL=" .. s.url:gsub("%p", "%%%0"), env)
    assert.matches("ROTOR_SIM_CA=" .. s.ca:gsub("%p", "%%%0"), env)
    s:request{ path = ME, http1 = true }
    s:request{ path = ME }
    local log = s:log()
    assert.equal("HTTP/1.1", log[1].proto)
    assert.equal("HTTP/2.0", log[2].proto)
    assert.equal(404, s:request{ path = "/nowhere" }.status)
  end)

  it("runs several instances at once, each with its own state", function()
    local other = sim.start()
    finally(function() other:stop() end)
    assert.not_equal(s.url, other.url)
    other:seed{ provider = "spreetail" }
    assert.equal(1, #other:secrets())
    assert.equal(1, #s:secrets())   -- the genesys admin only
  end)

  it("seeds every provider (one object or an array) and returns the records", function()
    local recs = s:control("POST", "/seed", {
      { provider = "paylocity", client_id = "p", client_secret = "ps", code = "c" },
      { provider = "spreetail", client_id = "0123456789abcdef0123456789abcdef", client_secret = "ss" },
      { provider = "genesys", client_id = "g", client_secret = "gs" },
      { provider = "spapi", client_id = "a", client_secret = "as", application_id = "app", queue = "q1" },
    })
    assert.equal("p", recs[1].client_id)
    assert.equal("ps", recs[1].client_secret)
    assert.equal("ss", recs[2].secret)
    assert.equal("gs", recs[3].client_secret)
    assert.equal("app", recs[4].application_id)
    assert.matches("/sqs/123456789012/q1$", recs[4].queue_url)
    assert.is_string(recs[4].sqs.access_key)
    local ok, err = pcall(s.control, s, "POST", "/seed", { provider = "nope" })
    assert.is_false(ok)
    assert.matches("400", err)
  end)

  it("reads back every secret issued or seeded, and appends them to $ROTOR_SECRETS_LOG", function()
    local new = regenerate(token()).json.secret
    local r = s:control("GET", "/secrets")
    assert.same({ admin.client_secret, new }, r.secrets)
    assert.equal("issued", r.details[2].source)
    assert.equal("genesys", r.details[2].provider)
    local f = assert(io.open(secrets_log))
    local text = f:read("*a")
    f:close()
    assert.truthy(text:find(new, 1, true))
    assert.truthy(text:find(admin.client_secret, 1, true))
  end)

  it("logs requests and counts them per path; both can be cleared", function()
    local tok = token()
    s:request{ path = ME, bearer = tok }
    s:request{ path = ME, bearer = tok }
    local log = s:log()
    assert.equal(3, #log)
    assert.same({ "POST", TOKEN, 200, "Basic" }, { log[1].method, log[1].path, log[1].status, log[1].auth })
    assert.equal(ME, log[3].path)
    local c = s:counters()
    assert.equal(2, c[ME])
    assert.equal(1, c[TOKEN])
    s:control("DELETE", "/log")
    s:control("DELETE", "/counters")
    assert.same({}, s:log())
    assert.same({}, s:counters())
  end)

  describe("settings", function()
    it("lists every setting with its default and refuses unknown names or types", function()
      local st = s:settings()
      assert.equal(300, st.genesys_rate)
      assert.equal(25, st.paylocity_rate)
      assert.equal(60, st.spapi_rotate_interval)
      assert.is_true(st.genesys_regenerate_kills_old)
      assert.equal(60, st.hang_seconds)
      assert.equal(7, s:settings{ genesys_rate = 7 }.genesys_rate)
      assert.equal(7, s:settings().genesys_rate)
      assert.is_false(pcall(s.settings, s, { no_such_setting = 1 }))
      assert.is_false(pcall(s.settings, s, { genesys_rate = "fast" }))
      s:reset()
      assert.equal(300, s:settings().genesys_rate)
      s:settings{ genesys_rate = 5 }
      s:reset(true)
      assert.equal(5, s:settings().genesys_rate)
      s:settings{ genesys_rate = cjson.null }
      assert.equal(300, s:settings().genesys_rate)
    end)

    it("adds latency to every provider request", function()
      s:settings{ latency = 0.3 }
      local t0 = now_ms()
      s:request{ path = ME }
      assert.truthy(now_ms() - t0 >= 300)
    end)
  end)

  describe("clock", function()
    it("advances and sets simulated time", function()
      local c0 = s:clock()
      local c1 = s:advance(86400)
      assert.truthy(c1.offset >= 86400)
      assert.truthy(c1.now - c0.now >= 86400)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", c1.iso)
      local c2 = s:control("POST", "/clock", { set = "2030-01-01T00:00:00Z" })
      assert.matches("^2030%-01%-01T00:00:0", c2.iso)
      local c3 = s:control("POST", "/clock", { reset = true })
      assert.equal(0, c3.offset)
    end)
  end)

  describe("faults", function()
    it("answers a status with Retry-After for the next N requests, then behaves", function()
      local tok = token()
      s:fault{ path = ME, count = 2, status = 429, retry_after = 3 }
      local r1, r2, r3 = s:request{ path = ME, bearer = tok }, s:request{ path = ME, bearer = tok },
        s:request{ path = ME, bearer = tok }
      assert.same({ 429, 429, 200 }, { r1.status, r2.status, r3.status })
      assert.equal("3", r1.headers["retry-after"])
      assert.equal("status", s:log()[2].fault)
    end)

    it("queues faults per path, filtered by method, and lists and clears them", function()
      local tok = token()
      s:fault{ path = CLIENTS, method = "POST", status = 500 }
      s:fault{ path = ME, status = 503 }
      s:fault{ path = ME, status = 500 }
      assert.equal(3, #s:control("GET", "/faults"))
      assert.equal(200, s:request{ path = CLIENTS, bearer = tok }.status)
      assert.equal(503, s:request{ path = ME, bearer = tok }.status)
      assert.equal(500, s:request{ path = ME, bearer = tok }.status)
      s:control("DELETE", "/faults")
      assert.same({}, s:control("GET", "/faults"))
      assert.equal(200, s:request{ method = "POST", path = CLIENTS, bearer = tok,
        json = { name = "x", authorizedGrantType = "CLIENT-CREDENTIALS" } }.status)
      assert.is_false(pcall(s.fault, s, { path = ME }))
      assert.is_false(pcall(s.fault, s, { path = "relative", status = 500 }))
    end)

    it("delays a request", function()
      s:fault{ path = ME, delay = 0.4 }
      local t0 = now_ms()
      s:request{ path = ME }
      assert.truthy(now_ms() - t0 >= 400)
    end)

    it("resets the connection after processing (the mint happened: ambiguous)", function()
      local tok = token()
      s:fault{ path = CLIENTS .. "/" .. admin.client_id .. "/secret", reset = true }
      local res, err = regenerate(tok)
      assert.is_nil(res)
      assert.matches("curl exit", err)
      assert.equal(2, #s:secrets())   -- seeded + the one minted before the reset
    end)

    it("resets before processing with apply=false", function()
      local tok = token()
      s:fault{ path = CLIENTS .. "/" .. admin.client_id .. "/secret", reset = true, apply = false }
      assert.is_nil(regenerate(tok))
      assert.equal(1, #s:secrets())
    end)

    it("truncates, cuts, malforms and oversizes JSON bodies", function()
      local tok = token()
      s:fault{ path = ME, truncate = true }
      local r = s:request{ path = ME, bearer = tok }
      assert.equal(200, r.status)
      assert.is_nil(r.json)
      assert.equal("{", r.body:sub(1, 1))
      s:fault{ path = ME, malformed = true }
      r = s:request{ path = ME, bearer = tok }
      assert.equal(200, r.status)
      assert.is_nil(r.json)
      s:settings{ oversize_bytes = 300000 }
      s:fault{ path = ME, oversize = true }
      r = s:request{ path = ME, bearer = tok }
      assert.equal(200, r.status)
      assert.truthy(#r.body > 300000)
      s:fault{ path = ME, cut = true }
      local res, err = s:request{ path = ME, bearer = tok, http1 = true }
      assert.is_nil(res)
      assert.matches("curl exit", err)
    end)

    it("hangs after the request arrived without blocking other connections", function()
      s:settings{ hang_seconds = 5 }
      local tok = token()
      local target = s:seed{ provider = "genesys" }
      local path = CLIENTS .. "/" .. target.client_id .. "/secret"
      s:fault{ path = path, hang = true }
      -- the hanging request runs in the background; its client gives up after 2 s
      local cmd = "curl -s -o /dev/null --max-time 2 --cacert " .. sim.shell_quote(s.ca)
        .. " -X POST -H " .. sim.shell_quote("Authorization: Bearer " .. tok) .. " "
        .. sim.shell_quote(s.url .. path)
        .. "; echo $? > " .. sim.shell_quote(s.dir .. "/hang.rc")
      os.execute("(" .. cmd .. ") >/dev/null 2>&1 &")
      local t0 = now_ms()
      local r
      for _ = 1, 20 do   -- wait until the hanging request has arrived
        r = s:request{ path = ME, bearer = tok }
        if s:counters()[path] then break end
      end
      assert.equal(200, r.status)
      assert.truthy(now_ms() - t0 < 1500)
      os.execute("sleep 2.2")
      local f = io.open(s.dir .. "/hang.rc")
      local rc = f and f:read("*n")
      if f then f:close() end
      assert.equal(28, rc)        -- curl: operation timed out
      assert.equal(3, #s:secrets())   -- processed, never answered
    end)
  end)
end)
