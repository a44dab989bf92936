-- rotor.config (the schema behind `rotor rotate --config` and doc/CONFIG.md), rotor.policy (when a
-- slot is due) and rotor.store.open (a config's store). In-process, no network.
local config = require "rotor.config"
local policy = require "rotor.policy"
local core = require "rotor.core"

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

local function tmpdir() return require("spec.helpers.sim").tmpdir("config") end

local function slot(extra)
  local e = { slot = "genesys/app", consumers = "none",
    provider = { kind = "genesys", options = { base_url = "https://127.0.0.1:9/genesys",
      token_url = "https://127.0.0.1:9/token", client_id = "admin", client_secret = "not-a-real-secret" } },
    target = { client_id = "app" } }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function problems(cfg, info)
  local list = config.validate(cfg, info or { file = "rotor.conf.lua", unset_env = {} })
  local text = {}
  for _, p in ipairs(list) do text[#text + 1] = config.format(p) end
  return text, list
end

local function has(lines, s)
  for _, l in ipairs(lines) do if l:find(s, 1, true) then return true end end
  return false
end

describe("rotor.config", function()
  it("accepts a complete config", function()
    local lines = problems { store = "./secrets", due = { max_age_days = 30 }, concurrency = 2,
      slots = { slot { due = { before_expiry_days = 7, max_age_days = false } } } }
    assert.same({}, lines)
  end)

  it("shows no secret of the file in a problem, whatever key it was given to by mistake", function()
    -- swapped environment variables: the client secret reaches region, cainfo and an exec's env;
    -- a Slack webhook URL (a credential) given over plain http
    local secret = "178553582ec2337663a1462413b97d14489c894d4116899f"
    local webhook = "http://10.1.1.1/services/T0SECRET/B0SECRET/WebhookTokenXYZ123"
    local e1 = slot { notify = webhook }
    e1.provider.options.client_secret = secret
    e1.provider.options.region = secret
    local e2 = slot { slot = "genesys/other", target = { client_id = "other" } }
    e2.provider.options.client_secret = secret
    e2.provider.options.cainfo = "/nonexistent/" .. secret
    -- the provider's options given without an options table
    local e3 = slot { slot = "genesys/flat", target = { client_id = "flat" } }
    e3.provider = { kind = "genesys", base_url = "https://127.0.0.1:9/genesys", token_url = "https://127.0.0.1:9/t",
      client_id = "admin", client_secret = secret, region = secret }
    local lines = problems { store = "./secrets", slots = { e1, e2, e3 } }
    assert.is_true(has(lines, "slot genesys/app: provider.options.region: unknown region"), table.concat(lines, "\n"))
    assert.is_true(has(lines, "slot genesys/flat: provider.region: unknown region"), table.concat(lines, "\n"))
    assert.is_true(has(lines, "slot genesys/other: provider.options.cainfo"), table.concat(lines, "\n"))
    assert.is_true(has(lines, "the webhook URL http://10.1.1.1/...: "), table.concat(lines, "\n"))
    for _, l in ipairs(lines) do
      assert.is_nil(l:find(secret, 1, true), l)
      assert.is_nil(l:find(secret:sub(1, 16), 1, true), l)
      assert.is_nil(l:find("WebhookTokenXYZ123", 1, true), l)
      assert.is_nil(l:find("T0SECRET", 1, true), l)
    end
  end)

  it("refuses Genesys regenerate of the provider's own client in the file, as the run would", function()
    -- refused only when the rotation started (kind config, exit 1, also with --dry-run)
    for _, strategy in ipairs { "regenerate", false } do
      local e = slot { strategy = strategy or nil, target = { client_id = "admin" } }
      local lines = problems { store = "./secrets", slots = { e } }
      assert.is_true(has(lines, "slot genesys/app: strategy: strategy \"regenerate\" would replace the secret of "
        .. "client admin, the client this provider object authenticates with"), table.concat(lines, "\n"))
    end
    assert.same({}, problems { store = "./secrets", slots = { slot { strategy = "new_client",
      target = { client_id = "admin" } } } })
  end)

  it("names a misspelt key of a sub-table before the key it lacks because of it", function()
    -- the shape check ("a file path expected") ran first and hid the misspelling
    for _, c in ipairs {
      { { deploy = { kind = "dotenv", pth = "a.env" } }, "deploy.pth: unknown key; did you mean deploy.path?" },
      { { deploy = { kind = "exec", comand = "true" } }, "deploy: comand: unknown option; did you mean command?" },
      { { notify = { webhok = "https://127.0.0.1/x" } },
        "notify: webhok: unknown field; did you mean notify.webhook?" },
      { { audit = { pat = "a.log" } }, "audit: pat: unknown field; did you mean path?" },
    } do
      local lines = problems { store = "./secrets", slots = { slot(c[1]) } }
      assert.is_true(has(lines, "slot genesys/app: " .. c[2]), c[2] .. " in:\n" .. table.concat(lines, "\n"))
      assert.equal(1, #lines, table.concat(lines, "\n"))
    end
  end)

  it("finds misspelt keys at every level, with the closest known key (finding 2)", function()
    local e = slot { stratgy = "new_client" }
    e.target.clientid = "x"
    e.provider.options.cainfoo = "/x"
    local lines = problems { store = "./secrets", concurency = 2, due = { max_age = 3 }, slots = { e } }
    assert.is_true(has(lines, "rotor.conf.lua: slot genesys/app: stratgy: unknown key; did you mean strategy?"))
    assert.is_true(has(lines,
      "rotor.conf.lua: slot genesys/app: target.clientid: unknown target key for genesys; did you mean " ..
        "target.client_id?"))
    assert.is_true(has(lines,
      "rotor.conf.lua: slot genesys/app: provider.options.cainfoo: unknown option; did you mean " ..
        "provider.options.cainfo?"))
    assert.is_true(has(lines, "rotor.conf.lua: concurency: unknown key; did you mean concurrency?"))
    assert.is_true(has(lines, "rotor.conf.lua: due.max_age: unknown key; did you mean due.max_age_days?"))
    assert.equal(5, #lines)
  end)

  it("finds wrong types, unknown kinds and strategies, duplicates and a missing store", function()
    local e2 = slot { slot = "genesys/app" }
    local lines = problems { slots = {
      slot { wait = -1, strategy = "regenrate", force_mint = "yes" },
      e2,
      slot { slot = "x", provider = { kind = "genesis", options = {} } },
      slot { slot = "y", deploy = { kind = "dotenf", path = "a" } },
    } }
    assert.is_true(has(lines, "rotor.conf.lua: store: required, not set"))
    assert.is_true(has(lines, "slot genesys/app: wait: a number of seconds from 0 to 86400 expected, got -1"))
    assert.is_true(has(lines,
      "slot genesys/app: strategy: unknown strategy regenrate for genesys; did you mean regenerate?"))
    assert.is_true(has(lines, "slot genesys/app: force_mint: true or false expected"))
    assert.is_true(has(lines, "slot genesys/app: slot: the name is also used by slots[1]"))
    assert.is_true(has(lines, "slot x: provider.kind: unknown provider kind genesis; did you mean genesys?"))
    assert.is_true(has(lines, "slot y: deploy.kind: unknown deploy kind dotenf; did you mean dotenv?"))
  end)

  it("reports what the provider itself refuses (types, URLs), naming the option", function()
    local e = slot()
    e.provider.options.base_url = "http://example.com"
    e.provider.options.timeout = "soon"
    local lines = problems { store = "s", slots = { e } }
    assert.is_true(has(lines, "slot genesys/app: provider.options."), table.concat(lines, "\n"))
    -- a time limit libcurl cannot be given was taken, and failed every request as a "protocol" error
    for _, t in ipairs { 1e999, 86401 } do
      for _, k in ipairs { "timeout", "connect_timeout" } do
        e = slot()
        e.provider.options[k] = t
        lines = problems { store = "s", slots = { e } }
        assert.is_true(has(lines, "provider.options." .. k .. ": a number of seconds above 0, at most 86400 expected"),
          table.concat(lines, "\n"))
      end
    end
    -- the bound on waits for retries was unbounded: max_wait = 1e9 let a Retry-After of weeks
    -- hold the run for as long
    for _, k in ipairs { "max_wait", "token_margin" } do
      e = slot()
      e.provider.options[k] = 1e9
      lines = problems { store = "s", slots = { e } }
      assert.is_true(has(lines, "provider.options." .. k .. ": a number of seconds from 0 to 86400 expected"),
        table.concat(lines, "\n"))
    end
  end)

  it("reports every unset environment variable the file reads, and load resolves config_dir", function()
    local d = tmpdir()
    local f = d .. "/rotor.conf.lua"
    assert(core.fs_write_atomic(f, [[
return { store = "./s", slots = { { slot = "a", consumers = "none", provider = { kind = "spreetail", options = {
  base_url = "https://127.0.0.1:9", token_url = "https://127.0.0.1:9/t",
  client_id = os.getenv("ROTOR_SPEC_UNSET_ID"), client_secret = os.getenv("ROTOR_SPEC_UNSET_SECRET"),
  proxy = optional_env("ROTOR_SPEC_UNSET_PROXY") } } } }, here = config_dir }
]], 384))
    local cfg, info = assert(config.load(f))
    assert.equal(d, cfg.here)
    assert.equal(d, info.dir)
    local lines = problems(cfg, info)
    cfg.here = nil
    assert.is_true(has(lines,
      f .. ": os.getenv(ROTOR_SPEC_UNSET_ID): the environment variable ROTOR_SPEC_UNSET_ID is not set"))
    assert.is_true(has(lines, "ROTOR_SPEC_UNSET_SECRET is not set"))
    assert.is_false(has(lines, "ROTOR_SPEC_UNSET_PROXY"))
    assert.is_true(has(lines, f .. ": slot a: provider.options.client_secret: required, not set"))
    os.execute("rm -rf '" .. d .. "'")
  end)

  it("refuses a strategy that kills the old secret with no deploy and no consumers = \"none\" (finding 5)", function()
    local e = slot()
    e.consumers = nil
    local lines = problems { store = "s", slots = { e } }
    assert.is_true(has(lines,
      "slot genesys/app: deploy: strategy regenerate of genesys: the old secret stops working at once"))
    e.strategy = "new_client"
    assert.is_true(has(problems { store = "s", slots = { e } }, "the old secret stops working at retire"))
    e.grace = 3600 -- the old client is disabled at once all the same
    assert.is_true(has(problems { store = "s", slots = { e } }, "the old secret stops working at retire"))
    e.strategy, e.grace = nil, nil
    e.deploy = function() return true end
    assert.same({}, problems { store = "s", slots = { e } })
    e.deploy, e.consumers = nil, "some"
    assert.is_true(has(problems { store = "s", slots = { e } }, "consumers: only \"none\" is understood"))
  end)

  -- a notify table was taken as it came: a misspelt field was ignored, and a timeout given as a
  -- string raised an error once the rotation had ended, reported as the rotation's failure
  it("checks a notify spec field by field, and the CA bundles it and a provider name", function()
    local d = tmpdir()
    local fifo, empty = d .. "/ca.fifo", d .. "/empty.pem"
    assert(os.execute("mkfifo " .. fifo))
    assert(core.fs_write_atomic(empty, "no certificate here\n", 420))
    local hook = "https://127.0.0.1:9/hook"
    local cases = {
      { { webhook = hook, timout = 15 }, "notify: timout: unknown field; did you mean notify.timeout?" },
      { { webhook = hook, timeout = "15" },
        "notify: timeout: a number of seconds above 0, at most 86400 expected, got string" },
      { { webhook = hook, connect_timeout = 1e999 },
        "notify: connect_timeout: a number of seconds above 0, at most 86400 expected, got inf" },
      { { webhook = hook, http2 = "yes" }, "notify: http2: true or false expected" },
      { { webhook = hook, cainfo = fifo }, "notify: cainfo: cannot read the CA bundle: " .. fifo
        .. " is not a regular file" },
      { "hooks.example.com/x", "notify: the webhook URL (not shown): not an http(s) URL" },
    }
    for _, c in ipairs(cases) do
      local lines = problems { store = "s", slots = { slot { notify = c[1] } } }
      assert.is_true(has(lines, c[2]), c[2] .. " in:\n" .. table.concat(lines, "\n"))
      lines = problems { store = "s", notify = c[1], slots = { slot() } }
      assert.is_true(has(lines, c[2]), c[2] .. " (config-wide) in:\n" .. table.concat(lines, "\n"))
    end
    assert.same({}, problems { store = "s", slots = { slot { notify = { webhook = hook, on = "failure", timeout = 5,
      connect_timeout = 2, http2 = false } } } })
    -- a provider's cainfo: never waited on, and it must hold a certificate
    for path, msg in pairs { [fifo] = "is not a regular file", [empty] = "holds no PEM certificate",
                             [d] = "is not a regular file" } do
      local e = slot()
      e.provider.options.cainfo = path
      local lines = problems { store = "s", slots = { e } }
      assert.is_true(has(lines, "provider.options.cainfo: "), table.concat(lines, "\n"))
      assert.is_true(has(lines, msg), msg .. " in:\n" .. table.concat(lines, "\n"))
    end
  end)

  -- a file store's table and an exec sink's table were taken without looking at their other keys:
  -- key_fle = "seal.key" left every secret unsealed, imput = "json" deployed the bare secret
  it("checks the options of a file store, a dotenv sink and an exec sink, naming each", function()
    local cases = {
      { { store = { kind = "file", path = "s", key_fle = "seal.key" } },
        "rotor.conf.lua: store: key_fle: unknown option; did you mean key_file?" },
      { { store = { kind = "file", path = "s", journal_max = "50" } },
        "rotor.conf.lua: store: journal_max: a whole number of entries from 20 to 100000 expected" },
      { { store = { kind = "file", path = "s", key_file = "a", key_env = "B" } },
        "rotor.conf.lua: store: key_file and key_env: give one of them, not both" },
      { { deploy = { kind = "exec", command = "cat", imput = "json" } },
        "slot genesys/app: deploy: imput: unknown option; did you mean input?" },
      { { deploy = { kind = "exec", command = "cat", input = "yaml" } },
        "slot genesys/app: deploy: input must be secret, line, json or env" },
      { { deploy = { kind = "exec", command = "cat", path = "x" } }, "slot genesys/app: deploy: path: unknown option" },
      { { deploy = { kind = "dotenv", path = "app.env", secrte = "APP_SECRET" } },
        "slot genesys/app: deploy: secrte: unknown option; did you mean secret?" },
      { { deploy = { kind = "dotenv", path = "app.env", secret = "APP SECRET" } },
        "slot genesys/app: deploy: secret must be a variable name" },
    }
    for _, c in ipairs(cases) do
      local cfg = { store = c[1].store or "s", slots = { slot { deploy = c[1].deploy } } }
      local lines = problems(cfg)
      assert.is_true(has(lines, c[2]), c[2] .. " in:\n" .. table.concat(lines, "\n"))
      assert.equal(1, #lines, table.concat(lines, "\n"))
    end
    assert.same({}, problems { store = { kind = "file", path = "s", journal_max = 500, key_file = "k",
      trusted = { "/srv" } },
      slots = { slot { deploy = { kind = "exec", command = "cat", input = "json", name = "k8s" } } } })
  end)

  -- SP-API's target.application_id (the filter that keeps another application's queue messages out)
  -- and visibility were read by the rotation but refused in a config file as unknown keys
  it("takes every target key and slot option the rotation reads, for SP-API too", function()
    local e = { slot = "spapi/app", consumers = "none", target = { application_id = "amzn1.sp.solution.x" },
      visibility = 120, provider = { kind = "spapi", options = { client_id = "amzn1.application-oa2-client.x",
        client_secret = "not-a-real-secret", sqs = { queue_url = "https://127.0.0.1:9/123456789012/rotor",
          access_key = "AKIDEXAMPLE", secret_key = "not-a-real-secret", region = "us-east-1" } } } }
    assert.same({}, problems { store = "s", slots = { e } })
    e.visibility = 0
    assert.is_true(has(problems { store = "s", slots = { e } },
      "visibility: a number of seconds from 1 to 43200 expected"))
    -- a wait or grace beyond its bounds is a typo (wait = 1e9 held the slot's lock for ever)
    e.visibility, e.wait, e.grace = 120, 1e9, 1e12
    local got = problems { store = "s", slots = { e } }
    assert.is_true(has(got, "wait: a number of seconds from 0 to 86400 expected, got 1000000000"), got)
    assert.is_true(has(got, "grace: a number of seconds from 0 to 31622400 expected"), got)
    assert.is_true(has(problems { store = "s", wait = -1, slots = { { slot = "x", provider = { kind = "genesys" } } } },
      "wait: a number of seconds from 0 to 86400 expected, got -1"))
    -- every key a strategy reads from ctx.target is in the schema of its provider
    for kind, p in pairs(config.PROVIDERS) do
      local src = assert(io.open("lua/rotor/strategies/" .. kind .. ".lua")):read("*a")
      for k in src:gmatch("ctx%.target%.([%w_]+)") do
        assert.is_table(p.target[k], kind .. ": target." .. k .. " is read but not in the schema")
      end
    end
  end)

  it("names a misspelt field of an audit table (a trail without its key has no fingerprints)", function()
    local lines = problems { store = "s", audit = { path = "audit.log", kee = "k" }, slots = { slot() } }
    assert.is_true(has(lines, "audit: kee: unknown field; did you mean key?"), table.concat(lines, "\n"))
    local ok, err = pcall(require("rotor.audit").open, { path = "/tmp/x.log", kee = "k" })
    assert.is_false(ok)
    assert.matches("audit.open: kee: unknown field; did you mean key?", err, 1, true)
  end)

  -- two slots of one file rotating the same Genesys client both ran: the second rotation killed the
  -- secret the first had stored and deployed, locking the first slot's consumers out
  it("refuses two slots that rotate one credential, naming both", function()
    local a, b = slot { slot = "genesys/a" }, slot { slot = "genesys/b" }
    local lines = problems { store = "s", slots = { a, b } }
    assert.equal(1, #lines, table.concat(lines, "\n"))
    assert.is_true(has(lines, "slot genesys/b: target.client_id: the slot rotates the same credential as slot "
      .. "genesys/a (genesys client app at https://127.0.0.1:9/genesys)"), table.concat(lines, "\n"))
    b.strategy = "new_client"
    assert.equal(1, #problems { store = "s", slots = { a, b } })
    -- another client, or the same client id in another account, is another credential
    b.target = { client_id = "other" }
    assert.same({}, problems { store = "s", slots = { a, b } })
    b.target = { client_id = "app" }
    b.provider.options.base_url = "https://127.0.0.2:9/genesys"
    assert.same({}, problems { store = "s", slots = { a, b } })
    -- a provider rotating its own credential: the same client id twice
    local function sp(name)
      return { slot = name, consumers = "none", provider = { kind = "spreetail", options = {
        base_url = "https://127.0.0.1:9/spreetail", token_url = "https://127.0.0.1:9/t", client_id = "pair",
        client_secret = "not-a-real-secret" } } }
    end
    assert.is_true(has(problems { store = "s", slots = { sp("s/1"), sp("s/2") } },
      "slot s/2: provider.options.client_id: the slot rotates the same credential as slot s/1 "
        .. "(spreetail client pair at https://127.0.0.1:9/spreetail)"))
    -- an SP-API app's Login with Amazon client is one credential in every region and the sandbox:
    -- two slots for it in two regions passed, and rotating it in one left the other's secret to expire
    local function app(name, region, sandbox)
      return { slot = name, consumers = "none", provider = { kind = "spapi", options = { region = region,
        sandbox = sandbox, client_id = "amzn1.application-oa2-client.x", client_secret = "not-a-real-secret",
        sqs = { queue_url = "https://sqs.us-east-1.amazonaws.com/1/q", access_key = "AKIDEXAMPLE",
          secret_key = "not-a-real-secret" } } } }
    end
    for _, other in ipairs { app("spapi/eu", "eu"), app("spapi/sandbox", "na", true) } do
      local found = problems { store = "s", slots = { app("spapi/na", "na"), other } }
      assert.is_true(has(found, "slot " .. other.slot .. ": provider.options.client_id: the slot rotates the same "
        .. "credential as slot spapi/na (spapi client amzn1.application-oa2-client.x at Login with Amazon)"),
        table.concat(found, "\n"))
    end
  end)

  it("bounds a due rule's days (a date beyond any date ended status in a traceback)", function()
    for _, due in ipairs { { max_age_days = 1e300 }, { before_expiry_days = 1 / 0 }, { max_age_days = 36501 } } do
      local lines = problems { store = "s", due = due, slots = { slot { due = due } } }
      assert.equal(2, #lines, table.concat(lines, "\n"))
      assert.is_true(has(lines, "a number of days above 0, at most 36500 (or false: rule off) expected"))
    end
    assert.same({}, problems { store = "s", due = { max_age_days = 36500, before_expiry_days = false },
      slots = { slot() } })
  end)

  it("knows every provider option, target key and strategy the code has, and no other", function()
    local rotor = require "rotor"
    for kind, p in pairs(config.PROVIDERS) do
      local strategies = require("rotor.strategies." .. kind)
      for n in pairs(strategies.strategies) do
        assert.is_table(p.strategies[n], kind .. " strategy " .. n .. " is not in the schema")
      end
      for n, s in pairs(p.strategies) do
        assert.is_table(strategies.strategies[n], kind .. " strategy " .. n .. " is in the schema only")
        assert.equal(strategies.default == n, s.default == true, kind .. " default strategy")
      end
      -- every documented option is one the provider accepts
      local opts = { client_id = "x", client_secret = "y", base_url = "https://127.0.0.1:9",
        token_url = "https://127.0.0.1:9/t" }
      local probe = { string = "eu_west_1", boolean = true, number = 5, integer = 1, URL = "https://127.0.0.1:9/x",
        ["table or false"] = false, path = nil }
      for _, section in ipairs { config.PROVIDER_COMMON.keys, p.options } do
        for name, doc in pairs(section) do
          if opts[name] == nil and probe[doc.type] ~= nil and name ~= "cainfo" and name ~= "sqs" then
            local o = {}
            for k, v in pairs(opts) do o[k] = v end
            o[name] = probe[doc.type]
            if kind ~= "genesys" and name == "region" then o[name] = "eu" end
            if name == "token_style" then o[name] = "weblink" end
            local ok, obj, err = pcall(rotor[kind], o)
            local msg = tostring(ok and err and err.message or (not ok and obj) or "")
            assert.is_nil(msg:find("unknown option", 1, true), kind .. " option " .. name .. ": " .. msg)
          end
        end
      end
      local ok, _, err = pcall(rotor[kind], { client_id = "x", client_secret = "y", no_such_option = 1 })
      assert.is_true(ok)
      assert.truthy(tostring(err and err.message):find("unknown option", 1, true))
    end
  end)

  it("is the source of doc/CONFIG.md", function()
    local f = assert(io.open("doc/CONFIG.md", "rb"))
    local doc = f:read("*a")
    f:close()
    assert.equal(config.reference() .. "\n", doc,
      "doc/CONFIG.md is stale: ./build/rotor config-reference > doc/CONFIG.md")
    for _, k in ipairs(config.ROTATE.order) do assert.truthy(doc:find("`" .. k .. "`", 1, true), k) end
  end)

  it("documents only rotor.rotate options that the rotation reads", function()
    local src = ""
    for _, f in ipairs { "lua/rotor/rotation.lua", "lua/rotor/strategies/genesys.lua",
      "lua/rotor/strategies/spapi.lua" } do
      src = src .. assert(io.open(f)):read("*a")
    end
    for _, k in ipairs(config.ROTATE.order) do
      assert.truthy(src:find("o%." .. k .. "%f[^%w_]") or src:find("opts%." .. k .. "%f[^%w_]"), k)
    end
  end)

  it("hands a store of another kind to its module's check, and refuses an unknown kind", function()
    package.loaded["rotor.store.specfake"] = {
      open = function() return nil, "not in this spec" end,
      check = function(spec) if spec.endpoints == nil then return nil, "store.endpoints: required" end return true end,
    }
    local e = slot()
    assert.is_true(has(problems { store = { kind = "specfake" }, slots = { e } },
      "rotor.conf.lua: store: store.endpoints: required"))
    assert.same({}, problems { store = { kind = "specfake", endpoints = { "x" } }, slots = { e } })
    assert.is_true(has(problems { store = { kind = "nosuchkind" }, slots = { e } },
      "store.kind: unknown store kind nosuchkind: \"file\" (a directory), \"etcd\", or a module rotor.store.nosuchkind "
      .. "with open"))
    package.loaded["rotor.store.specfake"] = nil
    -- a module of that name that does not load: its error, not "unknown"
    package.preload["rotor.store.specbroken"] = function() error("specbroken: a syntax error near line 3") end
    local broken = problems { store = { kind = "specbroken" }, slots = { e } }
    assert.is_true(has(broken, "store.kind: the store module rotor.store.specbroken does not load: "))
    assert.is_true(has(broken, "a syntax error near line 3"))
    package.preload["rotor.store.specbroken"], package.loaded["rotor.store.specbroken"] = nil, nil
    -- a deploy sink as the store
    for _, kind in ipairs { "dotenv", "exec" } do
      local text = problems { store = { kind = kind, path = "app.env", command = "cat" }, slots = { e } }
      assert.is_true(has(text, ("rotor.conf.lua: store.kind: kind %q is a deploy sink, not a store: it hands the new "
        .. "secret to its consumers and keeps no record. Set it as a slot's deploy"):format(kind)),
        table.concat(text, "\n"))
      local _, err = require("rotor.store").open({ kind = kind, path = "app.env" }, "/tmp")
      assert.truthy(err:find("is a deploy sink, not a store", 1, true), err)
    end
  end)

  it("names the level a key belongs to when it is set at the other one", function()
    local e = slot()
    e.store, e.concurrency = "secrets", 2
    local text = problems { store = "secrets", slots = { e }, deploy = function() end, strategy = "new_client" }
    for _, want in ipairs {
      "rotor.conf.lua: deploy: a slot's key, not the file's: set it in each slot of slots (slots = { { slot = ..., "
        .. "provider = ..., deploy = ... } })",
      "rotor.conf.lua: strategy: a slot's key, not the file's: set it in each slot of slots",
      ": store: a key of the whole file, not of a slot: set it once at the top, beside slots",
      ": concurrency: a key of the whole file, not of a slot: set it once at the top, beside slots",
    } do
      assert.is_true(has(text, want), want .. "\n" .. table.concat(text, "\n"))
    end
    -- a key known at neither level still gets the closest name
    assert.is_true(has(problems { store = "secrets", slots = { slot() }, slotz = {} },
      "rotor.conf.lua: slotz: unknown key; did you mean slots?"))
    -- a due policy's key beside the policy, a provider option in the slot, a slot's key among the
    -- provider's options: each named with where it goes
    e = slot { max_age_days = 3, client_id = "x", cainfo = "/ca.pem" }
    e.provider.options.target = { client_id = "y" }
    text = problems { store = "secrets", max_age_days = 30, slots = { e } }
    for _, want in ipairs {
      "rotor.conf.lua: max_age_days: a due policy's key: due = { max_age_days = ... }",
      "slot genesys/app: max_age_days: a due policy's key: due = { max_age_days = ... }",
      "slot genesys/app: client_id: a provider option, not a slot's key: provider = { kind = ..., options = { "
        .. "client_id = ... } } (the client rotor authenticates with; the client a slot rotates is target.client_id)",
      "slot genesys/app: cainfo: a provider option, not a slot's key",
      "slot genesys/app: provider.options.target: a slot's key, not a provider option: set it beside provider",
    } do
      assert.is_true(has(text, want), want .. "\n" .. table.concat(text, "\n"))
    end
  end)

  it("suggests the closest name only when it is close", function()
    assert.equal("strategy", config.suggest("stratgy", { "slot", "strategy", "target" }))
    assert.equal("status", config.suggest("statsu", { "status", "due", "rotate" }))
    assert.is_nil(config.suggest("zebra", { "status", "due", "rotate" }))
  end)
end)

describe("rotor.policy (finding 3)", function()
  local now = os.time()

  it("makes a secret without provider expiry due by the default max_age_days", function()
    local rec = { versions = { current = { secret = "x", created = iso(now - 2527 * 86400) } } }
    local due, reason, info = policy.due(rec, nil, now)
    assert.is_true(due)
    assert.truthy(reason:find("2527.0 days old (max_age_days = 90)", 1, true), reason)
    assert.equal("max_age_days", info.rule)
    rec.versions.current.created = iso(now - 10 * 86400)
    due, reason, info = policy.due(rec, nil, now)
    assert.is_false(due)
    assert.equal(now + 80 * 86400, info.next_due)
    assert.truthy(reason:find(os.date("!%Y-%m-%d", now + 80 * 86400), 1, true), reason)
  end)

  it("uses before_expiry_days when the provider gives an expiry, max_age_days only when set", function()
    local rec = { versions = { current = { secret = "x", created = iso(now - 200 * 86400),
      expires = iso(now + 30 * 86400) } } }
    local due, _, info = policy.due(rec, {}, now)
    assert.is_false(due)
    assert.equal(now + 16 * 86400, info.next_due)
    assert.equal("before_expiry_days", info.rule)
    assert.is_true((policy.due(rec, { max_age_days = 100 }, now)))
    assert.is_true((policy.due(rec, { before_expiry_days = 31 }, now)))
  end)

  it("turns a rule off with false, and merges global, slot and flags key by key", function()
    local rec = { versions = { current = { secret = "x", created = iso(now - 2527 * 86400) } } }
    local due, reason = policy.due(rec, { max_age_days = false }, now)
    assert.is_false(due)
    assert.truthy(reason:find("no rule applies", 1, true))
    assert.same({ max_age_days = 10, before_expiry_days = 3 },
      policy.merge({ max_age_days = 30, before_expiry_days = 3 }, { max_age_days = 10 }, { max_age_days = nil }))
  end)

  it("is due now for an unfinished rotation or a missing secret", function()
    assert.is_true((policy.due({ rotation = { id = "r1" }, versions = { current = { secret = "x",
      created = iso(now) } } }, nil, now)))
    assert.is_true((policy.due({ versions = {} }, nil, now)))
  end)
end)

describe("rotor.store.open (finding 1)", function()
  it("resolves a relative path against the config's directory", function()
    local store = require "rotor.store"
    local d = tmpdir()
    local s = assert(store.open("./secrets", d))
    assert.equal(d .. "/secrets", s.dir)
    s = assert(store.open({ kind = "file", path = "other" }, d))
    assert.equal(d .. "/other", s.dir)
    s = assert(store.open({ kind = "file", path = d .. "/abs" }, "/nonexistent"))
    assert.equal(d .. "/abs", s.dir)
    local none, err = store.open({ kind = "nosuchkind" }, d)
    assert.is_nil(none)
    assert.truthy(err:find("unknown store kind", 1, true))
    os.execute("rm -rf '" .. d .. "'")
  end)
end)
