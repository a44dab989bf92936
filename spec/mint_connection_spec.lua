-- Minting requests and connections, per provider, read from the simulator's request log (`conn`
-- is nginx's connection serial number, unique across its workers):
--   * a minting request is never sent on a connection that carried an earlier request, unless the
--     mechanism proves it is sent at most once: when a warm connection dies under the mint (the
--     simulator processes it, then closes the connection without an answer), libcurl must not send
--     it again on a new one: exactly one minting request reaches the provider, and the error is
--     `ambiguous`;
--   * against an HTTP/1.1-only simulator (where libcurl itself would re-send on a dead reused
--     connection) the same: one minting request, `ambiguous`;
--   * with mint_fresh_connection = true (where the option exists) every mint has a connection of
--     its own.
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"

-- per provider: an ordinary call (a token and, where there is one, an API read), then the mint
local CASES = {
  genesys = {
    normal = function(p) return p:get_oauth_clients() end,
    mint = function(p, fx) return p:post_oauth_client_secret(fx.target.client_id) end,
  },
  spreetail = {
    normal = function(p) return p:list_client_credentials() end,
    mint = function(p) return p:create_client_credentials { name = "mint-conn " .. os.time() } end,
  },
  paylocity = {
    normal = function(p) return p:token() end,
    mint = function(p, fx, i)
      return p:obtain_new_client_secret { code = i == 1 and fx.code or fx.code .. "-" .. i }
    end,
  },
  spapi = {
    normal = function(p) return p:token() end,
    mint = function(p) return p:rotate_application_client_secret() end,
  },
}

-- does this build know mint_fresh_connection?
local function has_fresh_option(fx)
  local opts = {}
  for k, v in pairs(fx.opts) do opts[k] = v end
  opts.mint_fresh_connection = true
  local p, err = rotor[fx.kind](opts)
  if p then return true end
  assert.matches("mint_fresh_connection: unknown option", tostring(err), 1, true)
  return false
end

describe("minting requests and connections", function()
  local s, s1
  setup(function()
    s = sim.start()
    -- a provider that speaks HTTP/1.1 only: there libcurl re-sends a request on a new connection
    -- by itself when a reused one dies before any answer
    s1 = sim.start { env = { ROTOR_SIM_HTTP2 = "0" } }
  end)
  teardown(function()
    if s then s:stop() end
    if s1 then s1:stop() end
  end)
  after_each(function() s:control("DELETE", "/faults") s1:control("DELETE", "/faults") end)

  -- log entries after the first `mark` entries
  local function log_after(mark)
    local out = {}
    for i, e in ipairs(s:log()) do
      if i > mark then out[#out + 1] = e end
    end
    return out
  end

  -- the mint's log entry and the requests its connection carried before it
  local function mint_conn(entries, path, method)
    for _, e in ipairs(entries) do
      if e.path == path and e.method == method then
        local n = 0
        for _, x in ipairs(entries) do
          if x == e then break end
          if x.conn == e.conn then n = n + 1 end
        end
        return e, n
      end
    end
    error("no minting request at " .. path .. " in the log")
  end

  for _, kind in ipairs(fixtures.KINDS) do
    describe(kind, function()
      it("a mint after ordinary calls: a connection of its own, or sent at most once", function()
        local fx = fixtures.seed(s, kind)
        local p = fixtures.provider(fx)
        local c = CASES[kind]
        local mark = #s:log()
        assert.truthy(c.normal(p))
        assert.truthy(c.normal(p))
        local minted, merr = c.mint(p, fx, 1)
        assert.truthy(minted, tostring(merr))
        local entries = log_after(mark)
        assert.is_true(#entries >= 2)
        local _, reused = mint_conn(entries, fx.mint_path, fx.mint_method)

        if reused > 0 then
          -- a warm connection: the mechanism must prove at-most-once. The same sequence, with
          -- the connection dying under the mint after the provider processed it.
          local p2 = fixtures.provider(fx)
          if kind == "spapi" then s:advance(3) end   -- past the simulated 1 rotation / 2 s
          assert.truthy(c.normal(p2))
          local before = (s:counters())[fx.mint_path] or 0
          s:fault { path = fx.mint_path, method = fx.mint_method, reset = true }
          local res, err = c.mint(p2, fx, 2)
          assert.is_nil(res)
          assert.equal("ambiguous", err.kind)
          assert.equal(before + 1, (s:counters())[fx.mint_path])
        end

        -- over HTTP/1.1: a warm connection dies under the mint after the provider processed it;
        -- whatever carries the mint, it reaches the provider once and the outcome is ambiguous
        local fx1 = fixtures.seed(s1, kind)
        local p1 = fixtures.provider(fx1)
        assert.truthy(c.normal(p1))
        assert.truthy(c.normal(p1))
        assert.equal("HTTP/1.1", s1:log()[#s1:log()].proto)
        local before1 = (s1:counters())[fx1.mint_path] or 0
        s1:fault { path = fx1.mint_path, method = fx1.mint_method, reset = true }
        local r1, e1 = c.mint(p1, fx1, 1)
        assert.is_nil(r1)
        assert.equal("ambiguous", e1 and e1.kind)
        assert.equal(before1 + 1, (s1:counters())[fx1.mint_path])

        if has_fresh_option(fx) then
          local opts = {}
          for k, v in pairs(fx.opts) do opts[k] = v end
          opts.mint_fresh_connection = true
          local p3 = assert(rotor[kind](opts))
          if kind == "spapi" then s:advance(3) end
          mark = #s:log()
          assert.truthy(c.normal(p3))
          assert.truthy(c.mint(p3, fx, 3))
          local _, n = mint_conn(log_after(mark), fx.mint_path, fx.mint_method)
          assert.equal(0, n)
        else
          -- without the at-most-once mechanism, a mint has a connection of its own
          assert.equal(0, reused, kind .. ": the mint went on a connection that had carried " .. reused
            .. " earlier requests")
        end
      end)
    end)
  end
end)
