-- Rotation against the provider simulator over HTTPS: per provider, the happy path and a resumed
-- run (a deploy hook that fails once: the rerun finishes without minting again).
local core = require "rotor.core"
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

local counter = fixtures.counter

describe("rotation against the simulator", function()
  local s, root
  setup(function()
    s = sim.start()
    root = s.dir .. "/rotation-spec"
    assert(core.fs_mkdir(root, 448))
  end)
  teardown(function()
    if s then s:stop() end
  end)

  for _, kind in ipairs(fixtures.KINDS) do
    describe(kind, function()
      it("rotates: the store's secret works, the provider acts with it, nothing is orphaned", function()
        local fx = fixtures.seed(s, kind)
        local p = fixtures.provider(fx)
        local minted = counter(s, fx.mint_path)
        local store = assert(rotor.store.file(root .. "/" .. kind .. "-happy"))
        local res, err = rotor.rotate { slot = fx.slot, provider = p, store = store, target = fx.target,
                                        wait = fx.wait, verify_delay = 0.2 }
        assert.is_nil(err)
        assert.equal(fx.slot, res.slot)
        local rec = assert(store:get(fx.slot))
        local cur = rec.versions.current
        assert.is_true(core.is_secret(cur.secret))
        assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
        assert.is_nil(rec.versions.pending)
        assert.equal(minted + 1, counter(s, fx.mint_path))
        assert.same({}, fixtures.orphans(fx, rec))
        if kind == "genesys" or kind == "spreetail" then
          -- regenerate kills the old secret; Spreetail's old pair is deleted
          assert.is_false(fixtures.works(fx, fx.bootstrap.client_id, fx.bootstrap.secret))
        else
          assert.is_true(fixtures.works(fx, fx.bootstrap.client_id, fx.bootstrap.secret)) -- overlap
          assert.truthy(res.expires)
        end
        if kind ~= "genesys" then assert.equal(cur.client_id, p.client_id) end
        -- a second rotation starts from the stored credential, not the bootstrap one
        local res2, err2 = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = store,
          target = kind == "paylocity" and { code = fx.code .. "-2" } or fx.target, wait = fx.wait, verify_delay = 0.2 }
        assert.is_nil(err2)
        assert.truthy(res2)
        local rec2 = assert(store:get(fx.slot))
        assert.is_true(fixtures.works(fx, rec2.versions.current.client_id, rec2.versions.current.secret))
        assert.same({}, fixtures.orphans(fx, rec2))
        assert.equal(0, fixtures.lost(s, fx, rec2))
      end)

      it("resumes at deploy without minting again", function()
        local fx = fixtures.seed(s, kind)
        local store = assert(rotor.store.file(root .. "/" .. kind .. "-resume"))
        local minted = counter(s, fx.mint_path)
        local fail, got = true, nil
        local deploy = function(new)
          if fail then return nil, "consumer unreachable" end
          got = new.secret:reveal()
          return true
        end
        local o = { slot = fx.slot, provider = fixtures.provider(fx), store = store, target = fx.target,
                    wait = fx.wait, deploy = deploy, verify_delay = 0.2 }
        local res, err = rotor.rotate(o)
        assert.is_nil(res)
        assert.equal("deploy", err.step)
        fail = false
        o.provider = fixtures.provider(fx)
        res, err = rotor.rotate(o)
        assert.is_nil(err)
        assert.truthy(res)
        assert.equal(minted + 1, counter(s, fx.mint_path))
        local cur = assert(store:get(fx.slot)).versions.current
        assert.equal(cur.secret:reveal(), got)
        assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
      end)

      it("rotates one credential from one slot: a second slot for it in the same batch is refused, mints nothing",
        function()
        -- two slots of one store rotating one client kill each other's secrets (the second mint
        -- replaces the secret the first stored); only one may start
        local fx = fixtures.seed(s, kind)
        local minted = counter(s, fx.mint_path)
        local store = assert(rotor.store.file(root .. "/" .. kind .. "-one-slot"))
        local out = {}
        rotor.parallel({ fx.slot, fx.slot .. "-again" }, function(slot)
          local res, err = rotor.rotate { slot = slot, provider = fixtures.provider(fx), store = store,
                                          target = fx.target, wait = fx.wait, verify_delay = 0.2 }
          out[slot] = res or err
        end, { concurrency = 2 })
        assert.equal(fx.slot, out[fx.slot].slot)
        local refused = out[fx.slot .. "-again"]
        assert.equal("config", refused.kind)
        assert.truthy(refused.message:find(("is also held by slot %s of this store"):format(fx.slot), 1, true),
          refused.message)
        assert.equal(minted + 1, counter(s, fx.mint_path))
        assert.is_false(assert(rotor.store.file(root .. "/" .. kind .. "-one-slot")):get(fx.slot .. "-again"))
        local cur = assert(store:get(fx.slot)).versions.current
        assert.is_true(fixtures.works(fx, cur.client_id, cur.secret))
      end)
    end)
  end


  it("posts a Slack-compatible notification on success and on failure, with no secret in it", function()
    local fx = fixtures.seed(s, "spreetail")
    local store = assert(rotor.store.file(root .. "/notify"))
    local hook = { webhook = s.url .. "/_sim/webhook", cainfo = s.ca }
    local before = #fixtures.control(s, "GET", "/webhooks")
    local res = assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = store,
                                      target = fx.target, notify = hook, verify_delay = 0.2 })
    assert.truthy(res)
    -- a failing rotation: the deploy hook refuses
    local _, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = store,
      target = fx.target, notify = hook, verify_delay = 0.2,
      deploy = function() return nil, "consumer unreachable" end }
    assert.equal("deploy", err.step)
    local hooks = fixtures.control(s, "GET", "/webhooks")
    assert.equal(before + 2, #hooks)
    local ok_text, fail_text = hooks[before + 1].text, hooks[before + 2].text
    assert.matches("rotated " .. fx.slot, ok_text, 1, true)
    assert.matches("FAILED at deploy", fail_text, 1, true)
    assert.matches("consumer unreachable", fail_text, 1, true)
    for _, secret in ipairs(fixtures.control(s, "GET", "/secrets").secrets) do
      assert.is_nil(ok_text:find(secret, 1, true))
      assert.is_nil(fail_text:find(secret, 1, true))
    end
    -- finish the rotation left at deploy, so nothing stays pending
    assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = store, target = fx.target,
                          verify_delay = 0.2 })
  end)

  it("genesys new_client: a second client, the old one disabled and deleted", function()
    local fx = fixtures.seed(s, "genesys")
    local store = assert(rotor.store.file(root .. "/genesys-new-client"))
    local p = fixtures.provider(fx)
    local res = assert(rotor.rotate { slot = fx.slot, provider = p, store = store, target = fx.target,
                                      strategy = "new_client", verify_delay = 0.2 })
    assert.are_not.equal(fx.target.client_id, res.client_id)
    local rec = assert(store:get(fx.slot))
    assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
    assert.is_false(fixtures.works(fx, fx.bootstrap.client_id, fx.bootstrap.secret))
    local _, gerr = p:get_oauth_client(fx.target.client_id)
    assert.equal(404, gerr and gerr.status)
  end)
end)
