-- The safety invariants of a rotation (doc/SAFETY.md), each against the simulator over HTTPS:
-- the way each was broken before is what the spec does.
local core = require "rotor.core"
local rotor = require "rotor"
local json = require "rotor.json"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local counter = fixtures.counter

local function read(path)
  local f = assert(io.open(path, "rb"))
  local t = f:read("*a")
  f:close()
  return t
end

-- requests the simulator logged for method and path
local function logged(s, method, path)
  local n = 0
  for _, e in ipairs(s:log()) do
    if e.method == method and e.path == path then n = n + 1 end
  end
  return n
end

local function assert_absent(text, secret, what)
  local plain = core.is_secret(secret) and secret:reveal() or secret
  assert.is_nil(text:find(plain, 1, true), what .. " holds the secret")
end

describe("safety invariants #safety", function()
  local s, root
  setup(function()
    s = sim.start()
    root = s.dir .. "/safety-spec"
    assert(core.fs_mkdir(root, 448))
  end)
  teardown(function()
    if s then s:stop() end
  end)

  local n = 0
  local function store(name)
    n = n + 1
    return assert(rotor.store.file(("%s/%s-%d"):format(root, name, n))), ("%s/%s-%d"):format(root, name, n)
  end

  -- run a Lua script in the rotor host (signals reach core.interrupted() there), with cfg (which
  -- holds a fixture's credentials: mode 0600, removed once the script ran) as its argument
  local function run_host(name, cfg, script)
    local base = ("%s/%s-host-%d"):format(root, name, n)
    assert(core.fs_write_atomic(base .. ".json", json.encode(cfg), 384))
    assert(core.fs_write_atomic(base .. ".lua", script, 384))
    local out, rc = sim.run("timeout -k 5 60 " .. (os.getenv("ROTOR_BIN") or "./build/rotor") .. " "
      .. sim.shell_quote(base .. ".lua") .. " " .. sim.shell_quote(base .. ".json") .. " 2>&1")
    os.remove(base .. ".json")
    return out, rc
  end

  -- run_host with a script that sends itself SIGTERM `after` seconds in while rotor.rotate runs on
  -- fx's slot (store dir) with a provider object of `kind` and the options in `extra` (Lua text);
  -- the script prints RESULT and the seconds the rotation took
  local function run_signalled(name, kind, fx, dir, after, extra)
    return run_host(name, { dir = dir, slot = fx.slot, target = fx.target, opts = fx.opts }, ([[
local core, json, rotor = require "rotor.core", require "rotor.json", require "rotor"
local cfg = json.decode(io.open(arg[1]):read("a"))
os.execute("(sleep %s; kill -TERM " .. core.getpid() .. ") &")
local t0 = core.now()
local res, err = rotor.rotate { slot = cfg.slot, provider = assert(rotor.%s(cfg.opts)),
                                store = assert(rotor.store.file(cfg.dir)), target = cfg.target, %s }
print("RESULT", res and "ok" or err.kind, res and "" or err.message)
print(("SECONDS %%.1f"):format(core.now() - t0))
]]):format(after, kind, extra))
  end

  describe("the provider object's own Genesys client", function()
    it("regenerate is refused before anything is sent, naming new_client", function()
      local fx = fixtures.seed(s, "genesys")
      local p = fixtures.provider(fx)
      local own_path = "/genesys/api/v2/oauth/clients/" .. p.client_id .. "/secret"
      local st, dir = store("own-regen")
      local res, err = rotor.rotate { slot = "genesys/admin", provider = p, store = st,
                                      target = { client_id = p.client_id } }
      assert.is_nil(res)
      assert.equal("config", err.kind)
      assert.truthy(err.message:find('strategy = "new_client"', 1, true), err.message)
      assert.truthy(err.message:find("nothing was sent", 1, true), err.message)
      assert.equal(0, counter(s, own_path))
      assert.is_false(assert(rotor.store.file(dir)):get("genesys/admin"))
      assert.is_true(fixtures.works(fx, p.client_id, fx.opts.client_secret)) -- the admin still works
    end)

    it("new_client replaces it: successor verified and stored, provider switched, old disabled and deleted",
       function()
      local fx = fixtures.seed(s, "genesys")
      local p = fixtures.provider(fx)
      local old_id = p.client_id
      local st = store("own-new")
      -- the first create is reset after the server processed it: the rerun must sweep that client
      fixtures.control(s, "POST", "/faults", { path = "/genesys/api/v2/oauth/clients", method = "POST",
                                                reset = true })
      local before = logged(s, "POST", "/genesys/api/v2/oauth/clients")
      local res, err = rotor.rotate { slot = "genesys/admin", provider = p, store = st, strategy = "new_client",
                                      target = { client_id = old_id }, verify_delay = 0.1 }
      assert.is_nil(res)
      assert.equal("ambiguous", err.kind)
      assert.is_true(fixtures.works(fx, old_id, fx.opts.client_secret)) -- nothing lost yet
      res, err = rotor.rotate { slot = "genesys/admin", provider = fixtures.provider(fx), store = st,
                                strategy = "new_client", target = { client_id = old_id }, verify_delay = 0.1 }
      assert.is_nil(err)
      assert.equal("new_client", res.strategy)
      local rec = assert(st:get("genesys/admin"))
      local cur = rec.versions.current
      assert.are_not.equal(old_id, cur.client_id)
      assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
      assert.is_false(fixtures.works(fx, old_id, fx.opts.client_secret)) -- retired
      assert.equal(before + 2, logged(s, "POST", "/genesys/api/v2/oauth/clients")) -- the lost one, the new one
      local orphan_swept = false
      for _, e in ipairs(rec.journal) do
        if e.outcome == "orphan_deleted" then orphan_swept = true end
      end
      assert.is_true(orphan_swept)
      -- the successor (now the admin) lists no leftover client of this rotation
      local admin = fixtures.provider(fx)
      admin:set_credentials(cur.client_id, cur.secret)
      for _, c in ipairs(assert(admin:get_oauth_clients()).entities) do
        assert.is_true(c.id == cur.client_id or not tostring(c.name):find("[rotor ", 1, true), c.name)
      end
    end)
  end)

  it("Spreetail recovery deletes only the pair its own rotation minted, not another slot's", function()
    local acct = "shared-" .. core.random_hex(3)
    local function boot()
      local sec = "s-" .. core.random_hex(16)
      local c = fixtures.control(s, "POST", "/seed", { provider = "spreetail", client_secret = sec, account = acct,
                                                       name = "boot" })
      return rotor.spreetail { base_url = s.url .. "/spreetail", token_url = s.url .. "/spreetail/api/v0/oauth/token",
                               client_id = c.client_id, client_secret = sec, cainfo = s.ca, timeout = 2 }
    end
    local st = store("spreetail-shared")
    local eu = boot()
    assert(rotor.rotate { slot = "acme:eu", provider = eu, store = st, verify_delay = 0.1 })
    local eu_cur = assert(st:get("acme:eu")).versions.current
    local acme = boot()
    fixtures.control(s, "POST", "/faults", { path = "/spreetail/api/v0/client-credentials", method = "POST",
                                              reset = true })
    local res, err = rotor.rotate { slot = "acme", provider = acme, store = st, verify_delay = 0.1 }
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    res, err = rotor.rotate { slot = "acme", provider = acme, store = st, verify_delay = 0.1 }
    assert.is_nil(err)
    assert.equal("acme", res.slot)
    -- acme:eu's live pair was named rotor:acme:eu:<id>: it still works
    assert.is_true(eu:verify { client_id = eu_cur.client_id, client_secret = eu_cur.secret })
    -- and acme's lost pair was swept: every pair of the account is held by the store
    local held = {}
    for _, slot in ipairs { "acme", "acme:eu" } do
      local v = assert(st:get(slot)).versions
      for _, l in ipairs { "current", "previous" } do if v[l] then held[v[l].client_id] = true end end
    end
    for _, c in ipairs(assert(acme:list_client_credentials())) do
      assert.is_true(held[c.clientId] or not c.name:find("^rotor:"), "not held: " .. c.name)
    end
  end)

  -- the recovery after a lost create lists the account's pairs; a listing that lags behind that
  -- create showed none of its name: the pair was created again, and the first stayed live and
  -- stored nowhere, with nothing in the record to find it by
  it("a Spreetail pair the recovery's listing did not show is found and deleted by a later run", function()
    local sec = "s-" .. core.random_hex(16)
    local c = fixtures.control(s, "POST", "/seed", { provider = "spreetail", client_secret = sec,
                                                     account = "lag-" .. core.random_hex(3), name = "boot" })
    local p = rotor.spreetail { base_url = s.url .. "/spreetail", token_url = s.url .. "/spreetail/api/v0/oauth/token",
                                client_id = c.client_id, client_secret = sec, cainfo = s.ca, timeout = 2 }
    local path = "/spreetail/api/v0/client-credentials"
    local st = store("spreetail-lag")
    fixtures.control(s, "POST", "/faults", { path = path, method = "POST", reset = true })
    local res, err = rotor.rotate { slot = "acme", provider = p, store = st, verify_delay = 0.1 }
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    -- the recovery's listing: empty, as one that has not caught up yet
    fixtures.control(s, "POST", "/faults", { path = path, method = "GET", status = 200, body = {} })
    assert(rotor.rotate { slot = "acme", provider = p, store = st, verify_delay = 0.1 })
    local u = assert(st:get("acme")).unfound
    assert.equal(1, #u)
    local named = 0
    for _, pair in ipairs(assert(p:list_client_credentials())) do
      if pair.name == u[1].name then named = named + 1 end
    end
    assert.equal(2, named) -- the lost one and the one stored, made by one rotation, under one name
    -- the next run's listing shows it: deleted; every pair of the account is then one the slot holds
    assert(rotor.rotate { slot = "acme", provider = p, store = st, verify_delay = 0.1 })
    local rec = assert(st:get("acme"))
    assert.is_nil(rec.unfound)
    local pairs_left = assert(p:list_client_credentials())
    assert.equal(1, #pairs_left)
    assert.equal(rec.versions.current.client_id, pairs_left[1].clientId)
  end)

  -- a message on fx's SQS queue: body a string, or a new-secret notification for fx's client as
  -- Amazon writes it ({ secret =, when = seconds from now, expiry = both expiry fields })
  local function send(fx, body)
    if type(body) == "table" then
      local t = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(os.time() + body.when))
      body = json.encode {
        notificationVersion = "1.0", notificationType = "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
        payloadVersion = "2023-11-30", eventTime = t,
        payload = { applicationOAuthClientNewSecret = { clientId = fx.bootstrap.client_id,
          newClientSecret = body.secret, newClientSecretExpiryTime = body.expiry or t,
          oldClientSecretExpiryTime = body.expiry or t } },
        notificationMetadata = { applicationId = "amzn1.sp.solution.forged", notificationId = core.random_hex(8) },
      }
    end
    fixtures.control(s, "POST", "/sqs/send", { queue = fx.opts.sqs.queue_url:match("([^/]+)$"), body = body })
  end

  it("SP-API: a forged or stale new-secret message is discarded and the real one is stored", function()
    local fx = fixtures.seed(s, "spapi")
    local p = fixtures.provider(fx)
    local function forge(secret, when) send(fx, { secret = secret, when = when }) end
    local forged_now, forged_future = "amzn1.oa2-cs.v1.forged" .. core.random_hex(8), "amzn1.oa2-cs.v1.future"
      .. core.random_hex(8)
    forge(forged_future, 86400 * 30)
    forge(forged_now, 5)
    local st = store("spapi-forged")
    local res, err = rotor.rotate { slot = fx.slot, provider = p, store = st, wait = 10, verify_delay = 0.1,
                                    verify_attempts = 1 }
    assert.is_nil(err)
    assert.truthy(res)
    local rec = assert(st:get(fx.slot))
    local cur = rec.versions.current.secret:reveal()
    assert.are_not.equal(forged_now, cur)
    assert.are_not.equal(forged_future, cur)
    assert.is_true(fixtures.works(fx, rec.versions.current.client_id, cur))
    local discarded = 0
    for _, e in ipairs(rec.journal) do if e.outcome == "discarded" then discarded = discarded + 1 end end
    assert.equal(1, discarded) -- the far-future one never reached verification
  end)

  -- a provider's error detail was cut to 400 bytes before it was redacted: a secret across the
  -- cut kept 38 of its 42 characters in the error and the audit trail (found by a probe)
  it("a secret across the cut of a provider's error detail is not shown in part", function()
    for _, kind in ipairs { "spreetail", "genesys" } do
      local fx = fixtures.seed(s, kind)
      local live = fx.opts.client_secret   -- the secret the provider object authenticates with
      fixtures.control(s, "POST", "/faults", { path = fx.mint_path, method = "POST", status = 400, count = 1,
        body = { message = ("x"):rep(400 - 38) .. live } })
      local st, dir = store("cut-" .. kind)
      local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target,
                                      consumers = "none" }
      assert.is_nil(res)
      fixtures.assert_no_secret(s, err, live)
      assert_absent(read(dir .. "/audit.log"), live:sub(1, 21), "the audit trail")
      assert_absent(read(dir .. "/" .. require("rotor.store.file").encode(fx.slot) .. ".json"), live:sub(1, 21),
        "the slot's record")
    end
  end)

  -- an empty 2xx to a mint was taken as a whole answer (true), and the step indexed it: kind
  -- internal, "unexpected error: ...genesys.lua:92: attempt to index a boolean value" in the
  -- error, the journal and the audit trail (found by a probe)
  it("an empty success answer to a mint is ambiguous, and the next run recovers", function()
    for _, kind in ipairs { "spreetail", "genesys", "genesys_new" } do
      local fx = fixtures.seed(s, kind)
      fixtures.control(s, "POST", "/faults", { path = fx.mint_path, method = "POST", status = 200, body = "",
                                               count = 1 })
      local st = store("empty-" .. kind)
      local o = { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target,
                  strategy = fx.strategy, consumers = "none", verify_delay = 0.1 }
      local res, err = rotor.rotate(o)
      assert.is_nil(res)
      assert.equal("ambiguous", err.kind, err.message)
      assert.matches("the response is empty", err.message, 1, true)
      assert.is_nil(err.message:find("unexpected error", 1, true), err.message)
      res, err = rotor.rotate(o)
      assert.truthy(res, err and err.message)
      local cur = assert(st:get(fx.slot)).versions.current
      assert.is_true(fixtures.works(fx, cur.client_id, cur.secret:reveal()), kind)
    end
  end)

  describe("SP-API, a queue someone else can write to", function()
    local function rotate(fx, st, o)
      local opts = { slot = fx.slot, provider = fixtures.provider(fx), store = st, wait = 5, verify_delay = 0.1,
                     verify_attempts = 1 }
      for k, v in pairs(o or {}) do opts[k] = v end
      return rotor.rotate(opts)
    end
    -- the run (res, err) finished, and the slot holds a new secret that works
    local function assert_rotated(fx, st, res, err)
      assert.is_nil(err)
      assert.truthy(res)
      local cur = assert(st:get(fx.slot)).versions.current
      assert.are_not.equal(fx.bootstrap.secret, cur.secret:reveal())
      assert.is_true(fixtures.works(fx, cur.client_id, cur.secret:reveal()))
      return cur
    end

    -- five messages of 250 KiB (SQS takes up to 1 MiB each) made every ReceiveMessage answer
    -- larger than a response may be by default: each run failed, Amazon's message never read
    it("large messages ahead of Amazon's do not keep a run from reading it", function()
      local fx = fixtures.seed(s, "spapi")
      for _ = 1, 5 do send(fx, string.rep("J", 250 * 1024)) end
      local st = store("spapi-large")
      assert_rotated(fx, st, rotate(fx, st))
    end)

    -- on a slot's first rotation no secret is stored before the new one: a message carrying the
    -- secret in use passed for Amazon's, the rotation "finished" with the old secret (which
    -- expires about 7 days later) and an expiry the message chose, Amazon's message left unread
    it("a message carrying the secret in use is no new secret, whatever its expiry says", function()
      local fx = fixtures.seed(s, "spapi")
      send(fx, { secret = fx.bootstrap.secret, when = 60, expiry = "2099-01-01T00:00:00Z\27[2J" })
      local st = store("spapi-in-use")
      local lines = {}
      local cur = assert_rotated(fx, st, rotate(fx, st, { log = function(l) lines[#lines + 1] = l end }))
      assert.is_nil(tostring(cur.expires):find("2099", 1, true))
      local rec = assert(st:get(fx.slot))
      for _, e in ipairs(rec.journal) do assert.is_nil(tostring(e.note):find("%c"), tostring(e.note)) end
      for _, l in ipairs(lines) do assert.is_nil(l:find("%c"), l) end
    end)

    -- Amazon's token service may refuse a new secret for a while after issuing it: the message
    -- was passed over for good, in every later run too, and its secret lost
    it("Amazon's secret refused at first is tried again by a later run", function()
      local fx = fixtures.seed(s, "spapi")
      fixtures.fault(s, { path = "/lwa/auth/o2/token", method = "POST", status = 401, issued = true, count = 3 })
      local st = store("spapi-lag")
      local _, err = rotate(fx, st, { verify_attempts = 3, retry_refused = 0 })
      assert.equal("timeout", err.kind)
      assert.truthy(tostring(err):find("1 message(s) passed over, their secrets refused by the provider", 1, true),
        tostring(err))
      s:advance(120)   -- the message it received is visible again
      assert_rotated(fx, st, rotate(fx, st, { verify_attempts = 3, retry_refused = 0 }))
    end)

    -- junk was given back one call a message after each poll, past the run's wait: 300 messages
    -- at 50 ms a call held the run (and the slot's lock) 20 s for a wait of 5
    it("junk on the queue is given back ten messages a call, not past the run's wait", function()
      local fx = fixtures.seed(s, "spapi")
      for i = 1, 300 do send(fx, "junk " .. i) end
      s:settings { spapi_delivery_delay = 3600 }   -- Amazon's message does not come in this run
      fixtures.control(s, "DELETE", "/counters")
      local st = store("spapi-junk")
      local _, err = rotate(fx, st)
      s:settings { spapi_delivery_delay = 0 }
      assert.equal("timeout", err.kind)
      assert.equal(0, fixtures.counter(s, "AmazonSQS.ChangeMessageVisibility"))
      local batches = fixtures.counter(s, "AmazonSQS.ChangeMessageVisibilityBatch")
      assert.truthy(batches >= 1 and batches <= 30, batches)
    end)
  end)

  describe("a store that cannot write", function()
    it("before the mint: the run fails and nothing is sent", function()
      local fx = fixtures.seed(s, "genesys")
      local real = store("nowrite")
      local st = setmetatable({}, { __index = real })
      function st.put(_, slot, rec)
        if rec.rotation and rec.rotation.mint then
          return nil, require("rotor.errors").new { kind = "store", message = "cannot write slot " .. slot
            .. ": No space left on device" }
        end
        return real:put(slot, rec)
      end
      local before = counter(s, fx.mint_path)
      local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target }
      assert.is_nil(res)
      assert.truthy(err.message:find("nothing was sent", 1, true), err.message)
      assert.truthy(err.message:find("No space left on device", 1, true), err.message)
      assert.equal(before, counter(s, fx.mint_path))
      -- the audit trail has the intent, and then says that the slot's record did not take it
      local outcomes = {}
      for _, e in ipairs(assert(require("rotor.audit").open(real):entries())) do
        if e.slot == fx.slot and e.step == "create" then outcomes[#outcomes + 1] = e.outcome end
      end
      assert.same({ "intent", "intent (not stored: the store write failed)" }, { outcomes[1], outcomes[2] })
    end)

    it("after the mint, briefly: the write is retried while the secret is held, nothing lost", function()
      local fx = fixtures.seed(s, "genesys")
      local real = store("flaky")
      local st = setmetatable({}, { __index = real })
      local fails = 2
      function st.put(_, slot, rec)
        if rec.versions.pending and fails > 0 then
          fails = fails - 1
          return nil, require("rotor.errors").new { kind = "store", message = "transient" }
        end
        return real:put(slot, rec)
      end
      local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st,
                                      target = fx.target, write_retry_delay = 0.05, verify_delay = 0.1 }
      assert.is_nil(err)
      assert.truthy(res)
      assert.equal(0, fails)
      local cur = assert(real:get(fx.slot)).versions.current
      assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
      assert.equal(0, fixtures.lost(s, fx, assert(real:get(fx.slot))))
    end)

    -- the operator presses Ctrl-C on seeing "store write failed; retry 1": a signal ended the
    -- host's sleep it arrived in, so that retry came at once, found the store still failing, and
    -- with no retry left the secret minted was lost
    it("after the mint, with a signal meanwhile: the retries keep their pace, nothing lost #proc", function()
      local fx = fixtures.seed(s, "genesys")
      local _, dir = store("signalled")
      local out, rc = run_host("signalled", { dir = dir, slot = fx.slot, target = fx.target, opts = fx.opts }, [[
local core, json, rotor = require "rotor.core", require "rotor.json", require "rotor"
local cfg = json.decode(io.open(arg[1]):read("a"))
local real = assert(rotor.store.file(cfg.dir))
local st = setmetatable({}, { __index = real })
local until_t
function st.put(_, slot, rec)
  if rec.versions.pending then
    if not until_t then
      until_t = core.now() + 0.8 -- the store fails for 0.8 s after the mint
      os.execute("(sleep 0.2; kill -TERM " .. core.getpid() .. ") &") -- the operator presses Ctrl-C
    end
    if core.now() < until_t then return nil, require("rotor.errors").new { kind = "store", message = "transient" } end
  end
  return real:put(slot, rec)
end
local res, err = rotor.rotate { slot = cfg.slot, provider = assert(rotor.genesys(cfg.opts)), store = st,
                                target = cfg.target, write_retries = 1, write_retry_delay = 1 }
print("RESULT", res and "ok" or err.kind, res and "" or err.message)
]])
      assert.equal(130, rc, out)
      assert.matches("RESULT\tinterrupted\t", out)
      assert.is_nil(out:find("is lost", 1, true), out)
      -- the new secret is on disk, pending, and works; the rerun finishes the rotation with it
      local rec = assert(rotor.store.file(dir):get(fx.slot))
      local p = assert(rec.versions.pending, "no pending secret on disk")
      assert.is_true(fixtures.works(fx, p.client_id, p.secret))
      assert.equal(0, fixtures.lost(s, fx, rec))
      local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = rotor.store.file(dir),
                                      target = fx.target, verify_delay = 0.1 }
      assert.is_nil(err)
      assert.equal(p.client_id, res.client_id)
      assert.equal(p.secret:reveal(), assert(rotor.store.file(dir):get(fx.slot)).versions.current.secret:reveal())
    end)

    -- SP-API: the new secret comes on the SQS queue; a signal during that wait was taken only once
    -- the message came or the wait (300 s by default, up to a day) ran out
    it("SP-API, a signal while the new secret is awaited: stops between two long polls #proc", function()
      local fx = fixtures.seed(s, "spapi")
      fixtures.control(s, "POST", "/settings", { spapi_delivery_delay = 15, sqs_max_wait = 1 })
      finally(function() fixtures.control(s, "POST", "/settings", { spapi_delivery_delay = 0, sqs_max_wait = 20 }) end)
      local _, dir = store("spapi-signalled")
      local out, rc = run_signalled("spapi", "spapi", fx, dir, 1.5, "wait = 120")
      assert.equal(130, rc, out)
      assert.matches("RESULT\tinterrupted\t[^\n]*stopped waiting for the [%u_]+ notification for client [^ ]+ on a "
        .. "signal", out)
      -- stopped inside create, the rotation requested: no secret yet, the next run reads the queue
      local rec = assert(rotor.store.file(dir):get(fx.slot))
      assert.is_nil(rec.versions.pending)
      assert.equal("create", rec.rotation.step)
      assert.equal("requested", rec.rotation.mint.state)
      local last = rec.journal[#rec.journal]
      assert.same({ "create", "interrupted" }, { last.step, last.outcome })
    end)

    -- a 429 with Retry-After: the wait to retry (up to the provider's max_wait, 120 s) went on
    -- whatever signal came, in a batch and in a script alike
    it("a signal during a wait to retry ends the request as interrupted, in a loop and out of one #proc", function()
      local fx = fixtures.seed(s, "genesys")
      fixtures.control(s, "POST", "/faults", { path = "/genesys/login/oauth/token", method = "POST", status = 429,
                                                retry_after = 30, count = 2 })
      finally(function() fixtures.control(s, "DELETE", "/faults") end)
      -- a run each: once the signal came, a token request that has not started is abandoned at once
      for _, where in ipairs { "IN A LOOP", "OUTSIDE" } do
        local out, rc = run_host("retry", { opts = fx.opts, where = where }, [[
local core, json, rotor = require "rotor.core", require "rotor.json", require "rotor"
local cfg = json.decode(io.open(arg[1]):read("a"))
os.execute("(sleep 1; kill -TERM " .. core.getpid() .. ") &")
local function token()
  local tok, err = assert(rotor.genesys(cfg.opts)):token()
  print(cfg.where, tok and "token" or err.kind, tok and "" or err.message)
end
if cfg.where == "IN A LOOP" then rotor.parallel({ 1 }, token) else token() end
]])
        assert.equal(130, rc, out)
        assert.matches(where .. "\tinterrupted\t[^\n]*stopped on a signal while waiting 30 s to retry %(attempt 2%)",
                       out)
      end
    end)

    -- a request in flight went on whatever signal came: a slow provider held the run for the
    -- request's timeout (30 s), SP-API's long poll of its queue for up to 20 s
    it("a signal abandons a read or a token request in flight, in a loop and out of one #proc", function()
      local fx = fixtures.seed(s, "genesys")
      fixtures.control(s, "POST", "/faults", { path = "/genesys/api/v2/tokens/me", method = "GET", delay = 40,
                                                count = 2 })
      fixtures.control(s, "POST", "/faults", { path = "/genesys/login/oauth/token", method = "POST", delay = 40,
                                                count = 1 })
      finally(function() fixtures.control(s, "DELETE", "/faults") end)
      local out, rc = run_host("inflight", { opts = fx.opts }, [[
local core, json, rotor, http = require "rotor.core", require "rotor.json", require "rotor", require "rotor.http"
local cfg = json.decode(io.open(arg[1]):read("a"))
local function get()
  local res, err = http.request({ url = cfg.opts.base_url .. "/api/v2/tokens/me", cainfo = cfg.opts.cainfo },
                                { provider = "genesys", op = "me" })
  return res and tostring(res.status) or err.kind, res and "" or err.message
end
os.execute("(sleep 1; kill -TERM " .. core.getpid() .. ") &")
rotor.parallel({ 1, 2 }, function(i)
  if i == 1 then print("IN A LOOP", get()) return end
  local tok, err = assert(rotor.genesys(cfg.opts)):token()
  print("TOKEN", tok and "token" or err.kind, tok and "" or err.message)
end)
print("OUTSIDE", get())
]])
      assert.equal(130, rc, out)
      local abandoned = "stopped on a signal while the request was in flight %(it was abandoned%)"
      assert.matches("IN A LOOP\tinterrupted\t[^\n]*" .. abandoned, out)
      assert.matches("TOKEN\tinterrupted\t[^\n]*" .. abandoned, out)
      assert.matches("OUTSIDE\tinterrupted\t[^\n]*" .. abandoned, out)
    end)

    it("a mint in flight runs to its end on a signal: the new secret is kept, the run stops after #proc", function()
      local fx = fixtures.seed(s, "genesys")
      fixtures.control(s, "POST", "/faults", { path = fx.mint_path, method = fx.mint_method, delay = 3, count = 1 })
      finally(function() fixtures.control(s, "DELETE", "/faults") end)
      local _, dir = store("mint-signalled")
      local out, rc = run_host("mint", { dir = dir, slot = fx.slot, target = fx.target, opts = fx.opts }, [[
local core, json, rotor = require "rotor.core", require "rotor.json", require "rotor"
local cfg = json.decode(io.open(arg[1]):read("a"))
local p = assert(rotor.genesys(cfg.opts))
assert(p:token())
os.execute("(sleep 1; kill -TERM " .. core.getpid() .. ") &")
local res, err = rotor.rotate { slot = cfg.slot, provider = p, store = assert(rotor.store.file(cfg.dir)),
                                target = cfg.target, verify_delay = 0.1 }
print("RESULT", res and "ok" or err.kind, res and "" or err.message)
]])
      assert.equal(130, rc, out)
      assert.matches("RESULT\tinterrupted\t[^\n]*before step verify", out)
      local rec = assert(rotor.store.file(dir):get(fx.slot))
      local pend = assert(rec.versions.pending, "the minted secret was not kept")
      assert.is_true(fixtures.works(fx, pend.client_id, pend.secret))
      assert.equal(0, fixtures.lost(s, fx, rec))
    end)

    -- verify waited between its attempts (verify_delay, then twice it, ...) whatever signal came,
    -- and once the token requests were abandoned it went on trying after each wait
    it("a signal while the new secret is verified ends the step: it stays pending, verify resumes #proc", function()
      local fx = fixtures.seed(s, "genesys")
      fixtures.control(s, "POST", "/faults", { path = "/genesys/login/oauth/token", method = "POST", status = 401,
                                                issued = true, count = 1 })
      finally(function() fixtures.control(s, "DELETE", "/faults") end)
      local _, dir = store("verify-signalled")
      local out, rc = run_signalled("verify", "genesys", fx, dir, 3, "verify_delay = 20, verify_attempts = 3")
      assert.equal(130, rc, out)
      assert.matches("RESULT\tinterrupted\t[^\n]*verifying the new credential [^ ]+ stopped on a signal %(stopped on "
        .. "a signal while waiting 20 s to try the new secret again %(attempt 2 of 3%)%)", out)
      local rec = assert(rotor.store.file(dir):get(fx.slot))
      local pend = assert(rec.versions.pending)
      assert.equal("verify", rec.rotation.step)
      local last = rec.journal[#rec.journal]
      assert.same({ "verify", "interrupted" }, { last.step, last.outcome })
      -- the next run verifies it (the provider takes it now) and finishes
      local _, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = rotor.store.file(dir),
                                    target = fx.target, verify_delay = 0.1 }
      assert.is_nil(err)
      assert.equal(pend.secret:reveal(), assert(rotor.store.file(dir):get(fx.slot)).versions.current.secret:reveal())
    end)

    -- SP-API's long poll (20 s) in flight when the signal comes: abandoned, not waited out
    it("SP-API, a signal during a long poll of the queue: the poll is abandoned #proc", function()
      local fx = fixtures.seed(s, "spapi")
      fixtures.control(s, "POST", "/settings", { spapi_delivery_delay = 50 })
      finally(function() fixtures.control(s, "POST", "/settings", { spapi_delivery_delay = 0 }) end)
      local _, dir = store("spapi-longpoll")
      local out, rc = run_signalled("spapi-poll", "spapi", fx, dir, 1.5, "wait = 120")
      assert.equal(130, rc, out)
      assert.matches("RESULT\tinterrupted\t[^\n]*stopped waiting for the [%u_]+ notification for client [^ ]+ on a "
        .. "signal", out)
      -- the long poll lasts 20 s: stopping well before that means it was abandoned, not waited out
      local secs = tonumber(out:match("SECONDS ([%d.]+)"))
      assert.is_true(secs ~= nil and secs < 10, out)
      local rec = assert(rotor.store.file(dir):get(fx.slot))
      assert.equal("requested", rec.rotation.mint.state)
      local last = rec.journal[#rec.journal]
      assert.same({ "create", "interrupted" }, { last.step, last.outcome })
    end)

    it("after the mint, for good (Paylocity): the OS reason and the truth about the spent code", function()
      local fx = fixtures.seed(s, "paylocity")
      local st = store("broken")
      local real_put = st.put
      local path = st:path(fx.slot)
      -- once the intent is on disk, the slot's file is replaced by a directory: rename() then fails
      function st.put(self, slot, rec)
        if rec.versions.pending then
          local qp = sim.shell_quote(path)
          os.execute("{ [ -d " .. qp .. " ] || rm -f " .. qp .. "; } && mkdir -p " .. sim.shell_quote(path .. "/x"))
        end
        return real_put(self, slot, rec)
      end
      local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st,
                                      target = fx.target, write_retries = 1, write_retry_delay = 0.01 }
      assert.is_nil(res)
      assert.equal("ambiguous", err.kind)
      assert.truthy(err.message:find("Is a directory", 1, true) or err.message:find("not empty", 1, true),
                    err.message)
      assert.truthy(err.message:find("The emailed code was used", 1, true), err.message)
      assert.is_nil(err.message:find("will mint again", 1, true))
      assert.equal(1, fixtures.lost(s, fx, { versions = {} })) -- Paylocity cannot revoke it: counted, said
    end)
  end)

  it("an unreadable answer to a mint is ambiguous and the rerun sweeps what it created (Genesys new_client)",
     function()
    local fx = fixtures.seed(s, "genesys_new")
    local st = store("malformed-mint")
    fixtures.control(s, "POST", "/faults", { path = "/genesys/api/v2/oauth/clients", method = "POST",
                                              malformed = true })
    local o = { slot = fx.slot, provider = fixtures.provider(fx), store = st, strategy = "new_client",
                target = fx.target, verify_delay = 0.1 }
    local res, err = rotor.rotate(o)
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    o.provider = fixtures.provider(fx)
    res, err = rotor.rotate(o)
    assert.is_nil(err)
    assert.truthy(res.client_id)
    assert.same({}, fixtures.orphans(fx, assert(st:get(fx.slot))))
  end)

  it("a 5xx on a mint is ambiguous: the rerun recovers instead of minting blindly (Spreetail)", function()
    local fx = fixtures.seed(s, "spreetail")
    local st = store("mint-500")
    -- processed, then answered 500: the simulator's status fault does not process, so a reset
    -- stands for the processed case and the 500 for the refused one: both must be ambiguous
    fixtures.control(s, "POST", "/faults", { path = fx.mint_path, method = "POST", status = 500 })
    local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, verify_delay = 0.1 }
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    local rec = assert(st:get(fx.slot))
    assert.equal("ambiguous", rec.rotation.mint.state)
    res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, verify_delay = 0.1 }
    assert.is_nil(err)
    assert.truthy(res.client_id)
    local recovered = false
    for _, e in ipairs(assert(st:get(fx.slot)).journal) do
      if e.outcome == "recover" then recovered = true end
    end
    assert.is_true(recovered)
  end)

  it("a record of the wrong shape is refused before anything is sent, naming the file and the field", function()
    local fx = fixtures.seed(s, "genesys")
    local st = store("bad-record")
    assert(core.fs_write_atomic(st:path(fx.slot), json.encode { slot = fx.slot, provider = "genesys",
      versions = { current = "garbage" }, journal = json.array() }, 384))
    local before = counter(s, fx.mint_path)
    local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target }
    assert.is_nil(res)
    assert.equal("store", err.kind)
    assert.truthy(err.message:find("versions.current", 1, true), err.message)
    assert.truthy(err.message:find(st:path(fx.slot), 1, true), err.message)
    assert.equal(before, counter(s, fx.mint_path))
    assert.truthy(fixtures.works(fx, fx.bootstrap.client_id, fx.bootstrap.secret))
  end)

  it("a Lua error inside a run is journalled, sets last and is notified", function()
    local fx = fixtures.seed(s, "genesys")
    local st = store("lua-error")
    local p = fixtures.provider(fx)
    p.verify = function() error("boom in verify") end
    local events = {}
    local res, err = rotor.rotate { slot = fx.slot, provider = p, store = st, target = fx.target,
                                    notify = function(e) events[#events + 1] = e end }
    assert.is_nil(res)
    assert.equal("internal", err.kind)
    assert.truthy(err.message:find("boom in verify", 1, true))
    local rec = assert(st:get(fx.slot))
    assert.equal("failed", rec.last.outcome)
    assert.equal("verify", rec.last.step)
    assert.equal(1, #events)
    assert.is_false(events[1].ok)
  end)

  it("a hook's error text never carries the secret: journal, audit, notification, error", function()
    local fx = fixtures.seed(s, "genesys")
    local st, dir = store("hook-echo")
    local events, seen = {}, nil
    local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target,
      verify_delay = 0.1, notify = function(e) events[#events + 1] = e end,
      deploy = function(new)
        seen = new.secret:reveal()
        local raw = seen
        local json_form = raw:gsub("/", "\\/")
        local url_form = raw:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)
        return nil, "push failed: " .. raw .. " / " .. json_form .. " / " .. url_form
      end }
    assert.is_nil(res)
    assert.truthy(seen)
    assert_absent(tostring(err), seen, "the error")
    assert_absent(events[1].text, seen, "the notification")
    assert_absent(json.encode(events[1]), seen, "the notification event")
    assert.truthy(tostring(err):find("<redacted>", 1, true))
    -- journal and audit: the slot file holds the pending secret itself, so search the journal
    local rec = assert(st:get(fx.slot))
    assert_absent(json.encode(rec.journal), seen, "the journal")
    assert_absent(read(dir .. "/audit.log"), seen, "the audit trail")
  end)

  it("a torn audit line stays alone: every later entry parses", function()
    local fx = fixtures.seed(s, "genesys")
    local st, dir = store("torn-audit")
    assert(core.fs_write_atomic(dir .. "/audit.log", '{"time":"2026-01-01T00:00:00Z","slot":"x","ste', 384))
    assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target,
                          verify_delay = 0.1 })
    local lines, parsed = 0, 0
    for line in read(dir .. "/audit.log"):gmatch("[^\n]+") do
      lines = lines + 1
      if json.decode(line) then parsed = parsed + 1 end
    end
    assert.equal(lines - 1, parsed) -- all but the torn one
    -- and no entry was lost by being glued to the torn one: one audit line per journal entry
    assert.equal(#assert(st:get(fx.slot)).journal, parsed)
  end)

  it("one credential, one slot: a client another slot holds is refused; nothing minted, its secret lives", function()
    local fx = fixtures.seed(s, "genesys")
    local dir = root .. "/one-slot-runs"
    local o = { slot = fx.slot, provider = fixtures.provider(fx), store = assert(rotor.store.file(dir)),
                target = fx.target, verify_delay = 0.2 }
    assert(rotor.rotate(o))
    local minted = counter(s, fx.mint_path)
    -- another script, its own store object: the same client under another slot name
    local res, err = rotor.rotate { slot = "other/" .. fx.target.client_id, provider = fixtures.provider(fx),
                                    store = assert(rotor.store.file(dir)), target = fx.target, verify_delay = 0.2 }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find(("genesys client %s is also held by slot %s of this store: that slot stored a "
      .. "secret for it (its current credential)"):format(fx.target.client_id, fx.slot), 1, true), err.message)
    assert.equal(minted, counter(s, fx.mint_path))
    local cur = assert(assert(rotor.store.file(dir)):get(fx.slot)).versions.current
    assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
    -- its dry run says so too; the slot itself rotates again
    res, err = rotor.rotate { slot = "other/" .. fx.target.client_id, provider = fixtures.provider(fx), dry_run = true,
                              store = assert(rotor.store.file(dir)), target = fx.target, print = function() end }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    o.provider, o.store = fixtures.provider(fx), assert(rotor.store.file(dir))
    assert(rotor.rotate(o))
    assert.equal(minted + 1, counter(s, fx.mint_path))
  end)

  -- one mint since `minted` for fx's client, and the secret its slot stored in dir works
  local function one_mint_works(fx, dir, minted)
    assert.equal(minted + 1, counter(s, fx.mint_path))
    local cur = assert(assert(rotor.store.file(dir)):get(fx.slot)).versions.current
    assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
  end

  it("one credential, one slot across processes: two new slots for one client at once, one mint", function()
    -- two store objects on one directory stand for two rotor processes (or hosts): neither has
    -- seen the other's slot when both start, so the check of what the store's slots hold cannot
    -- tell; the first new claim of a client holds the store's lock on that client until its slot
    -- records it
    local fx = fixtures.seed(s, "genesys")
    local dir = root .. "/one-slot-race"
    local minted = counter(s, fx.mint_path)
    local slots = { fx.slot, "other/" .. fx.target.client_id }
    local results, errs = rotor.parallel(slots, function(slot)
      return rotor.rotate { slot = slot, provider = fixtures.provider(fx), store = assert(rotor.store.file(dir)),
                            target = fx.target, verify_delay = 0.2 }
    end, { concurrency = 2 })
    assert.truthy(results[1], tostring(errs[1] and errs[1].message))
    assert.is_nil(results[2])
    assert.equal("locked", errs[2].kind)
    assert.truthy(errs[2].message:find(("genesys client %s is being claimed by another rotor"):format(
      fx.target.client_id), 1, true), errs[2].message)
    one_mint_works(fx, dir, minted)
    assert.is_false(assert(rotor.store.file(dir)):get(slots[2]))
    -- once the first slot holds it, the second is refused by the check of what the slots hold
    local res, err = rotor.rotate { slot = slots[2], provider = fixtures.provider(fx), target = fx.target,
                                    store = assert(rotor.store.file(dir)), verify_delay = 0.2 }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.equal(minted + 1, counter(s, fx.mint_path))
  end)

  it("one credential, one slot across processes: the claim holds until the first slot's record is stored", function()
    -- the other rotor comes in at the last moment: during the first slot's first write of its record
    local fx = fixtures.seed(s, "genesys")
    local dir = root .. "/one-slot-window"
    local minted = counter(s, fx.mint_path)
    local other_res, other_err
    local real = assert(rotor.store.file(dir))
    local slow = setmetatable({ put = function(self, slot, rec)
      if not other_err and not other_res then
        other_res, other_err = rotor.rotate { slot = "other/" .. fx.target.client_id, provider = fixtures.provider(fx),
                                              store = assert(rotor.store.file(dir)), target = fx.target }
      end
      return real.put(self, slot, rec)
    end }, { __index = real })
    assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = slow, target = fx.target,
                          verify_delay = 0.2 })
    assert.is_nil(other_res)
    assert.equal("locked", other_err.kind, other_err.message)
    one_mint_works(fx, dir, minted)
  end)

  it("one credential, one slot across processes: a slot written since this rotor last listed the store", function()
    local fx, other = fixtures.seed(s, "genesys"), fixtures.seed(s, "genesys")
    local dir = root .. "/one-slot-stale"
    -- this rotor (its store object) lists the store with a rotation of another client
    local mine = assert(rotor.store.file(dir))
    assert(rotor.rotate { slot = other.slot, provider = fixtures.provider(other), store = mine, target = other.target,
                          verify_delay = 0.2 })
    -- another rotor starts a slot for the client and finishes, within the time this one's listing is kept
    assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = assert(rotor.store.file(dir)),
                          target = fx.target, verify_delay = 0.2 })
    local minted = counter(s, fx.mint_path) - 1
    local res, err = rotor.rotate { slot = "other/" .. fx.target.client_id, provider = fixtures.provider(fx),
                                    store = mine, target = fx.target, verify_delay = 0.2 }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find(("is also held by slot %s"):format(fx.slot), 1, true), err.message)
    one_mint_works(fx, dir, minted)
  end)

  it("empty JSON arrays survive: new_client copies a client whose list fields are empty", function()
    local fx = fixtures.seed(s, "genesys_new")
    local admin = fixtures.provider(fx)
    -- a target with empty list fields
    local tgt = fixtures.control(s, "POST", "/seed", { provider = "genesys", name = "empty lists",
      client_secret = "s-" .. core.random_hex(16), roleDivisions = json.array(),
      registeredRedirectUri = json.array(), scope = json.array() })
    local st = store("arrays")
    local res, err = rotor.rotate { slot = "genesys/empty", provider = admin, store = st, strategy = "new_client",
                                    target = { client_id = tgt.client_id }, verify_delay = 0.1 }
    assert.is_nil(err)
    assert.truthy(res)
    local got = assert(admin:get_oauth_client(res.client_id))
    assert.same({}, got.registeredRedirectUri)
    assert.equal(json.empty_array_mt, getmetatable(got.registeredRedirectUri))
    assert.equal("[]", json.encode(got.scope))
  end)
end)
