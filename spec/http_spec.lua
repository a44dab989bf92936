-- rotor.http and the core's transfers against the simulator over real HTTPS on loopback.
local core = require "rotor.core"
local http = require "rotor.http"
local sched = require "rotor.sched"
local sim = require "spec.helpers.sim"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"

describe("HTTPS transfers", function()
  local s, admin_tok

  setup(function()
    s = sim.start()
    s:settings { genesys_rate = 0 }
    local c = s:seed { provider = "genesys", admin = true }
    local res = s:request { method = "POST", path = "/genesys/login/oauth/token",
      basic = { c.client_id, c.client_secret }, form = { grant_type = "client_credentials" } }
    admin_tok = res.json.access_token
  end)
  teardown(function() s:stop() end)
  before_each(function() http.reset_pacing() end)

  local function me(extra)
    local req = { url = s.url .. "/genesys/api/v2/tokens/me", cainfo = s.ca,
      headers = { { "Authorization", core.secret(admin_tok), prefix = "Bearer " } } }
    for k, v in pairs(extra or {}) do req[k] = v end
    return req
  end

  it("makes an authenticated GET and returns status, headers and body", function()
    local res = assert(http.request(me()))
    assert.equals(200, res.status)
    assert.matches("application/json", res.headers["content-type"])
    assert.is_truthy(res.body:find("organization", 1, true))
  end)

  -- the simulator's request log entries for one path, after the first `mark` of them
  local function log_since(mark, path)
    local out, seen = {}, 0
    for _, e in ipairs(s:log()) do
      if e.path == path then
        seen = seen + 1
        if seen > mark then out[#out + 1] = e end
      end
    end
    return out
  end

  -- how many connections the entries came on
  local function conns(entries)
    local seen, n = {}, 0
    for _, e in ipairs(entries) do
      if not seen[e.conn] then seen[e.conn], n = true, n + 1 end
    end
    return n
  end

  it("speaks HTTP/1.1 by default, HTTP/2 when a request or a provider's http2 option asks", function()
    local path = "/genesys/api/v2/tokens/me"
    local mark = #log_since(0, path)
    for _ = 1, 3 do assert.equals(200, assert(http.request(me())).status) end
    -- (inside parallel: a multi handle of its own, whose connections are its own; libcurl would
    -- carry the request on a kept HTTP/1.1 connection to the same host)
    sched.parallel({ 1 }, function() assert.equals(200, assert(http.request(me { http2 = true })).status) end)
    local entries = log_since(mark, path)
    assert.equals(4, #entries)
    -- (the simulator logs a request after answering it: the order of entries may differ)
    local h1, n2 = {}, 0
    for _, e in ipairs(entries) do
      if e.proto == "HTTP/1.1" then h1[#h1 + 1] = e end
      if e.proto == "HTTP/2.0" then n2 = n2 + 1 end
    end
    assert.same({ 3, 1 }, { #h1, n2 })
    -- kept alive: one connection for the three
    assert.equals(1, conns(h1))
    local token_path = "/genesys/login/oauth/token"
    for _, h2 in ipairs { false, true } do
      local tmark = #log_since(0, token_path)
      local c = s:seed { provider = "genesys", admin = true }   -- a client of its own: no cached token
      local gc = assert(require("rotor").genesys { client_id = c.client_id, client_secret = c.client_secret,
        base_url = s.url .. "/genesys", token_url = s.url .. token_path, cainfo = s.ca, pacing = false,
        http2 = h2 or nil })
      sched.parallel({ 1 }, function() assert(gc:token()) end)
      local t = log_since(tmark, token_path)
      assert.equals(1, #t)
      assert.equals(h2 and "HTTP/2.0" or "HTTP/1.1", t[1].proto)
    end
  end)

  it("reuses one connection, over HTTP/2, for sequential requests", function()
    local path = "/genesys/api/v2/tokens/me"
    local mark = #log_since(0, path)
    sched.parallel({ 1 }, function()
      for _ = 1, 5 do assert.equals(200, assert(http.request(me { http2 = true })).status) end
    end)
    local entries = log_since(mark, path)
    assert.equals(5, #entries)
    for _, e in ipairs(entries) do assert.equals("HTTP/2.0", e.proto) end
    assert.equals(1, conns(entries))
  end)

  it("keeps a batch's connections for the next batch, until close_idle", function()
    local path = "/genesys/api/v2/tokens/me"
    sched.close_idle()
    -- four GETs at once (over HTTP/1.1, a connection each): the connections they came on
    local function batch()
      local mark = #log_since(0, path)
      sched.parallel({ 1, 2, 3, 4 }, function()
        assert.equals(200, assert(http.request(me())).status)
      end, { concurrency = 4 })
      local entries = log_since(mark, path)
      assert.equals(4, #entries)
      local set = {}
      for _, e in ipairs(entries) do set[e.conn] = true end
      return set
    end
    local first = batch()
    for c in pairs(batch()) do
      assert.is_true(first[c], "the second batch opened a connection of its own")
    end
    sched.close_idle()
    for c in pairs(batch()) do
      assert.is_nil(first[c], "a connection outlived close_idle")
    end
  end)

  it("runs a batch started in a coroutine of its own, inside a task, on transfers of its own #proc", function()
    -- task 2's request is in flight while task 1 runs a batch from a coroutine that is none of the
    -- loop's tasks; that batch ends after task 2's request. On the running loop's multi handle,
    -- the inner loop collected task 2's result and dropped it: the outer batch waited for ever. In
    -- a child process (spec/helpers/foreign_batch.lua in the rotor executable), under a time limit
    assert(s:fault { path = "/genesys/login/oauth/token", count = 1, delay = 0.3 })
    assert(s:fault { path = "/genesys/api/v2/oauth/clients", count = 1, delay = 0.8 })
    local sq = sim.shell_quote
    local out = sim.run(("ROTOR_SIM_URL=%s ROTOR_SIM_CA=%s timeout -s KILL 20 %s spec/helpers/foreign_batch.lua 2>&1")
      :format(sq(s.url), sq(s.ca), ROTOR))
    s:control("DELETE", "/faults")
    -- both requests got the simulator's answer (no credentials: 400 or 401), each to its own task
    assert.matches("DONE 40%d 40%d", out)
  end)

  it("gives every minting request a fresh connection", function()
    local path = "/genesys/api/v2/tokens/me"
    local mark = #log_since(0, path)
    for _ = 1, 3 do assert.equals(200, assert(http.request(me { fresh_connect = true })).status) end
    local entries = log_since(mark, path)
    assert.equals(3, #entries)
    assert.is_true(entries[1].conn ~= entries[2].conn and entries[2].conn ~= entries[3].conn)
  end)

  -- The core keeps each finished transfer's easy handle and uses it again as it is when the next
  -- transfer wants the same CA bundle and proxy and nothing rarer (csrc/http.c, easy_state);
  -- these sequential calls all get the one kept handle. Nothing of a transfer may reach the next.
  describe("a kept easy handle", function()
    local path = "/genesys/api/v2/tokens/me"

    it("does not keep the CA bundle of the transfer before", function()
      assert.equals(200, assert(http.request(me())).status)
      local res, err = http.request(me { cainfo = false })
      assert.is_nil(res)
      assert.equals("tls", err.kind)
      assert.equals(200, assert(http.request(me())).status)
    end)

    it("does not keep a fresh connection, nor a method, of the transfer before", function()
      local mark = #log_since(0, path)
      assert.equals(200, assert(http.request(me { fresh_connect = true })).status)
      for _ = 1, 3 do assert.equals(200, assert(http.request(me())).status) end
      local entries = log_since(mark, path)
      assert.equals(4, #entries)
      -- the three after the fresh one share a connection: FRESH_CONNECT / FORBID_REUSE went
      assert.equals(1, conns { entries[2], entries[3], entries[4] })
      mark = #log_since(0, path)
      http.request(me { method = "DELETE" })
      assert.equals(200, assert(http.request(me())).status)
      entries = log_since(mark, path)
      assert.equals(2, #entries)
      assert.equals("DELETE", entries[1].method)
      assert.equals("GET", entries[2].method)
    end)

    it("does not keep a POST's body for a bodiless request after it (HTTP/1.1)", function()
      -- a handle kept after a POST still had libcurl's POST method and body size: a DELETE on it
      -- announced that size and sent no body, and the server took the next request on the
      -- connection for that body (and the rest of it for a malformed request: a 400 of its own)
      local mark = #log_since(0, path)
      local body = string.rep("a", 400)
      assert.is_table(http.request(me { method = "POST", body = body, http2 = false }))
      assert.is_table(http.request(me { method = "DELETE", http2 = false }))
      local res = assert(http.request(me { method = "POST", body = body .. string.rep("b", 200), http2 = false }))
      assert.is_not.equals(400, res.status)
      local entries = log_since(mark, path)
      assert.equals(3, #entries)
      assert.same({ "POST", "DELETE", "POST" }, { entries[1].method, entries[2].method, entries[3].method })
      assert.equals(1, conns(entries))
    end)
  end)

  it("keeps its HTTP/1.1 connections while a batch thins out, for the next wave to reuse", function()
    -- a wave of 16 requests that the server holds for 0.3 s each (16 connections, all in flight
    -- at once), then 20 one at a time, then the same wave again, while one slow request stays in
    -- flight: libcurl's default cache (four idle connections per transfer in flight) closed some of
    -- the 16 in the thin phase, and the second wave opened them again (25 in all, measured)
    local path = "/genesys/api/v2/tokens/me"
    local slow = "/genesys/api/v2/oauth/clients"
    assert(s:fault { path = slow, count = 1, delay = 1 })
    local mark = #log_since(0, path)
    local waves = {}
    sched.parallel({ 1, 2 }, function(k)
      if k == 2 then
        http.request(me { url = s.url .. slow, http2 = false })
        return
      end
      local items = {}
      for i = 1, 16 do items[i] = i end
      local function wave()
        assert(s:fault { path = path, count = 16, delay = 0.3 })
        local at = #log_since(0, path)
        sched.parallel(items, function()
          assert.equals(200, assert(http.request(me { http2 = false })).status)
        end, { concurrency = 16 })
        waves[#waves + 1] = conns(log_since(at, path))
      end
      wave()
      for _ = 1, 20 do assert.equals(200, assert(http.request(me { http2 = false })).status) end
      wave()
    end, { concurrency = 2 })
    -- what the check below stands on: each wave had its 16 requests in flight at once
    assert.same({ 16, 16 }, waves)
    local entries = log_since(mark, path)
    assert.equals(52, #entries)
    assert.equals(16, conns(entries), "the second wave reused the first wave's connections")
  end)

  -- a minting request (once=true) on the warm connection of an earlier request; the server
  -- processes it and closes the connection without a reply (a dead keep-alive connection)
  for _, h2 in ipairs { false, true } do
    it(("sends a minting request on a warm connection at most once when it dies (%s)"):format(
      h2 and "HTTP/2" or "HTTP/1.1"), function()
      local path = "/genesys/api/v2/tokens/me"
      local mark = #log_since(0, path)
      assert.equals(200, assert(http.request(me { http2 = h2 })).status)
      s:fault { path = path, count = 1, reset = true }
      local res, err = http.request(me { http2 = h2, once = true }, { mint = true, provider = "genesys", op = "mint" })
      assert.is_nil(res)
      assert.equals("ambiguous", err.kind)
      local entries = log_since(mark, path)
      -- the warm request and the mint: the mint reached the server once, on the warm connection
      assert.equals(2, #entries)
      assert.equals(entries[1].conn, entries[2].conn)
      -- the next mint works (on a new connection, since that one died)
      res = assert(http.request(me { http2 = h2, once = true }, { mint = true }))
      assert.equals(200, res.status)
    end)
  end

  it("reads a CA bundle once for the new connections of a multi handle", function()
    -- a copy of the bundle, gone after the first connection: the next new connections of the same
    -- multi handle verify the server with the store built from it
    local ca = s.dir .. "/ca-copy.pem"
    assert(core.fs_write_atomic(ca, assert(core.fs_read(s.ca)), 420))
    assert.equals(200, assert(http.request(me { cainfo = ca, http2 = false })).status)
    assert(os.remove(ca))
    for _ = 1, 2 do
      local res = assert(http.request(me { cainfo = ca, http2 = false, fresh_connect = true }))
      assert.equals(200, res.status)
    end
  end)

  it("refuses a server whose certificate the CA bundle does not vouch for", function()
    local res, err = http.request(me { cainfo = "/etc/ssl/certs/ca-certificates.crt" })
    assert.is_nil(res)
    assert.equals("tls", err.kind)
  end)

  it("times out when the server is slower than the limit", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 1, delay = 3 }
    local t0 = core.now()
    local res, err = http.request(me { timeout = 1 }, { retries = 0 })
    assert.is_nil(res)
    assert.equals("timeout", err.kind)
    assert.is_true(core.now() - t0 < 2.5)
  end)

  it("stops reading a body larger than the cap with kind protocol", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 1, oversize = true }
    local res, err = http.request(me { max_body = 64 * 1024 })
    assert.is_nil(res)
    assert.equals("protocol", err.kind)
    assert.matches("exceeds the limit of 65536 bytes", err.message)
  end)

  it("refuses a response with more headers than the cap, with kind protocol", function()
    local many = {}
    for i = 1, 30 do many["X-Filler-" .. i] = "v" .. i end
    s:fault { path = "/genesys/api/v2/tokens/me", count = 2, status = 200, headers = many }
    local res, err = http.request(me { max_headers = 20 })
    assert.is_nil(res)
    assert.equals("protocol", err.kind)
    assert.matches("more than 20 headers", err.message)
    -- the same answer under the default cap (100) is accepted
    res = assert(http.request(me()))
    assert.equals(200, res.status)
    assert.equals("v7", res.headers["x-filler-7"])
  end)

  -- the waits rotor.http asks the scheduler for, while fn runs
  local function waits_of(fn)
    local sleep, waits = sched.sleep, {}
    sched.sleep = function(t) waits[#waits + 1] = t return sleep(t) end
    local ok, a, b = pcall(fn)
    sched.sleep = sleep
    assert(ok, a)
    return waits, a, b
  end

  it("retries 503 with backoff and then succeeds", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 2, status = 503 }
    local before = s:counters()["/genesys/api/v2/tokens/me"] or 0
    local waits, res = waits_of(function() return assert(http.request(me())) end)
    assert.equals(200, res.status)
    assert.equals(3, res.attempts)
    assert.equals(before + 3, s:counters()["/genesys/api/v2/tokens/me"])
    -- exponential backoff with jitter: attempt n waits between half and all of base * 2^(n-1)
    local d = http.defaults
    assert.equals(2, #waits)
    for n, w in ipairs(waits) do
      local cap = math.min(d.max_delay, d.base_delay * 2 ^ (n - 1))
      assert.is_true(w >= cap / 2 and w <= cap, ("wait %d: %.3f s, not in [%.3f, %.3f]"):format(n, w, cap / 2, cap))
    end
  end)

  it("waits at least Retry-After: 2 before retrying a 429", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 1, status = 429, retry_after = 2 }
    local t0 = core.now()
    local res = assert(http.request(me()))
    local elapsed = core.now() - t0
    assert.equals(200, res.status)
    assert.equals(2, res.attempts)
    assert.is_true(elapsed >= 2, "retried after " .. elapsed .. " s")
  end)

  it("gives up with kind rate_limited and retry_after past the wait bound", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 1, status = 429, retry_after = 30 }
    local res, err = http.request(me(), { max_wait = 5, provider = "genesys", op = "tokens_me" })
    assert.is_nil(res)
    assert.equals("rate_limited", err.kind)
    assert.equals(30, err.retry_after)
    assert.equals("genesys", err.provider)
  end)

  it("parses Retry-After as seconds and as an HTTP date", function()
    assert.equals(2, http.parse_retry_after("2"))
    assert.equals(10, http.parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", 784111777))
    assert.equals(0, http.parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111800))
    assert.is_nil(http.parse_retry_after("soon"))
  end)

  it("never re-sends a minting request that hung after it was sent", function()
    local path = "/genesys/api/v2/tokens/me"
    s:fault { path = path, count = 1, hang = true }
    local before = s:counters()[path] or 0
    local res, err = http.request(me { timeout = 1 }, { mint = true, provider = "genesys", op = "mint" })
    assert.is_nil(res)
    assert.equals("ambiguous", err.kind)
    assert.equals(before + 1, s:counters()[path])
  end)

  it("paces a batch under a configured limit without bursting", function()
    local n, rate = 10, 20
    local limit = { key = "spec:pacing", rate = rate, per = 1 }
    local t0 = core.now()
    local waits, results = waits_of(function()
      return sched.parallel({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, function()
        local res = assert(http.request(me(), { rate = limit }))
        return res.status
      end, { concurrency = 10 })
    end)
    local elapsed = core.now() - t0
    assert.equals(n, #results)
    -- n requests at `rate`/s: the first goes at once, the last after (n-1)/rate seconds
    assert.is_true(elapsed >= (n - 1) / rate - 0.01, "took " .. elapsed)
    -- and no later: the pacer asks for n-1 waits, the longest (n-1)/rate (they were all queued
    -- at once), each one interval apart from the next
    table.sort(waits)
    assert.is_true(#waits >= n - 2 and #waits <= n - 1, #waits .. " waits")
    assert.is_true(waits[#waits] <= (n - 1) / rate + 0.001, "longest wait " .. waits[#waits])
    for i = 2, #waits do
      assert.is_true(waits[i] - waits[i - 1] <= 1 / rate + 0.005, "waits " .. table.concat(waits, ", "))
    end
  end)

  it("runs many transfers at once on one thread inside rotor.parallel", function()
    s:fault { path = "/genesys/api/v2/tokens/me", count = 8, delay = 0.5 }
    local t0 = core.now()
    local results, errs = sched.parallel({ 1, 2, 3, 4, 5, 6, 7, 8 }, function()
      local res, err = http.request(me())
      if not res then return nil, err end
      return res.status
    end, { concurrency = 8 })
    local elapsed = core.now() - t0
    assert.same({}, errs)
    for i = 1, 8 do assert.equals(200, results[i]) end
    assert.is_true(elapsed < 2, "8 delayed requests took " .. elapsed .. " s")
  end)
end)
