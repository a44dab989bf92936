-- Proxies: the `proxy` option and the usual environment variables (https_proxy), through a real
-- CONNECT proxy (Debian's tinyproxy) on loopback, to the simulator over HTTPS.
-- A loopback target is never proxied (spec/hardening_spec.lua), so the simulator is named
-- sim.rotor.test here: tinyproxy runs in its own mount namespace whose /etc/hosts maps that name
-- to 127.0.0.1 (the simulator's certificate names it too); rotor never resolves it.
local core = require "rotor.core"
local http = require "rotor.http"
local sim = require "spec.helpers.sim"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local q = sim.shell_quote

describe("HTTPS through a proxy", function()
  local s, dir, port, url

  local function connects()
    local log = sim.read_file(dir .. "/tinyproxy.log") or ""
    local n = 0
    for _ in log:gmatch("Established connection to host \"sim%.rotor%.test\"") do n = n + 1 end
    return n
  end

  setup(function()
    s = sim.start()
    url = s.url:gsub("127%.0%.0%.1", "sim.rotor.test")
    dir = s.dir .. "/proxy"
    assert(core.fs_mkdir(dir, 448))
    sim.write_file(dir .. "/hosts", "127.0.0.1 localhost sim.rotor.test\n")
    -- a free port: try a few random ones until tinyproxy answers on one
    for _ = 1, 10 do
      port = 20000 + tonumber(core.random_hex(2), 16) % 30000
      sim.write_file(dir .. "/tinyproxy.conf", table.concat({
        "Port " .. port, "Listen 127.0.0.1", "Timeout 30", "MaxClients 20", "Allow 127.0.0.1",
        ('LogFile "%s/tinyproxy.log"'):format(dir), "LogLevel Info",
        ('PidFile "%s/tinyproxy.pid"'):format(dir), "" }, "\n"))
      sim.run(("unshare -m sh -c %s"):format(q(("mount --bind %s /etc/hosts && exec tinyproxy -c %s")
        :format(q(dir .. "/hosts"), q(dir .. "/tinyproxy.conf")))))
      local up
      for _ = 1, 20 do
        local _, rc = sim.run(("curl -s -o /dev/null --max-time 2 --cacert %s -x http://127.0.0.1:%d %s/_sim/health")
          :format(q(s.ca), port, url))
        if rc == 0 then up = true break end
        sim.run("sleep 0.05")
      end
      if up then return end
      sim.run(("kill $(cat %s) 2>/dev/null"):format(q(dir .. "/tinyproxy.pid")))
    end
    error("tinyproxy did not start")
  end)

  teardown(function()
    if dir then sim.run(("kill $(cat %s) 2>/dev/null"):format(q(dir .. "/tinyproxy.pid"))) end
    if s then s:stop() end
  end)

  it("goes through the proxy given as an option", function()
    local before = connects()
    local res = assert(http.request { url = url .. "/_sim/health", cainfo = s.ca,
                                      proxy = "http://127.0.0.1:" .. port })
    assert.equals(200, res.status)
    assert.equals(before + 1, connects())
  end)

  it("goes through the proxy named by https_proxy in the environment", function()
    local before = connects()
    local out, rc = sim.run(("https_proxy=http://127.0.0.1:%d %s -e %s 2>&1"):format(port, ROTOR, q(([[
      local r, e = require("rotor.http").request { url = %q, cainfo = %q }
      print(r and r.status or tostring(e))]]):format(url .. "/_sim/health", s.ca))))
    assert.equals(0, rc, out)
    assert.equals("200\n", out)
    assert.equals(before + 1, connects())
  end)

  it("names an unreachable proxy as a network error, sent = false, after its retries", function()
    local sched = require "rotor.sched"
    local req = { url = url .. "/_sim/health", cainfo = s.ca, proxy = "http://127.0.0.1:1" }
    -- the transfer itself: failed before anything was sent
    local raw = assert(sched.request(req))
    assert.is_table(raw.error)
    assert.equals("network", raw.error.kind)
    assert.is_false(raw.sent)
    -- through rotor.http: retried (one wait per retry), then the error; a minting request too,
    -- since it was never sent (not "ambiguous")
    local sleep, waits = sched.sleep, {}
    sched.sleep = function(t) waits[#waits + 1] = t return sleep(t) end
    local ok, res, err = pcall(http.request, req, { retries = 1, max_wait = 2 })
    local ok2, res2, err2 = pcall(http.request, req, { retries = 2, max_wait = 5, mint = true })
    sched.sleep = sleep
    assert.is_true(ok, res)
    assert.is_true(ok2, res2)
    assert.is_nil(res)
    assert.equals("network", err.kind)
    assert.matches("127.0.0.1", err.message)
    assert.is_nil(res2)
    assert.equals("network", err2.kind)
    -- 1 retry for the first request, 2 for the mint
    assert.equals(3, #waits)
  end)
end)
