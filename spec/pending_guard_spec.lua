-- Never mint over a pending secret: per provider, a run stops right after the minted secret was
-- stored as pending (its log callback raises as the "create: ok" entry is journalled: the run
-- stops there, as a crash at that point would stop it); the rerun finds the pending secret, mints nothing, and promotes
-- that very secret. (The crash matrix covers the same with SIGKILL; this one needs no crash hook.)
local core = require "rotor.core"
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local counter = fixtures.counter

describe("a pending secret", function()
  local s, root
  setup(function()
    s = sim.start()
    root = s.dir .. "/pending-spec"
    assert(core.fs_mkdir(root, 448))
  end)
  teardown(function() if s then s:stop() end end)

  for _, kind in ipairs(fixtures.KINDS) do
    it(kind .. ": is never replaced by a second mint; the rerun promotes it", function()
      local fx = fixtures.seed(s, kind)
      local store = assert(rotor.store.file(root .. "/" .. kind))
      local minted = counter(s, fx.mint_path)
      local o = { slot = fx.slot, provider = fixtures.provider(fx), store = store, target = fx.target,
                  wait = fx.wait, verify_delay = 0.2,
                  log = function(line)
                    if line:find(": create: ok", 1, true) then error("stopped after create (spec)", 0) end
                  end }
      local res, err = rotor.rotate(o)
      assert.is_nil(res)
      assert.matches("stopped after create (spec)", tostring(err), 1, true)
      local rec = assert(store:get(fx.slot))
      local pending = assert(rec.versions.pending, "nothing pending after create")
      assert.equal("create", rec.rotation.step)
      assert.equal(minted + 1, counter(s, fx.mint_path))

      o.log, o.provider = nil, fixtures.provider(fx)
      res, err = rotor.rotate(o)
      assert.is_nil(err)
      assert.truthy(res)
      assert.equal(minted + 1, counter(s, fx.mint_path))
      rec = assert(store:get(fx.slot))
      assert.is_nil(rec.versions.pending)
      assert.is_true(rec.versions.current.secret:equals(pending.secret))
      local noted = false
      for _, e in ipairs(rec.journal) do
        if e.step == "create" and e.outcome == "done" and e.note == "a pending secret is already stored" then
          noted = true
        end
      end
      assert.is_true(noted, "the rerun did not journal that a pending secret was already stored")
    end)
  end
end)
