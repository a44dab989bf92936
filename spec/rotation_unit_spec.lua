-- Unit specs of the rotation state machine, with small in-memory fake provider objects that keep
-- the contract of doc/INTERNALS.md §5 (the integration and crash specs use the real simulator).
local core = require "rotor.core"
local errors = require "rotor.errors"
local rotation = require "rotor.rotation"
local file_store = require "rotor.store.file"

local function tmpdir() return require("spec.helpers.sim").tmpdir("unit") end

local n = 0
local function mint_value(prefix)
  n = n + 1
  return ("%s-secret-%d-%s"):format(prefix, n, core.random_hex(4))
end

-- The fake keeps credentials { [client_id] = secret string }; faults[op] = list of errors to return
-- (optionally after doing the work: { err=, apply=true }).
local function fake(kind, opts)
  opts = opts or {}
  local p = {
    provider = kind, client_id = opts.client_id or (kind .. "-admin"), calls = {}, faults = {},
    creds = {}, clients = {}, queue = {}, set_calls = 0,
    hidden = {}, -- [client_id] = true: left out of the listings (a listing that lags behind a create)
  }
  p.creds[p.client_id] = opts.secret or "bootstrap-secret"
  p.acting = p.client_id
  local function fault(op)
    local q = p.faults[op]
    if q and #q > 0 then return table.remove(q, 1) end
  end
  local function count(op) p.calls[op] = (p.calls[op] or 0) + 1 end
  function p.set_credentials(self, id, secret) -- luacheck: ignore 212
    assert(core.is_secret(secret) or type(secret) == "string")
    self.acting, self.set_calls = id, self.set_calls + 1
  end
  function p:verify(c)
    count("verify")
    local want = self.creds[c.client_id]
    local got = core.is_secret(c.client_secret) and c.client_secret:reveal() or c.client_secret
    if want and want == got then return true end
    return nil, errors.new { kind = "auth", provider = kind, op = "verify", message = "refused" }
  end
  local function minted(op, id, make)
    count(op)
    local f = fault(op)
    if f and not f.apply then return nil, f.err end
    local s = mint_value(kind)
    p.creds[id] = s
    local r = make(s)
    if f then return nil, f.err end
    return r
  end
  -- genesys
  p.clients[p.client_id] = { id = p.client_id, name = "admin", authorizedGrantType = "CLIENT-CREDENTIALS" }
  function p:add_client(id, name)
    self.clients[id] = { id = id, name = name or id, authorizedGrantType = "CLIENT-CREDENTIALS",
                         roleDivisions = { { roleId = "r1", divisionId = "d1" } } }
    self.creds[id] = "seeded-" .. id
  end
  function p.post_oauth_client_secret(_, id)
    return minted("post_oauth_client_secret", id, function(s) return { id = id, secret = core.secret(s) } end)
  end
  function p:get_oauth_client(id)
    count("get_oauth_client")
    local c = self.clients[id]
    if not c then return nil, errors.new { kind = "http", status = 404, message = "not found" } end
    return c
  end
  function p:get_oauth_clients()
    count("get_oauth_clients")
    local e = {}
    for id, c in pairs(self.clients) do
      if not self.hidden[id] then e[#e + 1] = c end
    end
    return { entities = e, total = #e }
  end
  function p:post_oauth_clients(body)
    local id = "client-" .. core.random_hex(4)
    return minted("post_oauth_clients", id, function(s)
      local c = {}
      for k, v in pairs(body) do c[k] = v end
      c.id = id
      self.clients[id] = c
      return { id = id, name = c.name, secret = core.secret(s) }
    end)
  end
  function p:put_oauth_client(id, body)
    count("put_oauth_client")
    if not self.clients[id] then return nil, errors.new { kind = "http", status = 404, message = "not found" } end
    for k, v in pairs(body) do self.clients[id][k] = v end
    if body.state == "disabled" then self.creds[id] = nil end
    return self.clients[id]
  end
  function p:delete_oauth_client(id)
    count("delete_oauth_client")
    if not self.clients[id] then return nil, errors.new { kind = "http", status = 404, message = "not found" } end
    self.clients[id], self.creds[id] = nil, nil
    return true
  end
  -- spreetail
  p.pairs = { [p.client_id] = { clientId = p.client_id, name = "bootstrap" } }
  function p:create_client_credentials(a)
    local id = "pair-" .. core.random_hex(4)
    return minted("create_client_credentials", id, function(s)
      self.pairs[id] = { clientId = id, name = a.name, expires = a.expires }
      return { clientId = id, credentialId = "c-" .. id, name = a.name, secret = core.secret(s), expires = a.expires }
    end)
  end
  function p:list_client_credentials()
    count("list_client_credentials")
    local out = {}
    for id, c in pairs(self.pairs) do
      if not self.hidden[id] then out[#out + 1] = c end
    end
    return out
  end
  function p:delete_client_credentials(id)
    count("delete_client_credentials")
    if not self.pairs[id] then return nil, errors.new { kind = "http", status = 404, message = "not found" } end
    self.pairs[id], self.creds[id] = nil, nil
    return true
  end
  -- paylocity
  function p:obtain_new_client_secret(a)
    assert(type(a.code) == "string")
    return minted("obtain_new_client_secret", self.client_id, function(s)
      return { { clientSecret = core.secret(s), clientSecretExpirationDate = "2031-01-01T00:00:00Z" } }
    end)
  end
  -- spapi
  function p:rotate_application_client_secret()
    return minted("rotate_application_client_secret", self.client_id, function(s)
      self.queue[#self.queue + 1] = { clientId = self.client_id, newClientSecret = s,
        newClientSecretExpiryTime = "2031-06-01T00:00:00Z", oldClientSecretExpiryTime = "2030-12-08T00:00:00Z" }
      return true
    end)
  end
  function p:receive_new_client_secret(a)
    count("receive_new_client_secret")
    local m
    for _, x in ipairs(self.queue) do
      if not (a and a.skip and a.skip(x)) then m = x; break end
    end
    if not m then return nil, errors.new { kind = "timeout", message = "no message" } end
    local payload = {}
    for k, v in pairs(m) do payload[k] = v end
    payload.newClientSecret = core.secret(m.newClientSecret)
    return payload, function()
      for i, x in ipairs(self.queue) do if x == m then table.remove(self.queue, i) end end
      return true
    end
  end
  return p
end

-- the spapi fake p, with f(p) run after each rotation request it carries out (the queue as it
-- then is, to change)
local function after_rotating(p, f)
  local rotate_secret = p.rotate_application_client_secret
  function p.rotate_application_client_secret(self)
    local ok, err = rotate_secret(self)
    f(self)
    return ok, err
  end
  return p
end

local function ambiguous(op)
  return errors.new { kind = "ambiguous", op = op, message = "sent; no answer came back" }
end

local function reveal(s) return s and s:reveal() end

describe("rotation (unit, fake providers)", function()
  local dir, store
  before_each(function()
    dir = tmpdir()
    store = assert(file_store.new(dir))
  end)

  local function rotate(o)
    o.store = o.store or store
    o.verify_delay = 0
    return rotation.rotate(o)
  end

  -- NaN passed the checks of several numeric options (NaN < 0 is false): a wait, a grace
  -- period or a pacing rate of NaN was taken, and timed nothing as asked
  it("numeric options refuse NaN as they refuse other bad numbers", function()
    local nan = 0 / 0
    local p = fake("genesys")
    p:add_client("app1")
    for k, msg in pairs { wait = "wait: a number of seconds from 0 to 86400 expected",
                          grace = "grace: a number of seconds from 0 to 31622400 expected",
                          visibility = "visibility: a number of seconds from 1 to 43200 expected" } do
      assert.error_matches(function()
        rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" }, [k] = nan }
      end, msg, nil, true)
    end
    assert.is_nil(p.calls.post_oauth_client_secret)
    for _, limits in ipairs { { default = { rate = nan } }, { default = { rate = 1, per = nan } } } do
      local g, err = require("rotor.providers.genesys").new { client_id = "c", client_secret = "not-a-real-secret-6",
        rate_limits = limits }
      assert.is_nil(g)
      assert.matches("rate_limits", err.message, 1, true)
    end
    local problems = require("rotor.store.etcd").check { endpoints = { "https://127.0.0.1:2379" }, key_file = "k",
      timeout = nan }
    assert.matches("timeout: seconds", table.concat(problems, "\n"), 1, true)
    local sp = assert(require("rotor.providers.spapi").new { client_id = "c", client_secret = "not-a-real-secret-7" })
    assert.error_matches(function() sp:receive_new_client_secret { wait = nan } end,
      "wait: a number of seconds from 0 to 86400 expected", nil, true)
  end)

  -- numeric options beyond any sensible bound were taken: verify_attempts = 0 (or 0.5) failed
  -- every rotation as "refused when verified (nil)", wait = 1e9 held the slot's lock for ever,
  -- write_retries = 1e9 retried a failing write for ever, and mint_budget was not checked at all
  it("numeric options refuse values beyond their bounds, naming the bounds, before anything runs", function()
    local p = fake("genesys")
    p:add_client("app1")
    local cases = {
      { "verify_attempts", 0, "verify_attempts: a whole number of attempts from 1 to 100 expected, got 0" },
      { "verify_attempts", 2.5, "verify_attempts: a whole number of attempts from 1 to 100 expected, got 2.5" },
      { "wait", 1e9, "wait: a number of seconds from 0 to 86400 expected, got 1000000000" },
      { "write_retries", 1e9, "write_retries: a whole number of retries from 0 to 1000 expected" },
      { "write_retry_delay", -1, "write_retry_delay: a number of seconds from 0 to 3600 expected, got -1" },
      { "mint_budget", "abc", "mint_budget: a number of seconds from 1 to 86400 expected, got string" },
      { "grace", math.huge, "grace: a number of seconds from 0 to 31622400 expected, got inf" },
    }
    for _, c in ipairs(cases) do
      assert.error_matches(function()
        rotation.rotate { slot = "genesys/app1", provider = p, store = store, target = { client_id = "app1" },
          [c[1]] = c[2] }
      end, "rotate: " .. c[3], nil, true)
    end
    -- verify_delay is checked as given (the spec's rotate() sets it to 0)
    assert.error_matches(function()
      rotation.rotate { slot = "genesys/app1", provider = p, store = store, target = { client_id = "app1" },
        verify_delay = 1e6 }
    end, "verify_delay: a number of seconds from 0 to 3600 expected", nil, true)
    assert.is_nil(p.calls.post_oauth_client_secret)
    assert.is_false(store:get("genesys/app1"))
  end)

  -- the schema took any value in last, in a retiring entry, and a pending
  -- version without a client id or a secret: a rotation then failed in a later step with an
  -- "unexpected error", or called the provider with an empty client id. Such a record is refused
  -- before anything is sent, naming its field.
  it("a record whose fields hold the wrong kind of value is refused, naming the field; nothing is sent", function()
    local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
    local function base()
      return { slot = "genesys/app1", provider = "genesys", versions = {
        current = { client_id = "app1", secret = "not-a-real-secret-8", created = now } }, journal = {} }
    end
    local cases = {
      ["versions.pending.client_id: missing"] = function(r)
        r.versions.pending = { secret = "not-a-real-secret-9", created = now }
        r.rotation = { id = "r1", strategy = "regenerate", step = "verify", started = now }
      end,
      ["versions.pending.secret: missing"] = function(r)
        r.versions.pending = { client_id = "app1", created = now }
        r.rotation = { id = "r1", strategy = "regenerate", step = "deploy", started = now }
      end,
      ["versions.current.client_id: empty"] = function(r) r.versions.current.client_id = "" end,
      ["last.outcome: string expected, found boolean"] = function(r) r.last = { outcome = true, time = now } end,
      ["retiring[1].client_id: missing"] = function(r) r.retiring = { { delete_after = now } } end,
      ["retiring[1].delete_after: string expected, found number"] = function(r)
        r.retiring = { { client_id = "old1", delete_after = 5 } }
      end,
      ["rotation.started: string expected, found number"] = function(r)
        r.rotation = { id = "r1", strategy = "regenerate", step = "create", started = 1 }
      end,
      ["rotation.mint.at: number expected, found string"] = function(r)
        r.rotation = { id = "r1", strategy = "regenerate", step = "create", started = now,
                       mint = { state = "ambiguous", op = "post_oauth_client_secret", at = "soon" } }
      end,
    }
    for field, spoil in pairs(cases) do
      local p = fake("genesys")
      p:add_client("app1")
      local rec = base()
      spoil(rec)
      assert(store:put("genesys/app1", rec))
      local res, err = rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" } }
      assert.is_nil(res, field)
      assert.equal("store", err.kind, field .. ": " .. tostring(err))
      assert.truthy(tostring(err.message):find(field, 1, true), field .. ": " .. tostring(err))
      assert.same({}, p.calls, field)
    end
  end)

  -- rotor.rotate took options and target keys it does not know: stratgy = "new_client" ran the
  -- default strategy (regenerate: the old secret dies at once), target.clientid went unseen
  it("refuses an option or a target key it does not know, naming the closest; nothing is sent", function()
    local p = fake("genesys")
    p:add_client("app1")
    for _, c in ipairs {
      { { stratgy = "new_client" }, "rotate: stratgy: unknown option; did you mean strategy?" },
      { { target = { clientid = "app1" } }, "rotate: target.clientid: unknown target key for genesys; did you mean "
        .. "target.client_id?" },
      { { dryrun = true }, "rotate: dryrun: unknown option; did you mean dry_run?" },
    } do
      local o = { slot = "genesys/app1", provider = p, target = { client_id = "app1" } }
      for k, v in pairs(c[1]) do o[k] = v end
      assert.error_matches(function() rotate(o) end, c[2], nil, true)
    end
    -- a new slot with no client to rotate: kind config, nothing sent, nothing stored
    local res, err = rotate { slot = "genesys/none", provider = p }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.equal("genesys/none: genesys needs target.client_id (the OAuth client to rotate): the slot holds no "
      .. "client yet; nothing was sent", err.message)
    assert.is_false(store:get("genesys/none"))
    -- a directory given as the store: names the call that opens one
    assert.error_matches(function()
      rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" }, store = "./secrets" }
    end, 'a store (get, put, lock) expected, got the string "./secrets": for a directory of secrets, pass '
      .. 'rotor.store.file("./secrets")', nil, true)
    -- a deploy sink given as the store: says which is which
    local sink = require("rotor.store").dotenv(os.tmpname() .. ".env")
    assert.error_matches(function()
      rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" }, store = sink }
    end, "is a deploy sink, not a store: it hands the new secret to its consumers and keeps no record. Set it as "
      .. "a slot's deploy", nil, true)
    assert.same({}, p.calls)
    assert.is_false(store:get("genesys/app1"))
    assert.error_matches(function() rotation.due({ versions = {} }, { max_age = 30 }) end,
      "rotor.due: max_age: unknown rule; did you mean max_age_days?", nil, true)
  end)

  it("genesys regenerate: happy path, journal without secrets, result says the old one died", function()
    local p = fake("genesys")
    p:add_client("app1")
    local res, err = rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" } }
    assert.is_nil(err)
    assert.equal("app1", res.client_id)
    assert.equal(1, p.calls.post_oauth_client_secret)
    local rec = assert(store:get("genesys/app1"))
    assert.equal(p.creds.app1, reveal(rec.versions.current.secret))
    assert.is_nil(rec.versions.pending)
    assert.is_nil(rec.rotation)
    assert.equal("ok", rec.last.outcome)
    local said = false
    for _, s in ipairs(res.steps) do
      if s.note and s.note:find("stopped working at once", 1, true) then said = true end
    end
    assert.is_true(said)
    -- nothing secret in the file except the version secrets; the journal carries none
    local text = assert(core.fs_read(store:path("genesys/app1")))
    local journal_part = text:match('"journal":(%b[])')
    assert.is_nil(journal_part:find(p.creds.app1, 1, true))
    assert.equal(0, p.set_calls) -- not its own credential
  end)

  -- a slot rotated for long carries its store's last 200 journal entries: each rotation decoded
  -- them once and encoded them with each of its three writes (two thirds of its CPU time)
  it("rotates a slot with a long journal without decoding or encoding its old entries", function()
    local p = fake("genesys")
    p:add_client("app1")
    assert(rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" } })
    local rec = assert(store:get("genesys/app1"))
    local old = {}
    for i = 1, 150 do
      old[i] = { step = "create", outcome = "ok", time = "2026-01-01T00:00:00Z", rotation = "r-" .. i,
        note = ("an old entry, number %d, long enough to tell a journal's text from others'"):format(i) }
    end
    rec.journal = old
    assert(store:put("genesys/app1", rec))
    local json = require "rotor.json"
    local big = #json.encode(old)
    local decode, encode, seen = json.decode, json.encode, 0
    json.decode = function(t, ...)
      if type(t) == "string" and #t >= big then seen = seen + 1 end
      return decode(t, ...)
    end
    json.encode = function(v, ...)
      local out = encode(v, ...)
      if #out >= big then seen = seen + 1 end
      return out
    end
    local ok, res, err = pcall(rotate, { slot = "genesys/app1", provider = p, target = { client_id = "app1" } })
    json.decode, json.encode = decode, encode
    assert.is_true(ok, res)
    assert.is_nil(err)
    assert.equal(0, seen)
    -- and the file holds the old entries and the new ones
    local journal = assert(store:get("genesys/app1")).journal
    assert.equal(150 + 8, #journal)
    assert.same(old[150], journal[150])
    assert.equal("done", journal[#journal].outcome)
  end)

  it("resumes after a failed deploy without minting again", function()
    local p = fake("genesys")
    p:add_client("app1")
    local fail = true
    local deployed
    local deploy = function(new)
      if fail then return nil, "consumer unreachable" end
      deployed = new.secret:reveal()
      return true
    end
    local res, err = rotate { slot = "g", provider = p, target = { client_id = "app1" }, deploy = deploy }
    assert.is_nil(res)
    assert.equal("deploy", err.step)
    assert.matches("next run deploys it again", tostring(err))
    local rec = assert(store:get("g"))
    assert.is_table(rec.versions.pending)
    assert.equal("deploy", rec.rotation.step)
    fail = false
    res, err = rotate { slot = "g", provider = p, target = { client_id = "app1" }, deploy = deploy }
    assert.is_nil(err)
    assert.equal(1, p.calls.post_oauth_client_secret)
    assert.equal(p.creds.app1, deployed)
    assert.equal(p.creds.app1, reveal(assert(store:get("g")).versions.current.secret))
    assert.equal("ok", res and "ok")
  end)

  it("genesys regenerate: an ambiguous mint is recovered by regenerating again", function()
    local p = fake("genesys")
    p:add_client("app1")
    p.faults.post_oauth_client_secret = { { err = ambiguous("post_oauth_client_secret"), apply = true } }
    local res, err = rotate { slot = "g", provider = p, target = { client_id = "app1" } }
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    assert.matches("next run regenerates it again", tostring(err))
    local rec = assert(store:get("g"))
    assert.equal("ambiguous", rec.rotation.mint.state)
    local _, err2 = rotate { slot = "g", provider = p, target = { client_id = "app1" } }
    assert.is_nil(err2)
    assert.equal(2, p.calls.post_oauth_client_secret)
    assert.equal(p.creds.app1, reveal(assert(store:get("g")).versions.current.secret))
  end)

  it("a slot lock keeps a second rotor out with kind locked", function()
    local p = fake("genesys")
    p:add_client("app1")
    local lock = assert(store:lock("g"))
    local res, err = rotate { slot = "g", provider = p, target = { client_id = "app1" } }
    assert.is_nil(res)
    assert.equal("locked", err.kind)
    assert.matches("locked by another rotor", tostring(err))
    assert.is_nil(p.calls.post_oauth_client_secret)
    lock:unlock()
    assert.truthy(rotate { slot = "g", provider = p, target = { client_id = "app1" } })
  end)

  it("dry run prints the plan and writes nothing", function()
    local p = fake("genesys")
    p:add_client("app1")
    local lines = {}
    local res = assert(rotate { slot = "g", provider = p, target = { client_id = "app1" }, dry_run = true,
                                print = function(l) lines[#lines + 1] = l end })
    assert.is_true(res.dry_run)
    assert.equal(6, #lines)
    assert.matches("old secret stops working at once", table.concat(lines, "\n"))
    assert.same({}, p.calls)
    assert.same({}, assert(core.fs_list(dir)))
  end)

  it("genesys new_client: copies the client, disables and deletes the old one", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    local res = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" })
    assert.are_not.equal("old1", res.client_id)
    local c = p.clients[res.client_id]
    assert.equal("CLIENT-CREDENTIALS", c.authorizedGrantType)
    assert.same({ { roleId = "r1", divisionId = "d1" } }, c.roleDivisions)
    assert.matches("^Reporting %[rotor r", c.name)
    assert.is_nil(p.clients.old1)
    assert.equal(1, p.calls.put_oauth_client)
    -- a second rotation starts from the stored (new) client id
    local res2 = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" })
    assert.is_nil(p.clients[res.client_id])
    assert.truthy(p.clients[res2.client_id])
    assert.matches("^Reporting %[rotor r", p.clients[res2.client_id].name)
  end)

  it("genesys new_client with a grace period deletes the old client on a later run", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client", grace = 3600 })
    assert.truthy(p.clients.old1)
    assert.equal("disabled", p.clients.old1.state)
    local rec = assert(store:get("g"))
    rec.retiring[1].delete_after = "2000-01-01T00:00:00Z"
    assert(store:put("g", rec))
    assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client", grace = 3600 })
    assert.is_nil(p.clients.old1)
  end)

  -- a scheduled deletion of the client the slot now holds as current (a record rolled back or edited
  -- by hand to the old client) deleted the live credential at the start of the next run: a lockout
  it("genesys new_client never deletes the client the slot holds as current, scheduled or not", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    local res = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client",
                                grace = 3600 })
    local rec = assert(store:get("g"))
    assert.equal("old1", rec.retiring[1].client_id)
    -- the operator rolls back to old1 (enabled again at the provider) and keeps the scheduled deletion
    rec.versions.current = { client_id = "old1", secret = core.secret("seeded-old1"),
                             created = os.date("!%Y-%m-%dT%H:%M:%SZ") }
    rec.retiring[1].delete_after = "2000-01-01T00:00:00Z"
    assert(store:put("g", rec))
    p.clients.old1.state, p.creds.old1 = "active", "seeded-old1"
    local res2 = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client",
                                 grace = 3600 })
    assert.truthy(p.clients.old1, "the current client was deleted")
    assert.is_nil(p.calls.delete_oauth_client)
    assert.are_not.equal(res.client_id, res2.client_id)
    rec = assert(store:get("g"))
    local kept
    for _, e in ipairs(rec.journal) do
      if e.outcome == "kept" then kept = e.note end
    end
    assert.equal("client old1 is the slot's current credential: its scheduled deletion is cancelled", kept)
    -- the rotation retired old1 the usual way: disabled, its deletion scheduled anew after the grace
    assert.equal("disabled", p.clients.old1.state)
    assert.equal(1, #rec.retiring)
    assert.equal("old1", rec.retiring[1].client_id)
    assert.truthy(rec.retiring[1].delete_after > os.date("!%Y-%m-%dT%H:%M:%SZ"))
  end)

  -- a minting answer with an empty client id was stored as the pending version: a record that the
  -- schema (which refuses an empty client_id) then could not read back, the new secret inside it
  it("an answer with no client id is ambiguous: nothing unreadable is stored, the next run recovers", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    local real = p.post_oauth_clients
    p.post_oauth_clients = function(self, body)
      local c, e = real(self, body)
      if c then c.id = "" end
      return c, e
    end
    local res, err = rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" }
    assert.is_nil(res)
    assert.equal("ambiguous", err.kind)
    assert.truthy(err.message:find("holds no secret or client id rotor can read", 1, true), err.message)
    local rec = assert(store:get("g")) -- still a record rotor reads
    assert.is_nil(rec.versions.pending)
    assert.equal("ambiguous", rec.rotation.mint.state)
    p.post_oauth_clients = real
    local res2 = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" })
    local names = {}
    for id in pairs(p.clients) do names[#names + 1] = id end
    assert.equal(2, #names, table.concat(names, ", ")) -- the admin and the new client: the orphan was deleted
    assert.truthy(p.clients[res2.client_id])
  end)

  it("genesys new_client: an ambiguous create leaves an orphan that the next run deletes", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    -- a shared account: another slot's (or store's) client, and one of this slot's lineage the
    -- journal cannot account for
    p:add_client("other", "Billing [rotor r0123456789abcdef]")
    p:add_client("unproven", "Reporting [rotor r0000000000000000]")
    p.faults.post_oauth_clients = { { err = ambiguous("post_oauth_clients"), apply = true } }
    assert.is_nil(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" })
    local count = 0
    for _ in pairs(p.clients) do count = count + 1 end
    assert.equal(5, count) -- admin, old1, other, unproven, the orphan
    local res = assert(rotate { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" })
    local names = {}
    for id, c in pairs(p.clients) do names[#names + 1] = id .. "=" .. tostring(c.name) end
    assert.equal(4, #names, table.concat(names, ", ")) -- admin, the new client and the two left alone
    assert.truthy(p.clients[res.client_id] and p.clients.other and p.clients.unproven)
    local looks = {}
    for _, w in ipairs(res.warnings) do if w:find("looks like rotor's", 1, true) then looks[#looks + 1] = w end end
    assert.equal(1, #looks, table.concat(looks, "\n"))
    assert.matches("client unproven (Reporting [rotor r0000000000000000]) looks like rotor's", looks[1], 1, true)
  end)

  -- the slot's last journal entry with this outcome, and its note
  local function last_entry(rec, outcome)
    local entry
    for _, e in ipairs(rec.journal) do
      if e.outcome == outcome then entry = e end
    end
    return entry
  end
  local function last_note(rec, outcome)
    local e = last_entry(rec, outcome)
    return e and e.note
  end

  -- a Genesys regenerate slot "g" (client app1) whose rotation stopped at deploy, its new secret
  -- pending: p, the rotation's options (the deploy hook taken out)
  local function pending_after_deploy_failed()
    local p = fake("genesys")
    p:add_client("app1")
    local o = { slot = "g", provider = p, target = { client_id = "app1" },
                deploy = function() return nil, "consumers down" end }
    assert.is_nil(rotate(o))
    o.deploy = nil
    return p, o
  end

  -- does one of res's warnings hold text?
  local function warned(res, text)
    for _, w in ipairs(res.warnings) do
      if w:find(text, 1, true) then return true end
    end
    return false
  end

  -- A recovery that lists the provider's credentials and does not find the one the lost create
  -- made (a listing that lags) took it as never created: minted again, finished "ok", and the
  -- first credential stayed live and stored nowhere, with nothing in the record to find it by.
  for _, case in ipairs {
    { kind = "genesys", strategy = "new_client", op = "post_oauth_clients", set = "clients",
      list = "get_oauth_clients", what = "client", seed = function(p) p:add_client("old1", "Reporting") end,
      target = { client_id = "old1" } },
    { kind = "spreetail", strategy = "new_pair", op = "create_client_credentials", set = "pairs",
      list = "list_client_credentials", what = "pair", seed = function() end, target = {} },
  } do
    it(case.kind .. " " .. case.strategy .. ": a credential the recovery's listing did not show is searched for "
       .. "again by later runs, and deleted when found", function()
      local p = fake(case.kind)
      case.seed(p)
      local function ids()
        local out = {}
        for id in pairs(p[case.set]) do out[id] = true end
        return out
      end
      local before = ids()
      p.faults[case.op] = { { err = ambiguous(case.op), apply = true } }
      local o = { slot = "u", provider = p, target = case.target, strategy = case.strategy }
      assert.is_nil(rotate(o))
      local orphan
      for id in pairs(ids()) do if not before[id] then orphan = id end end
      assert.truthy(orphan)
      p.hidden[orphan] = true -- the listing does not show it yet
      local res = assert(rotate(o))
      assert.truthy(p[case.set][orphan]) -- still there: nothing found to delete
      local rec = assert(store:get("u"))
      assert.equal(1, #rec.unfound)
      local u = rec.unfound[1]
      assert.equal(case.strategy, u.strategy)
      assert.equal(case.what, u.what)
      assert.equal(p[case.set][orphan].name, u.name) -- the name the lost create used
      assert.truthy(last_note(rec, "not_found"):find(u.name, 1, true))
      -- the next run, the listing caught up: the first credential is found by that name and deleted;
      -- the stored one (created again by the same rotation, with the same name) is kept
      p.hidden[orphan] = nil
      local res2 = assert(rotate(o))
      assert.is_nil(p[case.set][orphan])
      assert.truthy(p[case.set][res2.client_id])
      assert.is_nil(p[case.set][res.client_id]) -- retired as usual by the second rotation
      rec = assert(store:get("u"))
      assert.is_nil(rec.unfound)
      assert.matches("found and deleted", last_note(rec, "search_ended"), 1, true)
    end)
  end

  -- a Genesys new_client slot "u" whose create was carried out and its answer lost: p, its options
  local function lost_create()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    p.faults.post_oauth_clients = { { err = ambiguous("post_oauth_clients"), apply = true } }
    local o = { slot = "u", provider = p, target = { client_id = "old1" }, strategy = "new_client" }
    assert.is_nil(rotate(o))
    return p, o
  end

  -- the search deleted what this slot does not store, also a client another slot of the store had
  -- taken meanwhile (a person gave the unlisted client to a slot of its own): that slot's lockout
  it("the search leaves alone a client another slot of the store holds", function()
    local p, o = lost_create()
    local orphan
    for id in pairs(p.clients) do if id:find("^client%-") then orphan = id end end
    p.hidden[orphan] = true
    assert(rotate(o))
    p.hidden[orphan] = nil
    -- another slot rotates that client: it holds it now
    assert(rotate { slot = "other", provider = p, target = { client_id = orphan } })
    local res = assert(rotate(o))
    assert.truthy(p.clients[orphan])
    assert.is_true(warned(res, "carries the name this slot's mint used, but another slot of the store holds it"))
    local other = assert(store:get("other")).versions.current
    assert.equal(p.creds[orphan], reveal(other.secret))
  end)

  it("a credential still not listed once the search's window has passed is taken as never created", function()
    local p = fake("spreetail")
    p.faults.create_client_credentials = { { err = ambiguous("create_client_credentials"), apply = true } }
    local o = { slot = "u", provider = p, strategy = "new_pair" }
    assert.is_nil(rotate(o))
    for id in pairs(p.pairs) do p.hidden[id] = true end -- never listed: the bootstrap pair and the lost one
    p.hidden[p.client_id] = nil
    assert(rotate(o))
    local rec = assert(store:get("u"))
    assert.equal(1, #rec.unfound)
    -- a run within the window searches and keeps it; one after the window ends the search
    assert(rotate(o))
    rec = assert(store:get("u"))
    assert.equal(1, #rec.unfound)
    rec.unfound[1].since = require("rotor.timefmt").iso(os.time() - (rotation.UNFOUND_DAYS + 1) * 86400)
    assert(store:put("u", rec))
    local lists = p.calls.list_client_credentials
    assert(rotate(o))
    assert.equal(lists + 1, p.calls.list_client_credentials)
    rec = assert(store:get("u"))
    assert.is_nil(rec.unfound)
    assert.matches("still not listed after " .. rotation.UNFOUND_DAYS .. " days", last_note(rec, "search_ended"), 1,
      true)
  end)

  -- A mint answered 200 whose secret the provider refuses: verify failed on every run, no run would
  -- mint while it was pending, and nothing documented let a person drop it (with a regenerate the
  -- old secret is already dead: a lockout only a hand-edited record ended).
  it("drop_pending: a pending secret the provider refuses is dropped on a person's word, and a new one minted",
     function()
    local p = fake("genesys")
    p:add_client("app1")
    local mint = p.post_oauth_client_secret
    local bad = true
    p.post_oauth_client_secret = function(self, id)
      local r, e = mint(self, id)
      if bad then self.creds[id] = "not-what-was-handed-out" end -- the provider honours another secret
      return r, e
    end
    local o = { slot = "g", provider = p, target = { client_id = "app1" } }
    for _ = 1, 2 do
      local _, err = rotate(o)
      assert.equal("auth", err.kind)
      assert.matches("was refused when verified", err.message, 1, true)
    end
    assert.equal(1, p.calls.post_oauth_client_secret) -- never a second mint while it is pending
    assert.error_matches(function() rotate { slot = "g", provider = p, drop_pending = "yes" } end,
      "drop_pending must be true or false", nil, true)
    bad = false
    o.drop_pending = true
    local res = assert(rotate(o))
    assert.equal(2, p.calls.post_oauth_client_secret)
    local rec = assert(store:get("g"))
    assert.is_nil(rec.rotation)
    assert.equal(p.creds.app1, reveal(rec.versions.current.secret))
    assert.matches("is refused: dropped, and a new one is minted", last_note(rec, "dropped"), 1, true)
    assert.is_false(warned(res, "drop_pending"))
  end)

  -- clearing the mint's record dropped the fingerprint of the code it used: the next mint sent the
  -- used code again, unguarded
  it("drop_pending on Paylocity: the code the dropped mint used is not sent again", function()
    local p = fake("paylocity", { client_id = "pl-1" })
    local mint = p.obtain_new_client_secret
    p.obtain_new_client_secret = function(self, a)
      local r, e = mint(self, a)
      if a.code == "C1" then self.creds[self.client_id] = "not-what-was-handed-out" end
      return r, e
    end
    local o = { slot = "pl", provider = p, target = { code = "C1", old_expires = "2030-01-01" } }
    assert.is_nil(rotate(o))
    o.drop_pending = true
    local _, err = rotate(o)
    assert.equal("config", err.kind)
    assert.matches("this emailed code was used by the mint whose secret was dropped", err.message, 1, true)
    o.drop_pending = nil
    _, err = rotate(o) -- and on the runs after it
    assert.equal("config", err.kind)
    assert.equal(1, p.calls.obtain_new_client_secret)
    o.target = { code = "C2", old_expires = "2030-01-01" }
    assert(rotate(o))
    assert.equal(2, p.calls.obtain_new_client_secret)
  end)

  -- a name recorded twice (a recovery that did not find it, then drop_pending of the client made
  -- again under it) stayed listed for 30 days after the search deleted the credential
  it("a name is kept once for the search, however often it is recorded", function()
    local p, o = lost_create()
    for id in pairs(p.clients) do if id:find("^client%-") then p.hidden[id] = true end end
    local create = p.post_oauth_clients
    p.post_oauth_clients = function(self, body)
      local r, e = create(self, body)
      self.creds[r.id] = "not-what-was-handed-out"
      return r, e
    end
    assert.is_nil(rotate(o)) -- recovered (not found), created again: refused at verify
    p.post_oauth_clients = create
    o.drop_pending = true
    assert(rotate(o))
    assert.equal(1, #assert(store:get("u")).unfound)
  end)

  it("drop_pending keeps a pending secret that works", function()
    local p, o = pending_after_deploy_failed()
    o.drop_pending = true
    local res = assert(rotate(o))
    assert.equal(1, p.calls.post_oauth_client_secret)
    assert.is_true(warned(res, "drop_pending: the pending secret of app1 works: kept"))
  end)

  it("drop_pending on a new client: the refused client is deleted by the slot's next run", function()
    local p = fake("genesys")
    p:add_client("old1", "Reporting")
    p:add_client("other", "Reporting") -- another slot's client of that name, in a shared account
    local create = p.post_oauth_clients
    local first
    p.post_oauth_clients = function(self, body)
      local r, e = create(self, body)
      if not first then
        first = r.id
        self.creds[r.id] = "not-what-was-handed-out"
        r.name = "Reporting" -- and its answer names it as it likes: the search goes by rotor's own name
      end
      return r, e
    end
    local o = { slot = "g", provider = p, target = { client_id = "old1" }, strategy = "new_client" }
    assert.is_nil(rotate(o))
    o.drop_pending = true
    local res = assert(rotate(o))
    assert.are_not.equal(first, res.client_id)
    assert.truthy(p.clients[first]) -- not deleted yet: a run with no rotation in progress searches
    local rec = assert(store:get("g"))
    assert.equal(1, #rec.unfound)
    o.drop_pending = nil
    assert(rotate(o))
    assert.is_nil(p.clients[first])
    assert.truthy(p.clients.other)
    assert.is_nil(assert(store:get("g")).unfound)
  end)

  -- an entry recorded under another strategy was kept for good, neither searched for nor ended,
  -- and doctor kept naming a date gone by (a probe finding)
  it("a name recorded under another strategy is kept for its window, then the search ends", function()
    local p = fake("genesys")
    p:add_client("app1")
    local o = { slot = "g", provider = p, target = { client_id = "app1" } }
    assert(rotate(o))
    local rec = assert(store:get("g"))
    local iso = require("rotor.timefmt").iso
    rec.unfound = { { name = "app1 [rotor r1]", what = "client", strategy = "new_client", rotation = "r1",
                      since = iso(os.time() - 86400) } }
    assert(store:put("g", rec))
    assert(rotate(o))
    assert.equal(1, #assert(store:get("g")).unfound)
    rec = assert(store:get("g"))
    rec.unfound[1].since = iso(os.time() - (rotation.UNFOUND_DAYS + 1) * 86400)
    assert(store:put("g", rec))
    assert(rotate(o))
    rec = assert(store:get("g"))
    assert.is_nil(rec.unfound)
    assert.matches("not searched for: the slot's strategy is regenerate now, not new_client",
      last_note(rec, "search_ended"), 1, true)
    assert.equal("r1", last_entry(rec, "search_ended").rotation) -- journalled with the rotation that recorded the name
  end)

  -- a dry run said nothing of the drop drop_pending makes, nor of the searches
  it("a dry run shows the drop of drop_pending and the searches by name", function()
    local p = pending_after_deploy_failed()
    local lines = {}
    local function plan(extra)
      local t = { slot = "g", provider = p, target = { client_id = "app1" }, dry_run = true,
                  print = function(l) lines[#lines + 1] = l end }
      for k, v in pairs(extra) do t[k] = v end
      lines = {}
      assert(rotate(t))
      return table.concat(lines, "\n")
    end
    local text = plan { drop_pending = true }
    assert.matches("drop_pending: try the pending secret of app1 once more", text, 1, true)
    assert.matches("resume rotation r", text, 1, true)
    assert.matches("at step create", text, 1, true)
    assert(rotate { slot = "g", provider = p, target = { client_id = "app1" } })
    local rec = assert(store:get("g"))
    rec.unfound = { { name = "app1 [rotor r1]", what = "client", strategy = "regenerate", rotation = "r1",
                      since = require("rotor.timefmt").iso() } }
    assert(store:put("g", rec))
    text = plan {}
    assert.matches("search for the client named app1 [rotor r1] (not found by rotation r1)", text, 1, true)
  end)

  it("spreetail: new pair, old pair deleted, provider switched to the new pair", function()
    local p = fake("spreetail", { client_id = "pair-boot" })
    local res = assert(rotate { slot = "spreetail/main", provider = p, target = { expires_days = 30 } })
    assert.are_not.equal("pair-boot", res.client_id)
    assert.is_nil(p.pairs["pair-boot"])
    assert.equal(res.client_id, p.acting)
    assert.matches("^rotor:spreetail/main:r", p.pairs[res.client_id].name)
    local rec = assert(store:get("spreetail/main"))
    assert.equal("pair-boot", rec.versions.previous.client_id)
    assert.is_nil(rec.versions.previous.secret)
  end)

  it("spreetail: an orphaned pair from an ambiguous create is found by name and deleted", function()
    local p = fake("spreetail", { client_id = "pair-boot" })
    -- a shared account: another slot's pair ("s2" starts with "s"), and one of this slot's the
    -- journal cannot account for
    p.pairs["pair-other"] = { clientId = "pair-other", name = "rotor:s2:r0123456789abcdef" }
    p.pairs["pair-unproven"] = { clientId = "pair-unproven", name = "rotor:s:r0000000000000000" }
    p.faults.create_client_credentials = { { err = ambiguous("create_client_credentials"), apply = true } }
    local _, err = rotate { slot = "s", provider = p }
    assert.equal("ambiguous", err.kind)
    assert.matches("deletes it", tostring(err))
    local res = assert(rotate { slot = "s", provider = p })
    local ids = {}
    for id in pairs(p.pairs) do ids[#ids + 1] = id end
    table.sort(ids)
    local want = { res.client_id, "pair-other", "pair-unproven" }
    table.sort(want)
    assert.same(want, ids)
    assert.equal(1, p.calls.list_client_credentials)
    local looks = {}
    for _, w in ipairs(res.warnings) do if w:find("looks like rotor's", 1, true) then looks[#looks + 1] = w end end
    assert.equal(1, #looks, table.concat(looks, "\n"))
    assert.matches("pair pair-unproven (rotor:s:r0000000000000000) looks like rotor's", looks[1], 1, true)
  end)

  it("paylocity: needs target.code; records the old expiry; ambiguous code stops with instructions", function()
    local p = fake("paylocity", { client_id = "pl-1" })
    local _, err = rotate { slot = "pl", provider = p }
    assert.equal("config", err.kind)
    assert.matches("target.code", tostring(err))
    local res = assert(rotate { slot = "pl", provider = p, target = { code = "C1", old_expires = "2030-01-01" } })
    assert.equal("2031-01-01T00:00:00Z", res.expires)
    assert.equal("2030-01-01", res.old_expires)
    -- second rotation: the old expiry is the stored one
    p.faults.obtain_new_client_secret = { { err = ambiguous("obtain_new_client_secret"), apply = true } }
    _, err = rotate { slot = "pl", provider = p, target = { code = "C2" } }
    assert.equal("ambiguous", err.kind)
    _, err = rotate { slot = "pl", provider = p, target = { code = "C2" } }
    assert.equal("ambiguous", err.kind)
    assert.matches("rerun with target.code set to the NEW code", tostring(err))
    assert.equal(2, p.calls.obtain_new_client_secret) -- the same code was not sent again
    res = assert(rotate { slot = "pl", provider = p, target = { code = "C3" } })
    assert.equal("2031-01-01T00:00:00Z", res.old_expires)
    assert.equal(p.creds["pl-1"], reveal(assert(store:get("pl")).versions.current.secret))
  end)

  it("spapi: rotate, read the queue, ack after storing, record the old expiry", function()
    local p = fake("spapi", { client_id = "amzn-1" })
    local res = assert(rotate { slot = "spapi", provider = p, wait = 0 })
    assert.equal("2030-12-08T00:00:00Z", res.old_expires)
    assert.equal(0, #p.queue)
    assert.equal(p.creds["amzn-1"], reveal(assert(store:get("spapi")).versions.current.secret))
  end)

  it("spapi: an ambiguous rotate is recovered by reading the queue, not rotating again", function()
    local p = fake("spapi", { client_id = "amzn-1" })
    p.faults.rotate_application_client_secret = { { err = ambiguous("rotate"), apply = true } }
    local _, err = rotate { slot = "spapi", provider = p, wait = 0 }
    assert.equal("ambiguous", err.kind)
    assert.matches("reads the SQS queue", tostring(err))
    assert(rotate { slot = "spapi", provider = p, wait = 0 })
    assert.equal(1, p.calls.rotate_application_client_secret)
    assert.equal(p.creds["amzn-1"], reveal(assert(store:get("spapi")).versions.current.secret))
  end)

  it("spapi: force_mint after Amazon accepted the request says it does not apply, and sends nothing", function()
    local p = after_rotating(fake("spapi", { client_id = "amzn-1" }), function(self)
      self.held, self.queue = self.queue, {}   -- the message is late
    end)
    local _, err = rotate { slot = "spapi", provider = p, wait = 0 }
    assert.equal("timeout", err.kind)
    _, err = rotate { slot = "spapi", provider = p, wait = 0, force_mint = true }
    assert.matches("force_mint does not apply", tostring(err), 1, true)
    assert.equal(1, p.calls.rotate_application_client_secret)
    p.queue = p.held
    assert(rotate { slot = "spapi", provider = p, wait = 0 })
    assert.equal(p.creds["amzn-1"], reveal(assert(store:get("spapi")).versions.current.secret))
  end)

  it("spapi: messages the provider refuses do not hold a run past its wait; the next run reads on", function()
    -- a queue someone filled with forgeries: each is verified, refused and passed over
    local p = fake("spapi", { client_id = "amzn-1" })
    for i = 1, 50 do
      p.queue[i] = { clientId = "amzn-1", newClientSecret = "forged-" .. i,
                     newClientSecretExpiryTime = "2031-06-01T00:00:00Z" }
    end
    local forged = {}
    local verify = p.verify
    function p.verify(self, c)
      local s = core.is_secret(c.client_secret) and c.client_secret:reveal() or c.client_secret
      if s:match("^forged%-") then forged[s] = (forged[s] or 0) + 1 end
      return verify(self, c)
    end
    local _, err = rotate { slot = "spapi", provider = p, wait = 0 }
    assert.equal("timeout", err.kind)
    assert.matches("no new%-secret message for client amzn%-1 that the provider accepts within 0 s", tostring(err))
    local tries = forged["forged-1"]   -- verify_attempts
    assert.same({ ["forged-1"] = tries }, forged)
    assert.equal(51, #p.queue)   -- nothing acknowledged: the forgeries and Amazon's message stay
    -- the next run, with time to read, passes over the rest once each and takes Amazon's message
    assert(rotate { slot = "spapi", provider = p, wait = 5 })
    for i = 1, 50 do assert.equal(tries, forged["forged-" .. i], "forged-" .. i) end
    assert.equal(1, p.calls.rotate_application_client_secret)
    assert.equal(p.creds["amzn-1"], reveal(assert(store:get("spapi")).versions.current.secret))
    assert.equal(50, #p.queue)
  end)

  -- a provider's expiry was kept and printed as it came: an escape sequence in it reached the
  -- journal, the log hook and status
  it("spapi: an expiry that is no time is not kept, and no journal note carries a control byte", function()
    local p = after_rotating(fake("spapi", { client_id = "amzn-1" }), function(self)
      for _, m in ipairs(self.queue) do
        m.newClientSecretExpiryTime, m.oldClientSecretExpiryTime = "2031-06-01T00:00:00Z\27[2J", "soon\n"
      end
    end)
    local lines = {}
    local res = assert(rotate { slot = "spapi", provider = p, wait = 0, log = function(l) lines[#lines + 1] = l end })
    local rec = assert(store:get("spapi"))
    assert.is_nil(rec.versions.current.expires)
    assert.is_nil(rec.versions.previous.expires)
    local found
    for _, w in ipairs(res.warnings) do if w:find("an expiry that is no time", 1, true) then found = w end end
    assert.truthy(found, table.concat(res.warnings, "\n"))
    assert.is_nil(found:find("%c"), found)
    for _, e in ipairs(rec.journal) do assert.is_nil(tostring(e.note):find("%c"), tostring(e.note)) end
    for _, l in ipairs(lines) do assert.is_nil(l:find("%c"), l) end
  end)

  it("audit trail: a line per step, fingerprints, never the secret, mode 0600", function()
    local p = fake("genesys")
    p:add_client("app1")
    assert(rotate { slot = "g", provider = p, target = { client_id = "app1" } })
    local text = assert(core.fs_read(dir .. "/audit.log"))
    assert.is_nil(text:find(p.creds.app1, 1, true))
    local fp = core.hmac_sha256_hex(store:audit_key(), p.creds.app1)
    assert.truthy(text:find(fp, 1, true))
    local _, _, mode = core.fs_exists(dir .. "/audit.log")
    assert.equal(384, mode)
  end)

  -- a notify table with a timeout given as text was taken: the rotation ran, and the error raised
  -- when the notification was built was reported in place of its outcome
  it("checks notify before anything is sent", function()
    local p = fake("genesys")
    p:add_client("app1")
    assert.error_matches(function()
      rotate { slot = "g", provider = p, target = { client_id = "app1" },
               notify = { webhook = "https://127.0.0.1:9/hook", timeout = "15" } }
    end, "notify.timeout: a number of seconds above 0, at most 86400 expected", nil, true)
    assert.same({}, p.calls)
    assert.is_false(store:get("g"))
  end)

  it("notifies on success and on failure, never with the secret", function()
    local p = fake("genesys")
    p:add_client("app1")
    local events = {}
    local hook = function(e) events[#events + 1] = e return true end
    assert(rotate { slot = "g", provider = p, target = { client_id = "app1" }, notify = hook })
    p.faults.post_oauth_client_secret = { { err = errors.new { kind = "http", status = 500, message = "boom" } } }
    assert.is_nil(rotate { slot = "g", provider = p, target = { client_id = "app1" }, notify = hook })
    assert.equal(2, #events)
    assert.is_true(events[1].ok)
    assert.is_false(events[2].ok)
    assert.matches("FAILED at create", events[2].text)
    assert.is_nil(events[1].text:find(p.creds.app1, 1, true))
  end)

  it("a definite mint failure lets the next run mint anew", function()
    local p = fake("spreetail", { client_id = "pair-boot" })
    p.faults.create_client_credentials = { { err = errors.new { kind = "http", status = 500, message = "x" } } }
    assert.is_nil(rotate { slot = "s", provider = p })
    assert(rotate { slot = "s", provider = p })
    assert.is_nil(p.calls.list_client_credentials) -- no recovery needed
  end)


  it("a slot file with an invalid record: get and rotate refuse, name the field and the file, send nothing", function()
    local p = fake("genesys")
    p:add_client("app1")
    assert(rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" } })
    local path = store:path("genesys/app1")
    local text = assert(core.fs_read(path))
    local broken = text:gsub('"journal":%[', '"journal":["not an entry",', 1)
    assert.not_equal(text, broken)
    assert(core.fs_write_atomic(path, broken, 384))
    local rec, gerr = store:get("genesys/app1")
    assert.is_nil(rec)
    assert.matches("journal%[1%]: an object expected, found string", gerr.message)
    assert.truthy(gerr.message:find(path, 1, true))
    local res, err = rotate { slot = "genesys/app1", provider = p, target = { client_id = "app1" } }
    assert.is_nil(res)
    assert.matches("journal%[1%]: an object expected", err.message)
    assert.equal(1, p.calls.post_oauth_client_secret) -- only the first rotation's
    assert.equal(broken, core.fs_read(path))
  end)

  it("a store of one's own that hands back an invalid record: rotate refuses before sending", function()
    local p = fake("genesys")
    p:add_client("app1")
    local puts = 0
    local own = {
      get = function(_, slot)
        return { slot = slot, provider = "genesys", versions = { current = "x" }, journal = {} }
      end,
      put = function() puts = puts + 1 return true end,
      lock = function(_, slot) return store:lock(slot) end,
    }
    local res, err = rotate { slot = "genesys/app1", provider = p, store = own, target = { client_id = "app1" },
      audit = false }
    assert.is_nil(res)
    assert.matches("holds no valid record: versions.current: an object expected", err.message)
    assert.is_nil(p.calls.post_oauth_client_secret)
    assert.equal(0, puts)
  end)
  it("rotor.due from stored creation time and expiry", function()
    local rec = { versions = { current = { secret = "x", created = "2000-01-01T00:00:00Z",
                                            expires = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 5 * 86400) } } }
    assert.is_true((rotation.due(rec, { before_expiry_days = 10 })))
    assert.is_false((rotation.due(rec, { before_expiry_days = 2 })))
    assert.is_true((rotation.due(rec, { max_age_days = 30, before_expiry_days = 2 })))
    rec.versions.current.created = os.date("!%Y-%m-%dT%H:%M:%SZ")
    assert.is_false((rotation.due(rec, { max_age_days = 30, before_expiry_days = 2 })))
    assert.is_true((rotation.due("nope", nil, store)))
  end)
end)

describe("one credential, one slot: the store's index of what its slots hold", function()
  local record = require "rotor.record"
  local sched = require "rotor.sched"

  -- a store whose listing and reads wait, as an etcd store's do (over the network)
  local function slow_store(records)
    local st = {}
    function st.list()
      sched.sleep(0.02)
      local names = {}
      for name in pairs(records) do names[#names + 1] = name end
      table.sort(names)
      return names
    end
    function st.get(_, slot)
      local rec = records[slot] or false -- as it was when the read began
      sched.sleep(0.02)
      return rec
    end
    return st
  end
  local function holding(id) return { provider = "genesys", versions = { current = { client_id = id,
    secret = core.secret("s-" .. id) } } } end

  -- slot b's rotation (it claims client y, its record is written, the claim released and the
  -- record noted) beside a second listing begun 5 ms in, before b was written: the first listing,
  -- begun by b's claim, is still reading, so the second finds the index stale and lists again
  local Y = record.client_key("genesys", "y")
  local function race(st, records)
    local out = {}
    sched.parallel({ 1, 2 }, function(i)
      if i == 1 then
        assert(record.claim_client(st, Y, "b"))
        records.b = holding("y")
        record.release_client(st, Y, "b", records.b)
      else
        sched.sleep(0.005)
        out.err = select(2, record.claim_client(st, record.client_key("genesys", "z"), "c"))
      end
    end, { concurrency = 2 })
    assert.is_nil(out.err)
    -- b holds y: another slot is refused, though no listing that saw b written has run since
    local ok, err = record.claim_client(st, Y, "d")
    assert.is_nil(ok)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find("is also held by slot b of this store", 1, true), err.message)
  end

  it("keeps what a rotation noted while a listing that began before it was under way", function()
    -- b is new: the second listing does not list it
    local records = { a = holding("x") }
    local st = slow_store(records)
    race(st, records)
    -- and the client slot a held when first read is still refused
    assert.is_nil((record.claim_client(st, record.client_key("genesys", "x"), "e")))
  end)

  it("keeps what a rotation noted over what a listing that began before it read meanwhile", function()
    -- b holds nothing yet: the second listing reads it as it was before b's rotation wrote it
    local records = { a = holding("x"), b = { provider = "genesys" } }
    race(slow_store(records), records)
  end)
end)
