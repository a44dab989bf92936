-- The verify step against a provider that refuses the freshly minted secret (the simulator's
-- `issued` filter: its token endpoint answers 401 to any request carrying a secret it issued).
-- Per provider: the rotation fails at verify, the new secret stays pending, nothing is promoted and
-- the provider object keeps its old credential; once the provider accepts it, the rerun verifies
-- the same pending secret (no second mint) and promotes it. SP-API verifies each new-secret message
-- as it reads it (a message whose secret is refused may be forged or stale): there the rotation
-- fails in create, the refused secret is journalled as discarded and never stored or promoted.
local core = require "rotor.core"
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local TOKEN_PATHS = {
  genesys = "/genesys/login/oauth/token", spreetail = "/spreetail/api/v0/oauth/token",
  paylocity = "/paylocity/IdentityServer/connect/token", spapi = "/lwa/auth/o2/token",
}

local counter = fixtures.counter

local function refused(s, path)
  local n = 0
  for _, e in ipairs(s:log()) do
    if e.path == path and e.status == 401 and e.fault then n = n + 1 end
  end
  return n
end

describe("the verify step", function()
  local s, root
  setup(function()
    s = sim.start()
    root = s.dir .. "/verify-spec"
    assert(core.fs_mkdir(root, 448))
  end)
  teardown(function() if s then s:stop() end end)
  after_each(function() s:control("DELETE", "/faults") end)

  for _, kind in ipairs(fixtures.KINDS) do
    it(kind .. ": a minted secret the provider refuses stays pending and is never promoted", function()
      local fx = fixtures.seed(s, kind)
      local store = assert(rotor.store.file(root .. "/" .. kind))
      local minted = counter(s, fx.mint_path)
      s:fault { path = TOKEN_PATHS[kind], status = 401, issued = true, count = 50,
                body = { error = "invalid_client", error_description = "simulated: secret not active yet" } }
      local refused_before = refused(s, TOKEN_PATHS[kind])
      local p = fixtures.provider(fx)
      local o = { slot = fx.slot, provider = p, store = store, target = fx.target, wait = fx.wait,
                  verify_attempts = 2, verify_delay = 0 }
      local res, err = rotor.rotate(o)
      assert.is_nil(res)
      -- both attempts met the refusal, with the new secret
      assert.is_true(refused(s, TOKEN_PATHS[kind]) >= refused_before + 2)
      assert.equal(minted + 1, counter(s, fx.mint_path))
      local rec = assert(store:get(fx.slot))
      if kind == "spapi" then
        assert.equal("create", err.step)
        assert.is_nil(rec.versions.pending)
        assert.is_nil(rec.versions.current.secret)
        local discarded = false
        for _, e in ipairs(rec.journal) do
          assert.are_not.equal("verify", e.step)
          assert.are_not.equal("promote", e.step)
          if e.step == "create" and e.outcome == "discarded" then discarded = true end
        end
        assert.is_true(discarded, "the refused secret was not journalled as discarded")
        assert.equal(fx.opts.client_id, p.client_id)
        return
      end
      assert.equal("verify", err.step)
      assert.equal("auth", err.kind)
      assert.matches("was refused when verified", err.message, 1, true)
      assert.matches("it stays pending", err.message, 1, true)
      assert.equal("verify", rec.rotation.step)
      local pending = assert(rec.versions.pending, "the minted secret is not pending")
      assert.is_true(core.is_secret(pending.secret))
      -- nothing promoted: current is still the credential from before the rotation
      assert.is_nil(rec.versions.current.secret)
      assert.is_nil(rec.versions.previous)
      for _, e in ipairs(rec.journal) do
        assert.are_not.equal("promote", e.step)
        if e.step == "verify" then assert.equal("failed", e.outcome) end
      end
      assert.equal("failed", rec.last.outcome)
      assert.equal("verify", rec.last.step)
      -- the provider object still acts with its old credential
      assert.equal(fx.opts.client_id, p.client_id)

      -- the provider accepts it now: the rerun verifies the same pending secret, mints nothing
      s:control("DELETE", "/faults")
      o.provider = fixtures.provider(fx)
      res, err = rotor.rotate(o)
      assert.is_nil(err)
      assert.truthy(res)
      assert.equal(minted + 1, counter(s, fx.mint_path))
      rec = assert(store:get(fx.slot))
      assert.is_nil(rec.versions.pending)
      assert.is_true(rec.versions.current.secret:equals(pending.secret))
      assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
    end)
  end
end)
