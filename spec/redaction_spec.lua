-- Redaction against a provider that quotes the request back: the simulator's `echo` fault answers
-- with the body as sent, the Authorization (or x-amz-access-token) header and every credential
-- field, raw, form-encoded and JSON-escaped. Per provider, at the token endpoint and at the minting
-- endpoint, neither the error, nor the rotation's log lines, journal and audit trail, nor the
-- output of `rotor rotate` may hold a secret or an access token in any form (spec.helpers.leakforms).
local core = require "rotor.core"
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"
local leakforms = require "spec.helpers.leakforms"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"

local TOKEN_PATHS = {
  genesys = "/genesys/login/oauth/token", spreetail = "/spreetail/api/v0/oauth/token",
  paylocity = "/paylocity/IdentityServer/connect/token", spapi = "/lwa/auth/o2/token",
}

-- one call that needs a token, per provider
local CALLS = {
  genesys = function(p) return p:get_oauth_clients() end,
  spreetail = function(p) return p:list_client_credentials() end,
  paylocity = function(p, fx) return p:obtain_new_client_secret { code = fx.code } end,
  spapi = function(p) return p:rotate_application_client_secret() end,
}

-- a Lua literal of a plain table (strings, numbers, booleans, tables)
local function literal(v)
  if type(v) == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = "[" .. ("%q"):format(k) .. "] = " .. literal(v[k]) end
    return "{ " .. table.concat(parts, ", ") .. " }"
  elseif type(v) == "string" then
    return ("%q"):format(v)
  end
  return tostring(v)
end

describe("redaction against a provider that echoes the request", function()
  local s, issued_log, root
  setup(function()
    root = sim.tmpdir("redaction")
    issued_log = root .. "/issued"
    s = sim.start { env = { ROTOR_SECRETS_LOG = issued_log } }
  end)
  teardown(function()
    if s then s:stop() end
    if not os.getenv("ROTOR_SIM_KEEP") then sim.run("rm -rf " .. sim.shell_quote(root)) end
  end)

  -- every secret and access token the simulator issued or was seeded with so far, plus extras
  local function known(...)
    local all = leakforms.read_issued(issued_log)
    for _, v in ipairs { ... } do all[#all + 1] = core.is_secret(v) and v:reveal() or v end
    assert.is_true(#all >= 3, "the simulator recorded no secrets in " .. issued_log)
    return all
  end

  local function assert_clean(what, text, values)
    local form, i = leakforms.find(text, values)
    assert(form == nil, ("%s holds an issued secret or token (value #%s, %s): %s"):format(
      what, tostring(i), tostring(form), tostring(text):gsub("%c", " "):sub(1, 600)))
  end

  local function echoed(kind, path)
    -- the fault was met: the simulator logged it
    for _, e in ipairs(s:log()) do
      if e.path == path and e.fault == "echo" then return true end
    end
    error(kind .. ": the echo fault at " .. path .. " was never met")
  end

  for _, kind in ipairs(fixtures.KINDS) do
    describe(kind, function()
      it("an echoed token request leaves no secret in the error", function()
        local fx = fixtures.seed(s, kind)
        local p = fixtures.provider(fx)
        s:fault { path = TOKEN_PATHS[kind], echo = true, status = 401 }
        local res, err = CALLS[kind](p, fx)
        assert.is_nil(res)
        assert.equal("auth", err.kind)
        echoed(kind, TOKEN_PATHS[kind])
        local values = known(fx.opts.client_secret)
        assert_clean("tostring(err)", tostring(err), values)
        assert_clean("err.message", err.message, values)
        assert_clean("err.detail", err.detail, values)
        -- the provider's text is kept (redacted), not dropped
        assert.matches("cannot process the request", tostring(err), 1, true)
      end)

      it("an echoed verify request leaves no secret in the error", function()
        local fx = fixtures.seed(s, kind)
        local p = fixtures.provider(fx)
        local other = "vf+" .. core.random_hex(8) .. "/x=="
        s:fault { path = TOKEN_PATHS[kind], echo = true, status = 400 }
        local ok, err = p:verify { client_id = fx.bootstrap.client_id, client_secret = other }
        assert.is_nil(ok)
        echoed(kind, TOKEN_PATHS[kind])
        local values = known(fx.opts.client_secret, other)
        assert_clean("tostring(err)", tostring(err), values)
        assert_clean("err.detail", err.detail, values)
      end)

      it("an echoed minting request: error, log lines, journal, audit and `rotor rotate` output are clean",
        function()
          local fx = fixtures.seed(s, kind)
          local dir = root .. "/" .. kind .. "-" .. core.random_hex(3)
          local store = assert(rotor.store.file(dir .. "/store"))
          -- a token first, so the echo carries one
          s:fault { path = fx.mint_path, method = fx.mint_method, echo = true, count = 2 }
          local lines = {}
          local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = store,
            target = fx.target, wait = fx.wait, verify_delay = 0.2,
            log = function(line) lines[#lines + 1] = line end }
          assert.is_nil(res)
          assert.equal("create", err.step)
          echoed(kind, fx.mint_path)
          local values = known(fx.opts.client_secret)
          assert_clean("tostring(err)", tostring(err), values)
          assert_clean("err.detail", err.detail, values)
          assert_clean("the log lines", table.concat(lines, "\n"), values)
          local slot_file = core.fs_read(dir .. "/store/" .. require("rotor.store.file").encode(fx.slot) .. ".json")
          assert.truthy(slot_file)
          assert_clean("the slot's journal", slot_file, values)
          assert_clean("the audit trail", core.fs_read(dir .. "/store/audit.log") or "", values)

          -- the same through the command line, with its own store
          local opts_file, cfg = dir .. "/opts.lua", dir .. "/rotor.conf.lua"
          -- secrets reach the child through its environment only
          local o = {}
          for k, v in pairs(fx.opts) do if k ~= "client_secret" then o[k] = v end end
          local sqs_secret
          if o.sqs then
            o.sqs = {}
            for k, v in pairs(fx.opts.sqs) do if k ~= "secret_key" then o.sqs[k] = v end end
            sqs_secret = fx.opts.sqs.secret_key
          end
          assert(core.fs_write_atomic(opts_file, "return " .. literal(o) .. "\n", 384))
          assert(core.fs_write_atomic(cfg, ([[
local o = dofile(%q)
o.client_secret = os.getenv("T_SECRET")
if o.sqs then o.sqs.secret_key = os.getenv("T_SQS_SECRET") end
return { store = %q, wait = %s, slots = { { slot = %q, target = %s, consumers = "none",
  provider = { kind = %q, options = o } } } }
]]):format(opts_file, dir .. "/cli-store", tostring(fx.wait or 5), fx.slot, literal(fx.target), kind), 384))
          fixtures.write_env(dir .. "/env", { T_SECRET = fx.opts.client_secret, T_SQS_SECRET = sqs_secret })
          local out, rc = sim.run(("(. %s && %s rotate --config %s) 2>&1"):format(
            sim.shell_quote(dir .. "/env"), ROTOR, sim.shell_quote(cfg)))
          assert.equal(1, rc, out)
          assert.matches("create", out)
          values = known(fx.opts.client_secret)
          assert_clean("the output of rotor rotate", out, values)
          assert(core.fs_write_atomic(dir .. "/cli-output.log", out, 384))   -- for the leak scan too
        end)
    end)
  end
end)
