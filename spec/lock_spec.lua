-- Two rotors started on one slot at the same moment: exactly one rotates, the other exits non-zero
-- (75) at once with a message that says the slot is locked by another rotor.
local core = require "rotor.core"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local SCRIPT = "spec/helpers/rotate_script.lua"

describe("per-slot lock across processes #proc", function()
  local s
  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  it("lets exactly one of two simultaneous rotors rotate", function()
    local fx = fixtures.seed(s, "genesys")
    local dir = s.dir .. "/lock-spec"
    assert(core.fs_mkdir(dir .. "/store", 448))
    local env = fixtures.env(s, fx, dir .. "/store")
    env.ROTOR_T_DEPLOY_SLEEP = "1.5" -- the winner holds the lock a while
    fixtures.write_env(dir .. "/env", env)
    local q = sim.shell_quote
    local function one(...) return ("(. %s && %s %s > %s 2> %s; echo $? > %s)"):format(...) end
    local cmd = "(" .. one(q(dir .. "/env"), ROTOR, SCRIPT, q(dir .. "/o1"), q(dir .. "/e1"), q(dir .. "/rc1")) .. " & "
      .. one(q(dir .. "/env"), ROTOR, SCRIPT, q(dir .. "/o2"), q(dir .. "/e2"), q(dir .. "/rc2")) .. " & wait)"
    local r1, r2, r3 = os.execute(cmd)
    assert(core.fs_exists(dir .. "/rc1"), cmd .. " -> " .. tostring(r1) .. tostring(r2) .. tostring(r3))
    local rc = { tonumber(core.fs_read(dir .. "/rc1")), tonumber(core.fs_read(dir .. "/rc2")) }
    table.sort(rc)
    assert.same({ 0, 75 }, rc)
    local errtext = (core.fs_read(dir .. "/e1") or "") .. (core.fs_read(dir .. "/e2") or "")
    assert.truthy(errtext:find("slot " .. fx.slot .. " is locked by another rotor (pid ", 1, true), errtext)
    local counters = fixtures.control(s, "GET", "/counters")
    assert.equal(1, (counters.counters or counters)[fx.mint_path])
    local rotor = require "rotor"
    local rec = assert(assert(rotor.store.file(dir .. "/store")):get(fx.slot))
    assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
  end)

  it("rotor rotate --config exits 75 when the slot is locked", function()
    local fx = fixtures.seed(s, "spreetail")
    local dir = s.dir .. "/lock-cli"
    local rotor = require "rotor"
    local store = assert(rotor.store.file(dir .. "/store"))
    local cfg = dir .. "/rotor.conf.lua"
    assert(core.fs_write_atomic(cfg, ([[return { store = %q, slots = { { slot = %q, consumers = "none",
      provider = { kind = "spreetail", options = { base_url = %q, token_url = %q, cainfo = %q,
        client_id = os.getenv("T_ID"), client_secret = os.getenv("T_SECRET") } } } } }]]):format(
      dir .. "/store", fx.slot, fx.opts.base_url, fx.opts.token_url, s.ca), 384))
    fixtures.write_env(dir .. "/env", { T_ID = fx.opts.client_id, T_SECRET = fx.opts.client_secret })
    local lock = assert(store:lock(fx.slot))
    local q = sim.shell_quote
    local out, rc = sim.run(("(. %s && %s rotate --config %s) 2>&1"):format(q(dir .. "/env"), ROTOR, q(cfg)))
    lock:unlock()
    assert.equal(75, rc)
    assert.matches("LOCKED", out)
    assert.matches("locked by another rotor", out)
    out, rc = sim.run(("(. %s && %s rotate --config %s) 2>&1"):format(q(dir .. "/env"), ROTOR, q(cfg)))
    assert.equal(0, rc, out)
    assert.matches("rotated  " .. fx.slot, out, 1, true)
  end)

  for _, sig in ipairs { "TERM", "INT" } do
    it("stops after the current step on SIG" .. sig .. ", and the next run resumes there", function()
      local fx = fixtures.seed(s, "spreetail")
      local dir = s.dir .. "/signal-" .. sig
      assert(core.fs_mkdir(dir .. "/store", 448))
      local env = fixtures.env(s, fx, dir .. "/store")
      env.ROTOR_T_DEPLOY_SIGNAL = sig
      fixtures.write_env(dir .. "/env", env)
      local q = sim.shell_quote
      local function mints()
        local counters = fixtures.control(s, "GET", "/counters")
        return (counters.counters or counters)[fx.mint_path] or 0
      end
      local before = mints()
      local out, rc = sim.run(("(. %s && %s %s) 2>&1"):format(q(dir .. "/env"), ROTOR, SCRIPT))
      assert.equal(130, rc, out)
      assert.matches("stopping after the current step", out)
      assert.matches("stopped on a signal before step promote; the next run resumes there", out, 1, true)
      local rotor = require "rotor"
      local rec = assert(assert(rotor.store.file(dir .. "/store")):get(fx.slot))
      assert.equal("promote", rec.rotation.step)
      assert.is_truthy(rec.versions.pending)
      -- the rerun, without the signal, finishes from promote on: no second mint
      env.ROTOR_T_DEPLOY_SIGNAL = nil
      fixtures.write_env(dir .. "/env", env)
      out, rc = sim.run(("(. %s && %s %s) 2>&1"):format(q(dir .. "/env"), ROTOR, SCRIPT))
      assert.equal(0, rc, out)
      assert.equal(before + 1, mints())
      rec = assert(assert(rotor.store.file(dir .. "/store")):get(fx.slot))
      assert.is_nil(rec.rotation)
      assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
    end)
  end
end)
