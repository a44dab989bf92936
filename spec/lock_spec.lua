-- Two rotors on one slot: the second, started once the first has stored its new secret (no race at
-- the lock), exits 75 at once with a message that says the slot is locked by another rotor; the
-- first finishes. Also the CLI's exit code and stopping on signals.
local core = require "rotor.core"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local SCRIPT = "spec/helpers/rotate_script.lua"

describe("per-slot lock across processes #proc", function()
  local s
  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  it("refuses a second rotor while the first, having stored its new secret, holds the slot", function()
    local fx = fixtures.seed(s, "genesys")
    local dir = s.dir .. "/lock-spec"
    assert(core.fs_mkdir(dir .. "/store", 448))
    local env = fixtures.env(s, fx, dir .. "/store")
    -- the first rotor's deploy hook waits for this file: it holds the lock until the spec lets go
    env.ROTOR_T_DEPLOY_GATE = dir .. "/gate"
    fixtures.write_env(dir .. "/env", env)
    local q = sim.shell_quote
    local function one(n)
      return ("(. %s && %s %s > %s 2> %s; echo $? > %s)"):format(q(dir .. "/env"), ROTOR, SCRIPT,
        q(dir .. "/o" .. n), q(dir .. "/e" .. n), q(dir .. "/rc" .. n .. ".tmp"))
        .. " && mv " .. q(dir .. "/rc" .. n .. ".tmp") .. " " .. q(dir .. "/rc" .. n)
    end
    local rotor = require "rotor"
    local store = assert(rotor.store.file(dir .. "/store"))
    -- the first rotor, in the background
    sim.run("(" .. one(1) .. ") </dev/null >/dev/null 2>&1 & true")
    -- wait (no time bound in the check: up to 60 s of polling) until it has durably stored the new
    -- secret (create ok: the steps after it go to disk with the next durable entry)
    local rec
    for _ = 1, 1200 do
      rec = store:get(fx.slot)
      local created = false
      for _, e in ipairs(rec and rec.journal or {}) do
        if e.step == "create" and e.outcome == "ok" then created = true end
      end
      if created or core.fs_exists(dir .. "/rc1") then break end
      rotor.sleep(0.05)
    end
    assert.is_false(core.fs_exists(dir .. "/rc1"), "the first rotor ended early: "
      .. tostring(core.fs_read(dir .. "/e1")))
    assert.truthy(assert(rec, "the first rotor journalled nothing").rotation)
    -- the second rotor meets the lock
    local out, rc = sim.run(("(. %s && %s %s) 2>&1"):format(q(dir .. "/env"), ROTOR, SCRIPT))
    assert.equal(75, rc, out)
    assert.truthy(out:find("slot " .. fx.slot .. " is locked by another rotor (pid ", 1, true), out)
    -- the first rotor lets go and finishes
    assert(core.fs_write_atomic(dir .. "/gate", "", 384))
    for _ = 1, 1200 do
      if core.fs_exists(dir .. "/rc1") then break end
      rotor.sleep(0.05)
    end
    assert.equal(0, tonumber(core.fs_read(dir .. "/rc1")), core.fs_read(dir .. "/e1"))
    local counters = fixtures.control(s, "GET", "/counters")
    assert.equal(1, (counters.counters or counters)[fx.mint_path])
    rec = assert(store:get(fx.slot))
    assert.is_nil(rec.rotation)
    assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
    -- one rotation in the journal, started once, never resumed by the second rotor
    local starts, resumes = 0, 0
    for _, e in ipairs(rec.journal) do
      if e.step == "rotation" and e.outcome == "start" then starts = starts + 1 end
      if e.step == "rotation" and e.outcome == "resume" then resumes = resumes + 1 end
    end
    assert.same({ 1, 0 }, { starts, resumes })
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
