-- rotor's command line run from cron, as a user would (issue 12, findings 1-9): config runs that
-- cannot go wrong quietly, the due policy, stable JSON, signals in batches, doctor, OpenMetrics,
-- and the conventions of the command line. Real rotor processes against the simulator.
local core = require "rotor.core"
local json = require "rotor.json"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local ROTOR_ABS = ROTOR:sub(1, 1) == "/" and ROTOR or (os.getenv("PWD") .. "/" .. ROTOR)
local q = sim.shell_quote

-- a Lua literal of v; { env = "NAME" } becomes os.getenv("NAME")
local function lit(v, indent)
  indent = indent or ""
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "table" then return tostring(v) end
  if v.env then return ("os.getenv(%q)"):format(v.env) end
  if v.raw then return v.raw end
  local parts = {}
  for _, x in ipairs(v) do parts[#parts + 1] = indent .. "  " .. lit(x, indent .. "  ") end
  local keys = {}
  for k in pairs(v) do if type(k) == "string" then keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = indent .. "  " .. k .. " = " .. lit(v[k], indent .. "  ") end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local n = 0
local function workdir()
  n = n + 1
  return nil, n
end

describe("rotor's command line #proc", function()
  local s, base
  setup(function()
    s = sim.start()
    base = s.dir .. "/cli-spec"
    assert(core.fs_mkdir(base, 448))
  end)
  teardown(function() if s then s:stop() end end)

  local function newdir()
    local _, i = workdir()
    local d = base .. "/" .. i
    assert(core.fs_mkdir(d, 448))
    return d
  end


  -- a spreetail slot entry whose credentials come from the environment (T<i>_ID, T<i>_SECRET)
  local function spreetail_slot(env, i, extra)
    local fx = fixtures.seed(s, "spreetail")
    env["T" .. i .. "_ID"], env["T" .. i .. "_SECRET"] = fx.opts.client_id, fx.opts.client_secret
    local e = { slot = fx.slot, consumers = "none",
      provider = { kind = "spreetail", options = { base_url = fx.opts.base_url, token_url = fx.opts.token_url,
        cainfo = s.ca, client_id = { env = "T" .. i .. "_ID" }, client_secret = { env = "T" .. i .. "_SECRET" } } } }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e, fx
  end

  local function genesys_slot(env, i, extra)
    local fx = fixtures.seed(s, "genesys")
    env["G" .. i .. "_ID"], env["G" .. i .. "_SECRET"] = fx.opts.client_id, fx.opts.client_secret
    local e = { slot = fx.slot,
      provider = { kind = "genesys", options = { base_url = fx.opts.base_url, token_url = fx.opts.token_url,
        cainfo = s.ca, client_id = { env = "G" .. i .. "_ID" }, client_secret = { env = "G" .. i .. "_SECRET" } } },
      target = { client_id = fx.target.client_id } }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e, fx
  end

  local function write_config(path, cfg, env)
    assert(core.fs_write_atomic(path, "return " .. lit(cfg) .. "\n", 384))
    fixtures.write_env(path .. ".env", env or {})
  end

  -- run rotor with the config's environment, from directory `from` (default: the spec's cwd)
  local function rotor(args, cfg_path, from, extra_env)
    local pre = cfg_path and (". " .. q(cfg_path .. ".env") .. " && ") or ""
    for k, v in pairs(extra_env or {}) do pre = pre .. k .. "=" .. q(v) .. " " end
    local cd = from and ("cd " .. q(from) .. " && ") or ""
    return sim.run(("(%s%s%s %s) 2>&1"):format(cd, pre, from and ROTOR_ABS or ROTOR, args))
  end

  local function rotor_out(args, cfg_path)
    local pre = cfg_path and (". " .. q(cfg_path .. ".env") .. " && ") or ""
    return sim.run(("(%s%s %s) 2>/dev/null"):format(pre, ROTOR, args))
  end

  local function counter(path)
    local c = fixtures.control(s, "GET", "/counters")
    return (c.counters or c)[path] or 0
  end

  local function file_store(dir) return assert(require("rotor").store.file(dir)) end

  -- a new directory whose file store (DIR/secrets) holds one healthy Genesys slot: dir, store, now
  local function store_with_slot(slot)
    local d = newdir()
    local st = file_store(d .. "/secrets")
    local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
    assert(st:put(slot, { slot = slot, provider = "genesys", journal = {},
      versions = { current = { client_id = "c1", secret = "not-a-real-secret-10", created = now } } }))
    return d, st, now
  end

  describe("finding 1: relative paths and the store used", function()
    -- a new directory holding conf/ (for the config file) and another directory: its path
    local function conf_and(other)
      local d = newdir()
      assert(core.fs_mkdir(d .. "/conf", 448))
      assert(core.fs_mkdir(d .. "/" .. other, 448))
      return d
    end

    it("resolves a relative store against the config file, from any directory, and names it", function()
      local d = conf_and("elsewhere")
      local env = {}
      local e = spreetail_slot(env, 1)
      write_config(d .. "/conf/rotor.conf.lua", { store = "./secrets", slots = { e } }, env)
      local out, rc = rotor("rotate --config " .. q(d .. "/conf/rotor.conf.lua"), d .. "/conf/rotor.conf.lua",
        d .. "/elsewhere")
      assert.equal(0, rc, out)
      assert.truthy(out:find("store: file store " .. d .. "/conf/secrets", 1, true), out)
      assert.is_false(core.fs_exists(d .. "/elsewhere/secrets"))
      local rec = assert(file_store(d .. "/conf/secrets"):get(e.slot))
      assert.equal("ok", rec.last.outcome)
      -- status, due and doctor take the config's store too
      out, rc = rotor("status --config " .. q(d .. "/conf/rotor.conf.lua"), nil, d .. "/elsewhere")
      assert.equal(0, rc, out)
      assert.truthy(out:find("store: file store " .. d .. "/conf/secrets", 1, true), out)
      assert.truthy(out:find(e.slot .. " ", 1, true), out)
      out, rc = rotor("doctor --config " .. q(d .. "/conf/rotor.conf.lua"), nil, d .. "/elsewhere")
      assert.equal(0, rc, out)
    end)

    it("takes a relative config path from the directory it runs in, not from a stale PWD", function()
      -- a program that starts rotor in another directory (Python's subprocess cwd=, Ansible's
      -- chdir) leaves its own PWD in the environment: the config file is opened from the real
      -- directory, so its relative paths must be that directory's too, never PWD's
      local d = conf_and("stale")
      local env = {}
      local e = genesys_slot(env, 1)
      e.deploy = { kind = "dotenv", path = "app.env" }
      write_config(d .. "/conf/rotor.conf.lua", { store = "secrets", slots = { e } }, env)
      local stale = { PWD = d .. "/stale" }
      local out, rc = rotor("rotate --config rotor.conf.lua", d .. "/conf/rotor.conf.lua", d .. "/conf", stale)
      assert.equal(0, rc, out)
      assert.truthy(out:find("store: file store " .. d .. "/conf/secrets", 1, true), out)
      assert.same({}, core.fs_list(d .. "/stale"))
      assert.equal("ok", assert(file_store(d .. "/conf/secrets"):get(e.slot)).last.outcome)
      assert.truthy(core.fs_exists(d .. "/conf/app.env"))
      out, rc = rotor("status --config rotor.conf.lua", nil, d .. "/conf", stale)
      assert.equal(0, rc, out)
      assert.truthy(out:find(e.slot .. " ", 1, true), out)
      -- a PWD that does name the directory (through a symbolic link) is the path shown
      assert(os.execute("ln -s " .. q(d .. "/conf") .. " " .. q(d .. "/link")))
      out, rc = rotor("status --config rotor.conf.lua", nil, d .. "/link", { PWD = d .. "/link" })
      assert.equal(0, rc, out)
      assert.truthy(out:find("store: file store " .. d .. "/link/secrets", 1, true), out)
    end)

    it("refuses a path that starts with ~ (only a shell expands it), creating nothing", function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1)
      e.deploy = { kind = "dotenv", path = "~/app.env" }
      local conf = d .. "/rotor.conf.lua"
      write_config(conf, { store = "~/rotor-secrets", audit = "~/audit.log", slots = { e } }, env)
      local out, rc = rotor("rotate --config " .. q(conf), conf, d)
      assert.equal(2, rc, out)
      for _, want in ipairs {
        "store: ~/rotor-secrets starts with ~, which only a shell expands (rotor would take \"~\" for a directory's "
          .. "name). Write the path in full (in Lua: os.getenv(\"HOME\") .. \"/rotor-secrets\")",
        "audit: ~/audit.log starts with ~", "deploy: ~/app.env starts with ~", "nothing was run",
      } do
        assert.truthy(out:find(want, 1, true), want .. "\n" .. out)
      end
      for _, cmd in ipairs { "status", "due", "doctor" } do
        out, rc = rotor(cmd .. " --config " .. q(conf), conf, d)
        assert.equal(2, rc, cmd .. ": " .. out)
        assert.truthy(out:find("store: ~/rotor-secrets starts with ~", 1, true), out)
      end
      -- nothing made, where the config is or where rotor ran
      assert.is_false(core.fs_exists(d .. "/~"))
      assert.equal(0, counter("/genesys/api/v2/oauth/clients/" .. e.target.client_id .. "/secret"))
      -- in a script, the file store refuses it too (and the dotenv sink, and the audit trail)
      for _, make in ipairs {
        function() return require("rotor").store.file("~/rotor-secrets") end,
        function() return require("rotor").store.dotenv("~/app.env") end,
        function() return require("rotor.audit").open { path = "~/audit.log" } end,
        -- paths it only reads too
        function()
          return assert(require("rotor").genesys { client_id = "x", client_secret = "y", cainfo = "~/ca.pem" })
        end,
        function() return assert(require("rotor").store.file(d .. "/sealed", { key_file = "~/seal.key" })) end,
        function() return assert(require("rotor").store.file(d .. "/t", { trusted = { d, "~/shared" } })) end,
        function()
          sim.run("head -c 32 /dev/urandom > " .. q(d .. "/k") .. " && chmod 600 " .. q(d .. "/k"))
          return assert(require("rotor").store.etcd { endpoints = { "https://127.0.0.1:9" }, audit_file = "~/audit.log",
            key_file = d .. "/k" })
        end,
      } do
        local ok, err = pcall(make)
        assert.is_false(ok)
        assert.truthy(tostring(err):find("starts with ~, which only a shell expands", 1, true), tostring(err))
      end
      assert.is_false(core.fs_exists("~"))
      -- and a shell variable, anywhere in the path
      write_config(conf, { store = "secrets", audit = "${HOME}/audit.log", slots = { e } }, env)
      out, rc = rotor("rotate --config " .. q(conf), conf, d)
      assert.equal(2, rc, out)
      assert.truthy(out:find("audit: ${HOME}/audit.log holds $HOME, which only a shell expands (rotor would take it "
        .. "for part of a name). Write the path in full (in Lua: os.getenv(\"HOME\") .. \"/audit.log\")", 1, true), out)
      local ok, err = pcall(require("rotor").store.file, d .. "/$ENV/secrets")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("holds $ENV, which only a shell expands", 1, true), tostring(err))
      assert.is_false(core.fs_exists(d .. "/$ENV"))
      assert.is_false(core.fs_exists(d .. "/${HOME}"))
    end)
  end)

  describe("finding 2: the config is checked as a whole before anything runs", function()
    it("lists every problem with file, slot and key, exits 2, and creates and sends nothing", function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1, { stratgy = "new_client", deploy = { raw = "function() return true end" } })
      e.target.clientid = "x"
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", concurency = 2, due = { max_age = 3 }, slots = { e } }, env)
      local before = counter("/genesys/login/oauth/token")
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(2, rc, out)
      assert.truthy(out:find(cfg .. ": slot " .. e.slot .. ": stratgy: unknown key; did you mean strategy?", 1, true),
        out)
      assert.truthy(out:find(cfg .. ": slot " .. e.slot .. ": target.clientid: unknown target key for genesys; " ..
        "did you mean target.client_id?", 1, true), out)
      assert.truthy(out:find(cfg .. ": concurency: unknown key; did you mean concurrency?", 1, true), out)
      assert.truthy(out:find(cfg .. ": due.max_age: unknown key; did you mean due.max_age_days?", 1, true), out)
      assert.truthy(out:find("nothing was run", 1, true), out)
      assert.is_false(core.fs_exists(d .. "/secrets"))
      assert.equal(before, counter("/genesys/login/oauth/token"))
    end)

    it("rejects wrong types, unknown kinds and strategies, and unset variables, with exit 2", function()
      local d = newdir()
      local env = {}
      local e1 = spreetail_slot(env, 1, { wait = "soon", strategy = "new_pairs" })
      local e2 = spreetail_slot(env, 2)
      e2.provider.kind = "spreetial"
      e2.provider.options.client_secret = { env = "ROTOR_SPEC_SURELY_UNSET" }
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e1, e2 } }, env)
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(2, rc, out)
      assert.truthy(out:find("slot " .. e1.slot .. ": wait: a number of seconds from 0 to 86400 expected, got string",
        1, true), out)
      assert.truthy(out:find("slot " .. e1.slot .. ": strategy: unknown strategy new_pairs for spreetail; did you " ..
        "mean new_pair?", 1, true), out)
      assert.truthy(out:find("slot " .. e2.slot .. ": provider.kind: unknown provider kind spreetial; did you " ..
        "mean spreetail?", 1, true), out)
      assert.truthy(out:find("ROTOR_SPEC_SURELY_UNSET is not set", 1, true), out)
      assert.is_false(core.fs_exists(d .. "/secrets"))
    end)
  end)

  describe("a config that does not load", function()
    it("names the file and line, and exits 2", function()
      local d = newdir()
      local cfg = d .. "/rotor.conf.lua"
      assert(core.fs_write_atomic(cfg, "return { store = './s', slots = {\n", 384))
      local out, rc = rotor("rotate --config " .. q(cfg))
      assert.equal(2, rc, out)
      assert.truthy(out:find("rotor rotate: " .. cfg .. ":2: ", 1, true), out)
      assert.is_false(core.fs_exists(d .. "/s"))
    end)
  end)

  describe("a mistyped target", function()
    it("a first rotation that fails at create, nothing minted, leaves the config's target free to fix", function()
      for _, strategy in ipairs { "regenerate", "new_client" } do
        local d = newdir()
        local env = {}
        local e, fx = genesys_slot(env, 1, { strategy = strategy, consumers = "none" })
        local real = fx.target.client_id
        e.target = { client_id = "00000000-typo" }
        local cfg = d .. "/rotor.conf.lua"
        write_config(cfg, { store = "./secrets", slots = { e } }, env)
        local out, rc = rotor("rotate --config " .. q(cfg), cfg, d)
        assert.equal(1, rc, out)
        assert.truthy(out:find("00000000-typo", 1, true), out)
        assert.truthy(out:find("check target.client_id", 1, true), out)
        -- the record keeps the failure, and no client: the corrected config is the one taken
        local rec = assert(file_store(d .. "/secrets"):get(e.slot))
        assert.equal("failed", rec.last.outcome)
        assert.is_nil(rec.rotation)
        assert.is_nil(rec.versions.current)
        e.target = { client_id = real }
        write_config(cfg, { store = "./secrets", slots = { e } }, env)
        out, rc = rotor("rotate --config " .. q(cfg), cfg, d)
        assert.equal(0, rc, strategy .. "\n" .. out)
        assert.is_nil(out:find("00000000-typo", 1, true), out)
        rec = assert(file_store(d .. "/secrets"):get(e.slot))
        assert.equal("ok", rec.last.outcome)
        assert.equal("previous", rec.versions.previous and "previous")
        assert.equal(real, rec.versions.previous.client_id)
      end
    end)
  end)

  describe("finding 3: a due policy for every slot", function()
    it("makes an old Genesys secret (no provider expiry) due by max_age_days, and says when next", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      local old = os.time() - 2527 * 86400
      assert(st:put("genesys/old", { slot = "genesys/old", provider = "genesys", journal = {},
        versions = { current = { client_id = "c-old", secret = "not-a-real-secret-1",
                                 created = os.date("!%Y-%m-%dT%H:%M:%SZ", old) } } }))
      assert(st:put("genesys/new", { slot = "genesys/new", provider = "genesys", journal = {},
        versions = { current = { client_id = "c-new", secret = "not-a-real-secret-2",
                                 created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
      local out, rc = rotor("status " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      assert.truthy(out:find("genesys/old%s+genesys%s+2527d%s+%-%s+yes: 2527%.%d days old %(max_age_days = 90%)"), out)
      local in90 = os.date("!%Y-%m-%d", os.time() + 90 * 86400)
      assert.truthy(out:find("no, next " .. in90 .. " (max_age_days)", 1, true), out)
      out, rc = rotor("due " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      assert.truthy(out:find("genesys/old\t2527", 1, true), out)
      assert.is_nil(out:find("genesys/new", 1, true), out)
      out = rotor_out("status " .. q(d .. "/secrets") .. " --max-age-days 10000 --json")
      local doc = assert(json.decode(out))
      for _, r in ipairs(doc.slots) do assert.is_false(r.due, r.slot) end
    end)
  end)

  describe("status", function()
    it("LAST says the last finished rotation, then the one since, in that order", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      local t = os.date("!%Y-%m-%dT%H:%M:%SZ")
      local function slot(name, last, rotation, journal)
        assert(st:put(name, { slot = name, provider = "genesys", journal = journal or {}, last = last,
          rotation = rotation, versions = { current = { client_id = "c-" .. name:sub(-1),
            secret = "not-a-real-secret-9", created = t } } }))
      end
      local stopped = { { step = "deploy", outcome = "interrupted", rotation = "r2", time = t } }
      slot("genesys/a", { rotation = "r1", outcome = "ok", time = t },
           { id = "r2", strategy = "regenerate", step = "deploy", started = t }, stopped)
      slot("genesys/b", nil, { id = "r1", strategy = "regenerate", step = "verify", started = t })
      slot("genesys/c", { rotation = "r1", outcome = "failed", step = "create", time = t },
           { id = "r2", strategy = "regenerate", step = "create", started = t })
      slot("genesys/d", { rotation = "r1", outcome = "ok", time = t })
      local out, rc = rotor("status " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      assert.truthy(out:find("genesys/a .- ok, then interrupted at deploy\n"), out)
      assert.truthy(out:find("genesys/b .- unfinished at verify\n"), out)
      assert.truthy(out:find("genesys/c .- failed at create, then unfinished at create\n"), out)
      assert.truthy(out:find("genesys/d .- ok\n"), out)
    end)
  end)

  describe("finding 4: config and environment problems fail before a mint intent", function()
    it("an unreachable host: the slot is not started, nothing is journalled, no stutter", function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1, { consumers = "none" })
      -- a loopback port nobody listens on
      e.provider.options.token_url = "https://127.0.0.1:9/genesys/login/oauth/token"
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("nothing was started", 1, true), out)
      assert.is_nil(out:find("rotor: rotor:", 1, true), out)
      assert.is_false(file_store(d .. "/secrets"):get(e.slot))
      out = rotor("status " .. q(d .. "/secrets"))
      assert.is_nil(out:find(e.slot, 1, true), out)
    end)

    it("a script's rotation with a missing secret journals nothing", function()
      local d = newdir()
      local f = d .. "/script.lua"
      assert(core.fs_write_atomic(f, ([[
local rotor = require "rotor"
local p = assert(rotor.genesys { base_url = %q, token_url = %q, cainfo = %q, client_id = "admin",
  client_secret = os.getenv("ROTOR_SPEC_SURELY_UNSET") })
local store = assert(rotor.store.file(%q))
local res, err = rotor.rotate { slot = "genesys/app", provider = p, store = store, target = { client_id = "app" } }
print(res, err)
]]):format(s.url .. "/genesys", s.url .. "/genesys/login/oauth/token", s.ca, d .. "/secrets"), 384))
      local out, rc = rotor(q(f))
      assert.equal(0, rc, out)
      assert.truthy(out:find("option client_secret: not set; nothing was started", 1, true), out)
      assert.is_false(file_store(d .. "/secrets"):get("genesys/app"))
    end)

    it("a script's error value is printed once prefixed", function()
      local d = newdir()
      local f = d .. "/script.lua"
      assert(core.fs_write_atomic(f, ([[
local rotor = require "rotor"
local p = assert(rotor.genesys { base_url = %q, token_url = %q, cainfo = %q, client_id = "nobody" })
local ok, err = p:token()
error(err, 0)
]]):format(s.url .. "/genesys", s.url .. "/genesys/login/oauth/token", s.ca), 384))
      local out, rc = rotor(q(f))
      assert.equal(1, rc, out)
      assert.truthy(out:find("^rotor: genesys token: config: option client_secret: not set"), out)
    end)
  end)

  describe("finding 5: no rotation that kills consumers' secret without saying so", function()
    it("refuses Genesys regenerate without deploy or consumers = \"none\", and runs it with either", function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      local mint = "/genesys/api/v2/oauth/clients/" .. e.target.client_id .. "/secret"
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(2, rc, out)
      assert.truthy(out:find("slot " .. e.slot .. ": deploy: strategy regenerate of genesys: the old secret stops " ..
        "working at once", 1, true), out)
      assert.truthy(out:find('consumers = "none"', 1, true), out)
      assert.equal(0, counter(mint))
      e.deploy = { kind = "dotenv", path = "app.env" }
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      out, rc = rotor("rotate --config " .. q(cfg), cfg, "/")
      assert.equal(0, rc, out)
      assert.equal(1, counter(mint))
      local app = assert(core.fs_read(d .. "/app.env"))
      assert.truthy(app:find("CLIENT_ID=" .. e.target.client_id, 1, true))
    end)
  end)

  describe("one credential, one slot, across the configs of a store", function()
    -- two config files sharing a store, each with a slot for the same Genesys client: both ran, and
    -- the second rotation killed the secret the first slot had stored and deployed
    it("refuses a slot whose client another slot of the store holds, mints nothing, and doctor names both",
      function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1, { deploy = { kind = "dotenv", path = "a.env" } })
      local other = {}
      for k, v in pairs(e) do other[k] = v end
      other.slot, other.deploy = e.slot .. "-again", { kind = "dotenv", path = "b.env" }
      local spare = spreetail_slot(env, 2)
      local cfg_a, cfg_b = d .. "/a.conf.lua", d .. "/b.conf.lua"
      write_config(cfg_a, { store = "./secrets", slots = { e } }, env)
      write_config(cfg_b, { store = "./secrets", slots = { other, spare } }, env)
      local mint = "/genesys/api/v2/oauth/clients/" .. e.target.client_id .. "/secret"
      local out, rc = rotor("rotate --config " .. q(cfg_a), cfg_a)
      assert.equal(0, rc, out)
      assert.equal(1, counter(mint))
      local stored = assert(core.fs_read(d .. "/a.env"))
      out, rc = rotor("rotate --config " .. q(cfg_b) .. " --json", cfg_b)
      assert.equal(1, rc, out)
      local doc = assert(json.decode(out:match("{.*}")), out)
      local by = {}
      for _, r in ipairs(doc.slots) do by[r.slot] = r end
      assert.equal("failed", by[other.slot].state)
      assert.equal("config", by[other.slot].error.kind)
      assert.truthy(by[other.slot].error.message:find(("genesys client %s is also held by slot %s of this store")
        :format(e.target.client_id, e.slot), 1, true), out)
      -- the other slot of that config ran; nothing was minted for the client held elsewhere
      assert.equal("rotated", by[spare.slot].state)
      assert.equal(1, counter(mint))
      assert.equal(stored, core.fs_read(d .. "/a.env"))
      assert.is_false(core.fs_exists(d .. "/b.env"))
      -- a dry run says so too
      out, rc = rotor("rotate --config " .. q(cfg_b) .. " --slot " .. q(other.slot) .. " --dry-run", cfg_b)
      assert.equal(1, rc, out)
      assert.truthy(out:find("is also held by slot " .. e.slot, 1, true), out)
      -- two records holding one client (as two configs left them before this check): doctor names them
      local st = file_store(d .. "/secrets")
      local rec = assert(st:get(e.slot))
      rec.slot = other.slot
      assert(st:put(other.slot, rec))
      out, rc = rotor("doctor " .. q(d .. "/secrets") .. " --json")
      assert.equal(1, rc, out)
      doc = assert(json.decode(out), out)
      local f
      for _, x in ipairs(doc.findings) do if x.problem == "shared_credential" then f = x end end
      assert.truthy(f, out)
      assert.truthy(f.message:find(("genesys client %s is held by 2 slots: %s (current), %s (current)")
        :format(e.target.client_id, e.slot, other.slot), 1, true), f.message)
      assert.truthy(f.command:find("keep one slot per credential", 1, true), f.command)
    end)
  end)

  describe("finding 5 in a script", function()
    it("warns when regenerate killed the old secret and nothing deployed the new one", function()
      local fx = fixtures.seed(s, "genesys")
      local d = newdir()
      local f = d .. "/script.lua"
      assert(core.fs_write_atomic(f, ([[
local rotor = require "rotor"
local p = assert(rotor.genesys { base_url = %q, token_url = %q, cainfo = %q, client_id = os.getenv("G_ID"),
  client_secret = os.getenv("G_SECRET") })
local store = assert(rotor.store.file(%q))
local res = assert(rotor.rotate { slot = %q, provider = p, store = store, target = { client_id = %q } })
for _, w in ipairs(res.warnings) do print("warning: " .. w) end
]]):format(fx.opts.base_url, fx.opts.token_url, s.ca, d .. "/secrets", fx.slot, fx.target.client_id), 384))
      fixtures.write_env(f .. ".env", { G_ID = fx.opts.client_id, G_SECRET = fx.opts.client_secret })
      local out, rc = rotor(q(f), f)
      assert.equal(0, rc, out)
      assert.truthy(out:find("warning: strategy regenerate: the old secret stopped working at once and no deploy "
        .. "hook handed the new one to its consumers", 1, true), out)
    end)
  end)

  describe("finding 6: stable JSON", function()
    it("keeps arrays, every field (null when unknown), integers and slashes as they are", function()
      local d = newdir()
      assert(core.fs_mkdir(d .. "/empty", 448))
      local out, rc = rotor_out("status " .. q(d .. "/empty") .. " --json")
      assert.equal(0, rc, out)
      assert.truthy(out:find('"slots":[]', 1, true), out)
      out = rotor_out("due " .. q(d .. "/empty") .. " --json")
      assert.truthy(out:find('"slots":[]', 1, true), out)
      local env = {}
      local e = spreetail_slot(env, 1)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      -- a dry run prints JSON and nothing else
      out, rc = rotor_out("rotate --config " .. q(cfg) .. " --dry-run --json", cfg)
      assert.equal(0, rc, out)
      local doc = assert(json.decode(out), out)
      assert.equal("planned", doc.slots[1].state)
      assert.is_true(json.is_array(doc.slots[1].plan) and #doc.slots[1].plan >= 5)
      assert.is_true(json.is_array(doc.slots[1].warnings))
      assert.equal(json.null, doc.slots[1].error)
      out, rc = rotor_out("rotate --config " .. q(cfg) .. " --json", cfg)
      assert.equal(0, rc, out)
      doc = assert(json.decode(out), out)
      assert.equal("rotated", doc.slots[1].state)
      assert.equal("file store " .. d .. "/secrets", doc.store)
      out = rotor_out("status " .. q(d .. "/secrets") .. " --json")
      assert.is_nil(out:find("\\/", 1, true), out)
      assert.is_nil(out:find("%d[eE][-+]%d"), out)
      doc = assert(json.decode(out))
      assert.equal(1, doc.schema)
      local row = doc.slots[1]
      for _, k in ipairs { "slot", "provider", "client_id", "created", "expires", "age_days", "expires_in_days",
                           "due", "due_reason", "next_due", "next_due_rule", "state", "rotation", "rotation_step",
                           "rotation_started", "pending_age_seconds", "last_outcome", "last_step", "last_time",
                           "last_success", "failures", "error" } do
        assert.is_not_nil(row[k], "field " .. k .. " missing")
      end
      assert.equal(json.null, row.expires)
      assert.equal(0, row.age_days)
      assert.equal("integer", math.type(row.failures))
      -- a slot skipped (not due) still says which strategy it runs: the provider's default here
      out, rc = rotor_out("rotate --config " .. q(cfg) .. " --json --only-due", cfg)
      assert.equal(0, rc, out)
      doc = assert(json.decode(out), out)
      assert.equal("skipped", doc.slots[1].state)
      assert.equal("new_pair", doc.slots[1].strategy)
    end)
  end)

  describe("finding 7: signals in a batch", function()
    it("starts no slot after SIGTERM, stops the running one between steps, exits 130, resumes on rerun", function()
      local d = newdir()
      local env = {}
      local flag = d .. "/signalled"
      -- the first slot's deploy hook sends SIGTERM to rotor once, and succeeds (a hook in Lua: a
      -- deploy command still running when the signal comes is stopped, as the next spec shows)
      local e1 = spreetail_slot(env, 1)
      e1.consumers = nil
      e1.deploy = { raw = ("function() if not io.open(%q) then io.open(%q, 'w'):close() "
        .. "os.execute('kill -TERM ' .. require('rotor.core').getpid()) end return true end"):format(flag, flag) }
      local e2 = spreetail_slot(env, 2)
      local e3 = spreetail_slot(env, 3)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", concurrency = 1, slots = { e1, e2, e3 } }, env)
      local mint = "/spreetail/api/v0/client-credentials"
      local mints = counter(mint)
      local out, rc = rotor_out("rotate --config " .. q(cfg) .. " --json", cfg)
      assert.equal(130, rc, out)
      local doc = assert(json.decode(out), out)
      assert.is_true(doc.interrupted)
      assert.equal("interrupted", doc.slots[1].state)
      assert.equal("not_started", doc.slots[2].state)
      assert.equal("not_started", doc.slots[3].state)
      assert.equal(mints + 1, counter(mint))
      local st = rotor_out("status " .. q(d .. "/secrets") .. " --json")
      local sdoc = assert(json.decode(st))
      assert.equal(1, #sdoc.slots)
      assert.equal("interrupted", sdoc.slots[1].state)
      assert.equal("promote", sdoc.slots[1].rotation_step)
      out, rc = rotor("rotate --config " .. q(cfg) .. " --only-due", cfg)
      assert.equal(0, rc, out)
      assert.equal(mints + 3, counter(mint)) -- the interrupted slot resumed without minting again
      local rec = assert(file_store(d .. "/secrets"):get(e1.slot))
      assert.is_nil(rec.rotation)
      local resumed = false
      for _, j in ipairs(rec.journal) do if j.outcome == "resume" then resumed = true end end
      assert.is_true(resumed)
    end)

    -- a request in flight went on whatever signal came: a provider that does not answer held the
    -- run for the request's timeout (30 s by default)
    it("abandons a token request in flight: the slot is not started, rotor exits 130 at once", function()
      local d = newdir()
      local env = {}
      local e1, fx = spreetail_slot(env, 1)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e1 } }, env)
      fixtures.control(s, "POST", "/faults", { path = fx.opts.token_url:match("^https?://[^/]+(/.*)$"),
                                                method = "POST", delay = 40, count = 1 })
      finally(function() fixtures.control(s, "DELETE", "/faults") end)
      local out, rc = sim.run(("(. %s && { %s rotate --config %s --json & p=$!; sleep 2; kill -TERM $p; wait $p; }) "
        .. "2>/dev/null"):format(q(cfg .. ".env"), ROTOR, q(cfg)))
      assert.equal(130, rc, out)
      local doc = assert(json.decode(out), out)
      assert.is_true(doc.interrupted)
      assert.equal("not_started", doc.slots[1].state)
      assert.equal("interrupted", doc.slots[1].error.kind)
      assert.truthy(doc.slots[1].error.message:find("nothing was started", 1, true), out)
      assert.is_false(file_store(d .. "/secrets"):get(e1.slot)) -- nothing journalled
    end)
  end)

  -- Ctrl-C reaches the terminal's foreground process group; a deploy command runs in a process
  -- group of its own (so that its timeout stops all it started): the signal never reached it, and
  -- rotor waited for it to end (up to the sink's timeout, an hour by default)
  describe("a signal during a deploy command", function()
    it("is passed on: the command's process group is stopped at once, rotor exits 130, the rerun deploys",
      function()
      local d = newdir()
      local env = {}
      local flag, pids = d .. "/signalled", d .. "/sleep.pid"
      local e1 = spreetail_slot(env, 1)
      e1.consumers = nil
      -- the first deploy sends SIGINT to rotor, then keeps running (a child of its own, in its group)
      e1.deploy = { raw = ("require(\"rotor\").store.exec { command = %q }"):format(
        ("cat >/dev/null; [ -e %s ] && exit 0; : > %s; sleep 60 & echo $! > %s; kill -INT $PPID; wait")
          :format(q(flag), q(flag), q(pids))) }
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e1 } }, env)
      local mint = "/spreetail/api/v0/client-credentials"
      local mints = counter(mint)
      local t0 = core.now()
      local out, rc = sim.run(("(. %s && timeout -k 5 40 %s rotate --config %s --json) 2>/dev/null")
        :format(q(cfg .. ".env"), ROTOR, q(cfg)))
      local took = core.now() - t0
      assert.equal(130, rc, out)
      assert.is_true(took < 30, ("rotor took %.1f s to stop"):format(took))
      local doc = assert(json.decode(out), out)
      assert.is_true(doc.interrupted)
      assert.equal("interrupted", doc.slots[1].state)
      -- what the next run does, said once
      local _, says = tostring(doc.slots[1].error and doc.slots[1].error.message):gsub("the next run deploys", "")
      assert.equal(1, says, out)
      -- the command's own child is gone with it
      local pid = assert(tonumber(sim.read_file(pids)))
      local stat = sim.read_file("/proc/" .. pid .. "/stat") or ""
      assert.is_truthy(stat == "" or stat:match("^%d+ %b() Z"), "the deploy's child still runs: " .. stat)
      local sdoc = assert(json.decode((rotor_out("status " .. q(d .. "/secrets") .. " --json"))))
      assert.equal("interrupted", sdoc.slots[1].state)
      assert.equal("deploy", sdoc.slots[1].rotation_step)
      assert.equal(mints + 1, counter(mint))
      out, rc = rotor("rotate --config " .. q(cfg) .. " --only-due", cfg)
      assert.equal(0, rc, out)
      assert.equal(mints + 1, counter(mint)) -- resumed at deploy: no second mint
      local rec = assert(file_store(d .. "/secrets"):get(e1.slot))
      assert.is_nil(rec.rotation)
    end)
  end)

  -- core.spawn waited for a deploy command on the event loop's thread: every other rotation of a
  -- batch stood still meanwhile, each slot that had minted waiting for the others' deploys
  describe("deploy commands in a batch", function()
    it("run side by side: each starts before any of the others ends", function()
      local d = newdir()
      local env = {}
      local starts, ends = d .. "/starts", d .. "/ends"
      local slots = {}
      for i = 1, 3 do
        local e = spreetail_slot(env, i)
        e.consumers = nil
        e.deploy = { raw = ("require(\"rotor\").store.exec { command = %q }"):format(
          ("cat >/dev/null; date +%%s.%%N >> %s; sleep 1; date +%%s.%%N >> %s"):format(q(starts), q(ends))) }
        slots[i] = e
      end
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", concurrency = 3, slots = slots }, env)
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(0, rc, out)
      local function times(path)
        local t = {}
        for v in sim.read_file(path):gmatch("[%d.]+") do t[#t + 1] = tonumber(v) end
        table.sort(t)
        return t
      end
      local st, en = times(starts), times(ends)
      assert.equal(3, #st)
      assert.equal(3, #en)
      assert.is_true(st[3] < en[1], ("the last deploy started at %.2f, after the first ended at %.2f")
        :format(st[3] - st[1], en[1] - st[1]))
    end)
  end)

  describe("finding 8: a corrupted slot", function()
    it("makes status and due exit 1, and doctor says what to run", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      assert(st:put("genesys/fine", { slot = "genesys/fine", provider = "genesys", journal = {},
        versions = { current = { client_id = "c1", secret = "not-a-real-secret-3",
          created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
      assert(core.fs_write_atomic(d .. "/secrets/genesys%2Fbroken.json", "{ this is not json", 384))
      local out, rc = rotor("status " .. q(d .. "/secrets"))
      assert.equal(1, rc, out)
      assert.truthy(out:find("genesys/broken", 1, true), out)
      assert.truthy(out:find("CORRUPTED", 1, true), out)
      assert.equal(1, select(2, (out:match("CORRUPTED[^\n]*")):gsub("rotor doctor", "")), out)
      out, rc = rotor("due " .. q(d .. "/secrets"))
      assert.equal(1, rc, out)
      assert.truthy(out:find("genesys/broken\t", 1, true), out)
      out, rc = rotor("doctor " .. q(d .. "/secrets"))
      assert.equal(1, rc, out)
      assert.truthy(out:find("NEEDS A PERSON  genesys/broken", 1, true), out)
      assert.truthy(out:find("mv " .. d .. "/secrets/genesys%2Fbroken.json", 1, true), out)
      -- doctor's own advice, once: not the store's, which points back at doctor
      assert.is_nil(out:find("rotor doctor shows the slot", 1, true), out)
      assert.truthy(out:find("holds no valid record: malformed JSON (file " .. d .. "/secrets/genesys%2Fbroken.json). "
        .. "Move it aside", 1, true), out)
    end)

    -- an expiry beyond any date (1e300 seconds) or not a number at all once read (1e999: inf)
    -- ended status, due and doctor in a traceback (os.date cannot format it)
    it("an expiry no date can hold: status, due and doctor neither crash nor trust it", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      assert(st:put("genesys/far", { slot = "genesys/far", provider = "genesys", journal = {},
        versions = { current = { client_id = "c1", secret = "not-a-real-secret-5", expires = 1e300,
          created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
      local text = assert(core.fs_read(d .. "/secrets/genesys%2Ffar.json"))
      assert(core.fs_write_atomic(d .. "/secrets/genesys%2Finf.json",
        (text:gsub("genesys/far", "genesys/inf"):gsub('"expires":1e%+300', '"expires":1e999')), 384))
      for _, cmd in ipairs { "status", "status --format json", "status --format openmetrics", "due", "doctor" } do
        local out, rc = rotor(cmd .. " " .. q(d .. "/secrets"))
        assert.equal(1, rc, cmd .. ": " .. out) -- genesys/inf cannot be read
        assert.is_nil(out:find("traceback", 1, true), cmd .. ": " .. out)
        assert.truthy(out:find("genesys/inf", 1, true), cmd .. ": " .. out)
        if cmd == "status" then
          assert.truthy(out:find("genesys/far", 1, true), out)
          assert.truthy(out:find("malformed JSON", 1, true), out)
        end
      end
    end)

    -- a last outcome that was not text (an object, true) ended status in a traceback, and status
    -- --json printed it where its schema promises a string
    it("a record field of the wrong kind: status, due and doctor name it, no traceback", function()
      local d, st, now = store_with_slot("genesys/ok")
      assert(st:put("genesys/odd", { slot = "genesys/odd", provider = "genesys", last = { outcome = {}, time = now },
        journal = { { step = "rotation", outcome = "done", time = now } },
        versions = { current = { client_id = "c2", secret = "not-a-real-secret-11", created = now } } }))
      for _, cmd in ipairs { "status", "status --format json", "status --format openmetrics", "due", "doctor" } do
        local out, rc = rotor(cmd .. " " .. q(d .. "/secrets"))
        assert.equal(1, rc, cmd .. ": " .. out)
        assert.is_nil(out:find("traceback", 1, true), cmd .. ": " .. out)
        assert.truthy(out:find("genesys/odd", 1, true), cmd .. ": " .. out)
        if cmd ~= "status --format openmetrics" then
          assert.truthy(out:find("last.outcome: string expected, found table", 1, true), cmd .. ": " .. out)
        end
        if cmd:find("status") then assert.truthy(out:find("genesys/ok", 1, true), cmd .. ": " .. out) end
      end
      -- journal entries are read as text only where they are text (not checked field by field on
      -- every read: a full journal is 200 of them)
      assert(st:put("genesys/odd", { slot = "genesys/odd", provider = "genesys", journal = {
          { step = "rotation", outcome = "start", rotation = {}, note = 5 },
          { step = "create", outcome = "ambiguous", rotation = 7 },
          { step = "rotation", outcome = "done", time = { "2026" } } },
        versions = { current = { client_id = "c2", secret = "not-a-real-secret-11", created = now } } }))
      local out, rc = rotor("status --format json " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      for _, row in ipairs(assert(json.decode(out), out).slots) do
        assert.is_true(row.last_success == json.null or type(row.last_success) == "string", out)
      end
      out, rc = rotor("doctor " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      assert.is_nil(out:find("traceback", 1, true), out)
    end)

    -- a rule's days were unbounded: --before-expiry-days 1e300 (or in a config's due table) put the
    -- next due date before any date and ended status and due in a traceback
    it("a rule's days beyond any date are refused where they are given", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
      assert(st:put("paylocity/a", { slot = "paylocity/a", provider = "paylocity", journal = {},
        versions = { current = { client_id = "c1", secret = "not-a-real-secret-13", created = now,
          expires = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 40 * 86400) } } }))
      for _, cmd in ipairs { "status", "due" } do
        for _, flag in ipairs { "--before-expiry-days 1e300", "--max-age-days 1e999", "--max-age-days 0" } do
          local out, rc = rotor(cmd .. " " .. q(d .. "/secrets") .. " " .. flag)
          assert.equal(2, rc, cmd .. " " .. flag .. ": " .. out)
          assert.is_nil(out:find("traceback", 1, true), out)
          assert.truthy(out:find("needs a number of days above 0, at most 36500", 1, true), out)
        end
      end
      local out, rc = rotor("status " .. q(d .. "/secrets") .. " --before-expiry-days 36500")
      assert.equal(0, rc, out)
      assert.truthy(out:find("paylocity/a", 1, true), out)
      assert.error_matches(function() require("rotor").due(assert(st:get("paylocity/a")), { max_age_days = 1e300 }) end,
        "rotor.due: max_age_days: a number of days above 0, at most 36500", nil, true)
      -- a small rule is printed as written, not as 1e-05
      assert(st:put("genesys/b", { slot = "genesys/b", provider = "genesys", journal = {},
        versions = { current = { client_id = "c2", secret = "not-a-real-secret-14" } } }))
      out, rc = rotor("due " .. q(d .. "/secrets") .. " --max-age-days 0.00001")
      assert.equal(0, rc, out)
      assert.truthy(out:find("(max_age_days = 0.00001)", 1, true), out)
    end)

    -- a file whose name spells no slot (%00.json, a tab or an escape sequence in the name) was listed
    -- as a corrupted slot named with those bytes, printed raw to the terminal, and ended doctor in a
    -- traceback
    it("a file in the store that names no slot: status skips it, doctor names it escaped", function()
      local d = store_with_slot("genesys/ok")
      local text = assert(core.fs_read(d .. "/secrets/genesys%2Fok.json"))
      for _, bad in ipairs { "%00", "a\tb", "x\27[2Jy", "x%zz", "" } do
        assert(core.fs_write_atomic(d .. "/secrets/" .. bad .. ".json", text, 384))
      end
      for _, cmd in ipairs { "status", "status --format json", "due", "doctor", "doctor --json" } do
        local out, rc = rotor(cmd .. " " .. q(d .. "/secrets"))
        assert.equal(0, rc, cmd .. ": " .. out)
        assert.is_nil(out:find("traceback", 1, true), cmd .. ": " .. out)
        assert.is_nil(out:find("[\t\27]"), cmd .. ": a control byte reached the output: " .. out)
        if cmd:find("doctor") then
          if cmd:find("json") then
            local names = {}
            for _, f in ipairs(assert(json.decode(out), out).findings) do names[#names + 1] = f.slot end
            out = table.concat(names, " ")
          end
          for _, shown in ipairs { "%00.json", "a\\x09b.json", "x\\x1B[2Jy.json", "x%zz.json" } do
            assert.truthy(out:find(shown, 1, true), shown .. " in " .. out)
          end
        else
          if cmd ~= "due" then assert.truthy(out:find("genesys/ok", 1, true), cmd .. ": " .. out) end
          assert.is_nil(out:find("x%zz", 1, true), cmd .. ": " .. out)
        end
      end
    end)

    -- text from a provider (an expiry, an outcome, an error message) reached the terminal with its
    -- escape sequences, which the operator's terminal then obeyed
    it("prints no control byte a record's text holds", function()
      local d, st, now = store_with_slot("genesys/ok")
      assert(st:put("genesys/esc", { slot = "genesys/esc", provider = "genesys", journal = {},
        last = { outcome = "ok\27]0;owned\7", time = now }, rotation = { id = "r1\27[2J", strategy = "regenerate",
          step = "verify", started = now },
        versions = { current = { client_id = "c\27[31m", secret = "not-a-real-secret-15", created = now,
          expires = "\27[2J2031-01-01T00:00:00Z" } } }))
      for _, cmd in ipairs { "status", "due", "doctor" } do
        local out = rotor(cmd .. " " .. q(d .. "/secrets"))
        assert.truthy(out:find("genesys/esc", 1, true), cmd .. ": " .. out)
        assert.is_nil(out:find("[\27\7]"), cmd .. ": a control byte reached the output: " .. out)
      end
    end)

    -- status and doctor took a custom store's record as it came: a journal entry that was not an
    -- object ended both in a Lua traceback. Every reader now checks the record (rotor.record.read).
    it("a store of one's own that hands back a malformed record: status, due and doctor name it, exit 1", function()
      local d = newdir()
      local cfg = d .. "/rotor.conf.lua"
      local env = {}
      local e = spreetail_slot(env, 1)
      write_config(cfg, { slots = { e }, store = { raw = ([[{
        list = function() return { %q } end,
        get = function(_, slot) return { slot = slot, provider = "spreetail", versions = {}, journal = { 1 },
                                         rotation = 5 } end,
        put = function() return true end,
        lock = function() return { unlock = function() end } end,
      }]]):format(e.slot) } }, env)
      for _, cmd in ipairs { "status", "due", "doctor" } do
        local out, rc = rotor(cmd .. " --config " .. q(cfg), cfg)
        assert.equal(1, rc, cmd .. ": " .. out)
        assert.truthy(out:find(e.slot, 1, true), out)
        if cmd ~= "due" then
          assert.truthy(out:find("holds no valid record: journal[1]: an object expected", 1, true), cmd .. ": " .. out)
        end
        assert.is_nil(out:find("traceback", 1, true), out)
      end
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("in a store of one's own holds no valid record: journal[1]", 1, true), out)
    end)
  end)

  describe("doctor", function()
    it("is healthy on a healthy store and names the command for an unfinished rotation", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      assert(st:put("spreetail/x", { slot = "spreetail/x", provider = "spreetail", journal = {},
        versions = { current = { client_id = "c1", secret = "not-a-real-secret-4",
          created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
      local out, rc = rotor("doctor " .. q(d .. "/secrets"))
      assert.equal(0, rc, out)
      assert.truthy(out:find("healthy", 1, true), out)
      local rec = assert(st:get("spreetail/x"))
      -- a rotation running now (its process holds the slot's lock) is no stopped one: nothing for
      -- a person, exit 0 (a monitoring run of doctor raised a false alarm)
      rec.rotation = { id = "r1", strategy = "new_pair", step = "create", started = os.date("!%Y-%m-%dT%H:%M:%SZ") }
      assert(st:put("spreetail/x", rec))
      local running = assert(st:lock("spreetail/x"))
      out, rc = rotor("doctor " .. q(d .. "/secrets"))
      running:unlock()
      assert.equal(0, rc, out)
      assert.truthy(out:find("a rotation is running now", 1, true), out)
      assert.is_nil(out:find("NEEDS A PERSON", 1, true), out)
      assert.is_nil(out:find("stopped at step", 1, true), out)
      -- a rotation whose mint had an unknown outcome and never stored a secret: a possible orphan
      rec.journal = {
        { step = "rotation", outcome = "start", note = "new_pair", rotation = "r0", time = "2026-01-01T00:00:00Z" },
        { step = "create", outcome = "intent", note = "create", rotation = "r0", time = "2026-01-01T00:00:00Z" },
        { step = "create", outcome = "ambiguous", rotation = "r0", time = "2026-01-01T00:00:01Z" },
      }
      rec.rotation = { id = "r1", strategy = "new_pair", step = "verify", started = os.date("!%Y-%m-%dT%H:%M:%SZ") }
      assert(st:put("spreetail/x", rec))
      local lock = assert(st:lock("spreetail/x"))
      out, rc = rotor("doctor " .. q(d .. "/secrets") .. " --json")
      lock:unlock()
      assert.equal(1, rc, out)   -- the orphan
      local doc = assert(json.decode(out), out)
      local kinds = {}
      for _, f in ipairs(doc.findings) do kinds[f.problem] = f end
      assert.is_nil(kinds.unfinished_rotation, out)
      assert.truthy(kinds.locked and kinds.locked.command:find("kill -TERM " .. core.getpid(), 1, true))
      assert.truthy(kinds.orphan and kinds.orphan.message:find("rotation r0 (new_pair)", 1, true))
      -- a rerun does not search for it (its rotation is over): a person does
      assert.truthy(kinds.orphan.command:find("look for a credential whose name holds r0", 1, true))
      -- no process holds it: the rotation stopped, and its rerun is the command
      out, rc = rotor("doctor " .. q(d .. "/secrets") .. " --json")
      assert.equal(1, rc, out)
      doc = assert(json.decode(out), out)
      kinds = {}
      for _, f in ipairs(doc.findings) do kinds[f.problem] = f end
      assert.is_nil(kinds.locked, out)
      assert.truthy(kinds.unfinished_rotation.command:find("rotor rotate --config FILE --slot spreetail/x", 1, true))
    end)
  end)

  -- a recovery whose listing did not show the credential its lost create made minted again, and
  -- nothing told anyone that the first one may exist
  it("doctor lists a credential a recovery did not find, and until when the slot's runs search for it", function()
    local d = newdir()
    local st = file_store(d .. "/secrets")
    local since = os.time() - 86400
    local iso = function(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
    assert(st:put("spreetail/x", { slot = "spreetail/x", provider = "spreetail", journal = {},
      versions = { current = { client_id = "c1", secret = "not-a-real-secret-4", created = "2026-11-01T00:00:00Z" } },
      unfound = { { name = "rotor:spreetail/x:r20261101T000000Z-0011223344556677", what = "pair", strategy = "new_pair",
                    rotation = "r20261101T000000Z-0011223344556677", since = iso(since) } } }))
    local out, rc = rotor("doctor " .. q(d .. "/secrets") .. " --json")
    assert.equal(0, rc, out) -- a note: the runs search on their own
    local doc = assert(json.decode(out), out)
    assert.equal(1, #doc.findings, out)
    local f = doc.findings[1]
    assert.equal("unconfirmed_orphan", f.problem)
    assert.is_false(f.needs_person)
    assert.truthy(f.message:find("no pair named rotor:spreetail/x:r20261101T000000Z-0011223344556677", 1, true), out)
    assert.truthy(f.message:find("until " .. iso(since + 30 * 86400):sub(1, 10), 1, true), out)
    assert.truthy(f.command:find("delete the pair named rotor:spreetail/x:r20261101T000000Z-0011223344556677", 1, true))
    -- its window passed, and no run came: doctor names no date gone by
    local rec = assert(st:get("spreetail/x"))
    rec.unfound[1].since = iso(os.time() - 40 * 86400)
    assert(st:put("spreetail/x", rec))
    out = rotor("doctor " .. q(d .. "/secrets"))
    assert.truthy(out:find("the search's window has passed: the slot's next run ends it", 1, true), out)
    -- the rotation that recorded the name is no orphan of its own (the search covers it), nor once
    -- the search found it or ended: doctor asked a person for it, and contradicted itself
    rec.journal = {
      { step = "rotation", outcome = "start", note = "new_pair", rotation = "r20261101T000000Z-0011223344556677",
        time = "2026-11-01T00:00:00Z" },
      { step = "create", outcome = "intent", note = "create", rotation = "r20261101T000000Z-0011223344556677",
        time = "2026-11-01T00:00:00Z" },
      { step = "create", outcome = "ambiguous", rotation = "r20261101T000000Z-0011223344556677",
        time = "2026-11-01T00:00:01Z" },
    }
    assert(st:put("spreetail/x", rec))
    out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(0, rc, out)
    assert.is_nil(out:find("NEEDS A PERSON", 1, true), out)
    local unfound = rec.unfound
    rec.unfound = nil
    rec.journal[4] = { step = "create", outcome = "search_ended", rotation = "r20261101T000000Z-0011223344556677",
                       time = "2026-12-01T00:00:00Z", note = "pair found and deleted" }
    assert(st:put("spreetail/x", rec))
    out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(0, rc, out)
    assert.truthy(out:find("healthy", 1, true), out)
    rec.unfound = unfound
    -- an entry without its name is no record rotor wrote
    rec.unfound[1].name = nil
    assert(st:put("spreetail/x", rec))
    out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(1, rc, out)
    assert.truthy(out:find("unfound[1].name: missing", 1, true), out)
  end)

  -- a pending secret the provider refused at every verify: doctor offered the rerun, which verified
  -- it again, and said nothing of the way out
  it("doctor names drop_pending for a rotation whose pending secret the provider refused", function()
    local d = newdir()
    local st = file_store(d .. "/secrets")
    local rot = "r20261101T000000Z-0011223344556677"
    local rec = { slot = "genesys/x", provider = "genesys",
      versions = { current = { client_id = "c1", secret = "not-a-real-secret-4", created = "2026-11-01T00:00:00Z" },
                   pending = { client_id = "c1", secret = "not-a-real-secret-5", created = "2026-11-01T00:00:01Z" } },
      rotation = { id = rot, strategy = "regenerate", step = "verify", started = "2026-11-01T00:00:00Z" },
      journal = { { step = "verify", outcome = "failed", rotation = rot, time = "2026-11-01T00:00:02Z",
                    note = "the new credential c1 was refused when verified (invalid_client); it stays pending" } } }
    assert(st:put("genesys/x", rec))
    local out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(1, rc, out)
    assert.truthy(out:find("the provider refused it at the last verify", 1, true), out)
    assert.truthy(out:find("its last entry: verify failed: the new credential c1 was refused when verified", 1, true),
      out)
    assert.truthy(out:find("set drop_pending = true in the slot's config for one run", 1, true), out)
    -- stopped anywhere else, the rerun is all there is to say
    rec.journal[1] = { step = "deploy", outcome = "failed", rotation = rot, time = "2026-11-01T00:00:02Z",
                       note = "the deploy hook failed" }
    rec.rotation.step = "deploy"
    assert(st:put("genesys/x", rec))
    out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(1, rc, out)
    assert.is_nil(out:find("drop_pending", 1, true), out)
    -- a run that stopped for a person said what to do in its journal: doctor shows it
    rec.versions.pending = nil
    rec.rotation.step = "create"
    rec.journal[1] = { step = "create", outcome = "ambiguous", rotation = rot, time = "2026-11-01T00:00:02Z",
                       note = "whether the code was used is unknown: ask Paylocity for a new code" }
    assert(st:put("genesys/x", rec))
    out, rc = rotor("doctor " .. q(d .. "/secrets"))
    assert.equal(1, rc, out)
    assert.truthy(out:find("its last entry: create ambiguous: whether the code was used is unknown: ask Paylocity "
      .. "for a new code", 1, true), out)
  end)

  -- a host of a fleet given the wrong sealing key: doctor called the slot corrupted and printed
  -- the command that moves it aside and rotates anew; run there, it killed the secret every other
  -- host reads and stored the new one under the wrong key
  it("doctor on a host without the slot's sealing key: the record is whole, give the host the key", function()
    local d = newdir()
    local k1, k2 = d .. "/right.key", d .. "/wrong.key"
    sim.run(("head -c 32 /dev/urandom > %s && head -c 32 /dev/urandom > %s && chmod 600 %s %s"):format(
      q(k1), q(k2), q(k1), q(k2)))
    local st = assert(require("rotor").store.file(d .. "/secrets", { key_file = k1 }))
    assert(st:put("genesys/x", { slot = "genesys/x", provider = "genesys", journal = {},
      versions = { current = { client_id = "c1", secret = "not-a-real-secret-5",
                               created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
    local cfg = d .. "/rotor.conf.lua"
    local env = {}
    local e = genesys_slot(env, 1)
    write_config(cfg, { store = { kind = "file", path = "./secrets", key_file = "./wrong.key" }, slots = { e } }, env)
    local out, rc = rotor("doctor --config " .. q(cfg) .. " --json", cfg)
    assert.equal(1, rc, out)
    local doc = assert(json.decode(out), out)
    assert.equal(1, #doc.findings, out)
    local f = doc.findings[1]
    assert.equal("unreadable_here", f.problem)
    assert.truthy(f.message:find("sealed with key id", 1, true), f.message)
    assert.truthy(f.command:find("key_file", 1, true), f.command)
    assert.is_nil(f.command:find("mv ", 1, true), f.command)
    assert.is_nil(f.command:find("rotate", 1, true), f.command)
    -- the right key reads it
    write_config(cfg, { store = { kind = "file", path = "./secrets", key_file = "./right.key" }, slots = { e } }, env)
    out, rc = rotor("doctor --config " .. q(cfg), cfg)
    assert.equal(0, rc, out)
  end)

  describe("monitoring", function()
    it("checks the store and due policies it reads from a config, not the credentials only rotate needs", function()
      local d = newdir()
      local env = {}
      local e = genesys_slot(env, 1)
      local cfg = d .. "/rotor.conf.lua"
      -- a due policy that is not one: a traceback (a string), or the default policy shown silently
      local bad = {
        { { due = { max_age_days = "60" } }, "due.max_age_days: a number of days above 0" },
        { { due = 60 }, "due: a table { max_age_days =, before_expiry_days = } expected" },
        { { max_age_days = 30 }, "max_age_days: a due policy's key: due = { max_age_days = ... }" },
        { { due = { max_age = 1 } }, "due.max_age: unknown key; did you mean due.max_age_days?" },
        -- a slot's own policy ({ top-level keys }, the message, the slot's due)
        { {}, "slot " .. e.slot .. ": due.before_expiry_days: a number of days", { before_expiry_days = "7" } },
      }
      for _, c in ipairs(bad) do
        local top = { store = "./secrets", slots = { e } }
        for k, v in pairs(c[1]) do top[k] = v end
        e.due = c[3]
        write_config(cfg, top, env)
        for _, cmd in ipairs { "status", "due", "doctor" } do
          local out, rc = rotor(cmd .. " --config " .. q(cfg), nil, d)
          assert.equal(2, rc, cmd .. "\n" .. out)
          assert.truthy(out:find(c[2], 1, true), c[2] .. "\n" .. out)
          assert.truthy(out:find("rotor " .. cmd .. ": 1 problem(s) in ", 1, true), out)
          assert.is_nil(out:find("traceback", 1, true), out)
        end
      end
      -- the provider's credentials come from variables a monitoring host does not have: still read
      e.due = nil
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      file_store(d .. "/secrets")
      for _, cmd in ipairs { "status", "due", "doctor" } do
        local out, rc = rotor(cmd .. " --config " .. q(cfg), nil, d)
        assert.equal(0, rc, cmd .. "\n" .. out)
      end
    end)

    it("prints OpenMetrics that promtool accepts, with the documented metric names", function()
      local d = newdir()
      local st = file_store(d .. "/secrets")
      assert(st:put("paylocity/a", { slot = "paylocity/a", provider = "paylocity", journal = {
          { step = "rotation", outcome = "done", time = os.date("!%Y-%m-%dT%H:%M:%SZ"), rotation = "r0" } },
        last = { outcome = "ok", time = os.date("!%Y-%m-%dT%H:%M:%SZ") },
        versions = { current = { client_id = "c1", secret = "not-a-real-secret-5",
          created = os.date("!%Y-%m-%dT%H:%M:%SZ"),
                                 expires = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 40 * 86400) } } }))
      assert(st:put("genesys/b", { slot = "genesys/b", provider = "genesys", journal = {
          { step = "create", outcome = "failed", time = os.date("!%Y-%m-%dT%H:%M:%SZ"), rotation = "r1" } },
        rotation = { id = "r1", strategy = "regenerate", step = "create", started = os.date("!%Y-%m-%dT%H:%M:%SZ",
          os.time() - 600) },
        versions = { current = { client_id = "c2", created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
      assert(core.fs_write_atomic(d .. "/secrets/x.json", "[", 384))
      local out, rc = rotor_out("status " .. q(d .. "/secrets") .. " --format openmetrics")
      assert.equal(1, rc, out) -- the corrupted slot
      assert(core.fs_write_atomic(d .. "/metrics.prom", out, 384))
      local pout, prc = sim.run("promtool check metrics < " .. q(d .. "/metrics.prom") .. " 2>&1")
      assert.equal(0, prc, pout .. "\n" .. out)
      assert.truthy(out:find("\n# EOF\n$"), out)
      assert.truthy(out:find('rotor_secret_expiry_timestamp_seconds{slot="paylocity/a",provider="paylocity"} %d+'), out)
      assert.truthy(out:find('rotor_last_success_timestamp_seconds{slot="paylocity/a",provider="paylocity"} %d+'), out)
      assert.truthy(out:find('rotor_next_due_timestamp_seconds{slot="paylocity/a",provider="paylocity"} %d+'), out)
      assert.truthy(out:find('rotor_rotation_pending_age_seconds{slot="genesys/b",provider="genesys"} 6%d%d'), out)
      assert.truthy(out:find('rotor_rotation_failures{slot="genesys/b",provider="genesys"} 1', 1, true), out)
      assert.truthy(out:find('rotor_slot_corrupted{slot="x",provider="unknown"} 1', 1, true), out)
      local rout, rrc = sim.run("promtool check rules examples/alerts.yml 2>&1")
      assert.equal(0, rrc, rout)
      local docs = assert(core.fs_read("doc/CLI.md"))
      for name in out:gmatch("# TYPE (%S+)") do
        assert.truthy(docs:find("`" .. name .. "`", 1, true), name .. " is not documented in doc/CLI.md")
      end
    end)
  end)

  describe("finding 9: command-line conventions", function()
    it("draws progress on a terminal, and not with NO_COLOR", function()
      local d = newdir()
      local env = {}
      local e1, e2 = spreetail_slot(env, 1), spreetail_slot(env, 2)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e1, e2 } }, env)
      -- script(1) gives rotor a terminal; its standard output is the transcript
      local function tty(extra)
        return sim.run(("cd %s && . %s && %s TERM=xterm script -qec %s /dev/null"):format(q(d), q(cfg .. ".env"),
          extra, q(ROTOR_ABS .. " rotate --config " .. q(cfg) .. " --dry-run")))
      end
      local out, rc = tty("")
      assert.equal(0, rc, out)
      assert.truthy(out:find("[2/2]", 1, true), out)
      assert.truthy(out:find("\27%[K"), out)
      out, rc = tty("NO_COLOR=1")
      assert.equal(0, rc, out)
      assert.is_nil(out:find("[2/2]", 1, true), out)
      assert.is_nil(out:find("\27"), out)
    end)

    it("has per-command help, version, one usage text, and exit 2 with a suggestion for a typo", function()
      local out, rc = rotor("status --help")
      assert.equal(0, rc, out)
      assert.truthy(out:find("usage: rotor status", 1, true), out)
      local out2 = rotor("help status")
      assert.equal(out, out2)
      out, rc = rotor("version")
      assert.equal(0, rc, out)
      assert.truthy(out:find("^rotor %d+%.%d+%.%d+ %(Lua 5%.4.*libcurl"), out)
      out, rc = rotor("statsu ./secrets")
      assert.equal(2, rc, out)
      assert.truthy(out:find("did you mean `rotor status`?", 1, true), out)
      assert.is_nil(out:find("cannot open", 1, true), out)
      local usage, urc = rotor("")
      assert.equal(2, urc)
      local help = rotor("help")
      assert.equal(usage, help)
      assert.truthy(help:find("rotor doctor", 1, true))
      out, rc = rotor("status ./x --jsn")
      assert.equal(2, rc, out)
      assert.truthy(out:find("unknown option --jsn; did you mean --json?", 1, true), out)
      -- help on a command that does not exist shows the ones that do; an argument a command does
      -- not take, or two formats at once, is a usage error rather than ignored
      out, rc = rotor("help bogus")
      assert.equal(2, rc, out)
      assert.truthy(out:find("rotor doctor", 1, true), out)
      for _, cmd in ipairs { "config-reference extra", "version x", "status ./x --json --format text" } do
        out, rc = rotor(cmd)
        assert.equal(2, rc, cmd .. "\n" .. out)
      end
      assert.truthy(rotor("status ./x --json --format text"):find("--json and --format text: give one of them", 1,
        true))
    end)

    it("says what is wrong with the store argument: empty, a config file, a refused directory", function()
      -- `rotor status "$STORE"` with STORE unset: a usage error, not a traceback
      for _, cmd in ipairs { "status ''", "due ''", "doctor ''", "''" } do
        local out, rc = rotor(cmd)
        assert.equal(2, rc, cmd .. "\n" .. out)
        assert.is_nil(out:find("traceback", 1, true), out)
        assert.is_nil(out:find("bad path", 1, true), out)
      end
      local out = rotor("status ''")
      assert.truthy(out:find("a store directory expected, got an empty argument", 1, true), out)
      -- a config file given where the store goes: the command that takes it
      local d = newdir()
      local env = {}
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { (spreetail_slot(env, 1)) } }, env)
      local rc
      out, rc = rotor("status " .. q(cfg))
      assert.equal(2, rc, out)
      assert.truthy(out:find("is a file, not a store directory; for the store of a config file: rotor status --config "
        .. cfg, 1, true), out)
      -- a store directory rotor refuses: the reason once
      assert(core.fs_mkdir(d .. "/secrets", 448))
      assert(os.execute("chmod 777 " .. q(d .. "/secrets")))
      out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("rotor rotate: store: refusing the store directory", 1, true), out)
      assert.is_nil(out:find("store: store:", 1, true), out)
    end)

    it("keeps a provider's 400 body, mentions cainfo on a TLS failure, and shows no internal paths", function()
      local d = newdir()
      local env = {}
      local e = spreetail_slot(env, 1)
      local cfg = d .. "/rotor.conf.lua"
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      fixtures.control(s, "POST", "/faults", { path = "/spreetail/api/v0/client-credentials", method = "POST",
        status = 400, body = "name rotor:x is already taken (plain text)" })
      local out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("name rotor:x is already taken (plain text)", 1, true), out)
      assert.is_nil(out:find("lua/rotor/", 1, true), out)
      -- a body that echoes the credential: kept, with the secret redacted
      fixtures.control(s, "POST", "/faults", { path = "/spreetail/api/v0/client-credentials", method = "POST",
        status = 400, body = "credential " .. env.T1_SECRET .. " may not create pairs" })
      out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("credential <redacted> may not create pairs", 1, true), out)
      assert.is_nil(out:find(env.T1_SECRET, 1, true), "the secret was printed")
      e.provider.options.cainfo = nil
      write_config(cfg, { store = "./secrets", slots = { e } }, env)
      out, rc = rotor("rotate --config " .. q(cfg), cfg)
      assert.equal(1, rc, out)
      assert.truthy(out:find("tls", 1, true), out)
      assert.truthy(out:find("cainfo", 1, true), out)
      assert.is_nil(out:find("lua/rotor/", 1, true), out)
    end)
  end)
end)
