-- make fleet-demo: a fleet of three rotor "hosts" sharing one etcd store.
--
-- Starts a 3-member etcd cluster (TLS, client certificates, auth, a `rotor` user allowed only
-- /rotor/) and the provider simulator, both on 127.0.0.1, seeds 8 Genesys clients and one
-- Spreetail credential, then runs three `rotor rotate --config rotor.conf.lua --only-due` at once,
-- as three hosts of a fleet would from cron. Each slot is rotated by exactly one of them; the
-- others find it locked or, deciding again under the lock, no longer due. Then once more: all
-- three skip everything. Everything lives under build/fleet-demo and is stopped at the end.
-- Run from the repository root after `make` (lua5.4, with ./?.lua and ./lua on the path).
package.path = "./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath
local core = require "rotor.core"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"
local etcd_cluster = require "spec.helpers.etcd_cluster"

local q = sim.shell_quote
local ROOT = (sim.run("pwd"):gsub("%s+$", ""))
local DIR = ROOT .. "/build/fleet-demo"
local ROTOR = ROOT .. "/build/rotor"

local function say(fmt, ...) io.stdout:write((fmt):format(...), "\n") io.stdout:flush() end

sim.run("rm -rf " .. q(DIR) .. " && mkdir -p " .. q(DIR))
say("== starting the provider simulator and a 3-member etcd cluster on 127.0.0.1")
local s = sim.start { settings = { genesys_rate = 0 } }
local cluster
local ok, err = pcall(function()
  cluster = etcd_cluster.start { dir = DIR .. "/etcd" }
  say("   etcd members: %s (TLS, client certificates, auth on)", table.concat(cluster.endpoints, " "))
  local key = DIR .. "/seal.key"
  sim.run("head -c 32 /dev/urandom > " .. q(key) .. " && chmod 600 " .. q(key))
  local fxs = {}
  for i = 1, 8 do fxs[i] = fixtures.seed(s, "genesys", "demo" .. i) end
  fxs[#fxs + 1] = fixtures.seed(s, "spreetail")
  local spec = cluster:store_spec { key_file = key, password_env = "ROTOR_ETCD_PASSWORD" }
  spec.password = nil
  local base = etcd_cluster.write_rotor_config(DIR .. "/config", fxs, { store = spec },
                                               { ROTOR_ETCD_PASSWORD = cluster.password })
  say("== %d slots in %s; three hosts run `rotor rotate --config rotor.conf.lua --only-due` at once", #fxs,
      cluster.prefix)
  local function round(tag)
    local cmd = {}
    for h = 1, 3 do
      cmd[#cmd + 1] = ("(. %s && %s rotate --config %s --only-due > %s 2>&1; echo $? > %s) &"):format(
        q(base .. "/env"), q(ROTOR), q(base .. "/rotor.conf.lua"), q(("%s/%s.host%d.out"):format(DIR, tag, h)),
        q(("%s/%s.host%d.rc"):format(DIR, tag, h)))
    end
    sim.run(table.concat(cmd, " ") .. " wait")
    for h = 1, 3 do
      local rc = (core.fs_read(("%s/%s.host%d.rc"):format(DIR, tag, h)) or "?"):gsub("%s", "")
      say("-- host %d (exit %s: 0 all done, 75 some slots were locked by another host)", h, rc)
      io.stdout:write(core.fs_read(("%s/%s.host%d.out"):format(DIR, tag, h)) or "")
    end
  end
  round("first")
  say("== the same again: nothing is due any more")
  round("second")
  say("\n== rotor status --config rotor.conf.lua (any host)")
  io.stdout:write((sim.run(("(. %s && %s status --config %s) 2>&1"):format(q(base .. "/env"), q(ROTOR),
    q(base .. "/rotor.conf.lua")))))
  -- the mints the simulator counted, per slot
  local store = assert(require("rotor.store.etcd").new(cluster:store_spec { key_file = key }))
  local counters = fixtures.control(s, "GET", "/counters")
  counters = counters.counters or counters
  say("\n== minting requests per slot, as the simulator counted them")
  say("%-52s %-10s %-8s %-22s %s", "SLOT", "PROVIDER", "MINTS", "ROTATED", "LAST")
  for _, fx in ipairs(fxs) do
    local rec = assert(store:get(fx.slot))
    local cur = rec.versions.current or {}
    say("%-52s %-10s %-8d %-22s %s", fx.slot, tostring(rec.provider), counters[fx.mint_path] or 0,
        tostring(cur.created), tostring(rec.last and rec.last.outcome))
  end
  local dump = assert(store:dump())
  local leaks = 0
  for _, e in ipairs(fixtures.control(s, "GET", "/secrets").details or {}) do
    for _, kv in ipairs(dump) do
      if (kv.value or ""):find(e.secret, 1, true) then leaks = leaks + 1 end
    end
  end
  say("\n%d keys under %s, secrets sealed: %d secrets found in clear", #dump, cluster.prefix, leaks)
  say("audit trail in the cluster: %d entries", #assert(store:audit_trail():entries()))
end)
if cluster then cluster:stop() end
s:stop()
if not ok then
  io.stderr:write("fleet-demo failed: ", tostring(err), "\n(logs under ", DIR, ")\n")
  os.exit(1)
end
