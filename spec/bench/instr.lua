-- spec/bench/instr.lua: what rotor's work costs in instructions, counted by valgrind (callgrind:
-- user-space instructions of every thread of the process), against the bundled simulator.
--
--   make bench-instr      (= lua5.4 spec/bench/instr.lua, from the repository root, after `make`)
--
-- Wall-clock rates on a shared two-core machine move by a fifth from one round to the next; an
-- instruction count moves by about 1%. So a change to the per-request or per-rotation path can be
-- measured here first, and make bench then shows what it is worth in time. Three figures:
--   1. an authenticated GET (Genesys /api/v2/tokens/me) through rotor.http in rotor.parallel at
--      concurrency 1 over HTTP/1.1 (rotor's default) and over HTTP/2;
--   2. the same GETs by libcurl alone (build/curl_floor: no Lua, easy handles reused);
--   3. a durable rotation (rotor.rotate of a Genesys slot with a file store: mint, persist,
--      verify, promote, audit), in rotor.parallel at concurrency 16, each slot rotated twice,
--      over HTTP/2: over HTTP/1.1 (the default) the batch opens up to 16 connections, as many as
--      its timing needs, and each TLS handshake costs about 8M instructions under callgrind, so
--      the count per rotation moved by up to 15% between runs; over one connection it does not.
--      Then the same for slots whose journal is full (the store's last 200 entries, as a slot
--      rotated for long carries them; written before the counted run starts).
-- Each figure is (count of a run of 3N operations - count of a run of N) / 2N: start-up, the
-- module loads and the warm-up cancel out. The kernel's work (syscalls, fsync) is not counted.
-- A benchmark, not a spec: nothing fails on a number.
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath

local sim = require "spec.helpers.sim"
local shq, run = sim.shell_quote, sim.run

local GET_N = 500      -- GETs in the small run (3N in the large one)
local ROTATE_N = 50    -- slots in the small run, each rotated twice

local mode = arg[1]

-- ---- child: run under callgrind, counted ----------------------------------------------------
if mode == "get" or mode == "rotate" then
  local rotor = require "rotor"
  local http = require "rotor.http"
  local env = function(k) return (assert(os.getenv(k), k)) end
  local n = tonumber(arg[2])
  local url, ca = env("INSTR_URL"), env("INSTR_CA")
  local items = {}
  for i = 1, n do items[i] = i end
  if mode == "get" then
    local f = assert(io.open(env("INSTR_TOKEN_FILE"), "rb"))
    local token = rotor.secret(f:read("a"))
    f:close()
    local h2 = os.getenv("INSTR_HTTP2") ~= nil
    rotor.parallel(items, function()
      local res = http.request({ url = url .. "/genesys/api/v2/tokens/me", cainfo = ca, http2 = h2,
        headers = { { "Authorization", token, prefix = "Bearer " } } }, { provider = "genesys", op = "bench" })
      assert(res and res.status == 200, "GET failed")
    end, { concurrency = 1 })
  else
    local f = assert(io.open(env("INSTR_ADMIN_FILE"), "rb"))
    local admin_id, admin_secret = f:read("l"), f:read("l")
    f:close()
    local ids = {}
    for id in env("INSTR_IDS"):gmatch("[^,]+") do ids[#ids + 1] = id end
    assert(#ids >= n, "not enough clients seeded")
    local gc = assert(rotor.genesys { client_id = admin_id, client_secret = admin_secret,
      base_url = url .. "/genesys", token_url = url .. "/genesys/login/oauth/token", cainfo = ca,
      pacing = false, http2 = true })
    local store = assert(rotor.store.file(env("INSTR_STORE")))
    for _ = 1, 2 do
      rotor.parallel(items, function(i)
        assert(rotor.rotate { slot = "instr/" .. i, provider = gc, store = store, target = { client_id = ids[i] } })
      end, { concurrency = 16 })
    end
  end
  os.exit(0)
end

-- ---- parent --------------------------------------------------------------------------------
local function need(cmd)
  if select(2, run("command -v " .. cmd .. " >/dev/null 2>&1")) ~= 0 then
    io.stderr:write("bench-instr: " .. cmd .. " is missing (make deps installs it)\n")
    os.exit(2)
  end
end
need("valgrind")
if not io.open("build/curl_floor", "rb") then
  io.stderr:write("bench-instr: build/curl_floor is missing (make build/curl_floor)\n")
  os.exit(2)
end

-- the instructions callgrind counted in one run of cmd (its output file is thrown away)
local function count(cmd, envs, what)
  local prefix = ""
  for k, v in pairs(envs or {}) do prefix = prefix .. k .. "=" .. shq(v) .. " " end
  local out, rc = run(prefix .. "valgrind --tool=callgrind --callgrind-out-file=/dev/null " .. cmd .. " 2>&1")
  local n = out:match("Collected : (%d+)")
  if rc ~= 0 or not n then error("bench-instr: " .. what .. " failed (" .. rc .. "): " .. out:sub(-600), 0) end
  return tonumber(n)
end

-- (count of 3n - count of n) / 2n
local function per_op(what, make_cmd, n, envs, ops_per_n)
  local function run_n(k)
    local cmd, extra = make_cmd(k)
    local all = {}
    for key, v in pairs(envs or {}) do all[key] = v end
    for key, v in pairs(extra or {}) do all[key] = v end
    return count(cmd, all, what)
  end
  local small = run_n(n)
  local large = run_n(3 * n)
  return (large - small) / (2 * n * (ops_per_n or 1))
end

local s = sim.start()
local ok, err = pcall(function()
  s:settings { genesys_rate = 0, log_enabled = false }
  local admin = s:seed { provider = "genesys", admin = true }
  local res = assert(s:request { method = "POST", path = "/genesys/login/oauth/token",
    basic = { admin.client_id, admin.client_secret }, form = { grant_type = "client_credentials" } })
  local token_file, admin_file = s.dir .. "/instr-token", s.dir .. "/instr-admin"
  sim.write_file(token_file, res.json.access_token)
  sim.write_file(admin_file, admin.client_id .. "\n" .. admin.client_secret .. "\n")
  run("chmod 600 " .. shq(token_file) .. " " .. shq(admin_file))
  local envs = { INSTR_URL = s.url, INSTR_CA = s.ca, INSTR_TOKEN_FILE = token_file }
  local self_cmd = function(what) return function(n) return "lua5.4 spec/bench/instr.lua " .. what .. " " .. n end end

  io.stderr:write("bench-instr: GETs, HTTP/1.1 ...\n")
  local h1 = per_op("rotor GETs", self_cmd("get"), GET_N, envs)
  io.stderr:write("bench-instr: GETs, HTTP/2 ...\n")
  local h2_env = { INSTR_HTTP2 = "1" }
  for k, v in pairs(envs) do h2_env[k] = v end
  local h2 = per_op("rotor GETs", self_cmd("get"), GET_N, h2_env)
  io.stderr:write("bench-instr: libcurl alone ...\n")
  local floor = function(h) return function(n)
    return ("build/curl_floor %s %s %s %d 1 %d"):format(shq(s.url .. "/genesys/api/v2/tokens/me"), shq(s.ca),
      shq(token_file), n, h)
  end end
  local f2, f1 = per_op("libcurl GETs", floor(1), GET_N), per_op("libcurl GETs", floor(0), GET_N)

  io.stderr:write("bench-instr: durable rotations ...\n")
  local batch = {}
  for i = 1, 3 * ROTATE_N do batch[i] = { provider = "genesys", name = "instr-" .. i } end
  local ids = {}
  for i, c in ipairs(s:seed(batch)) do ids[i] = c.client_id end
  local store_n = 0
  local rotate = function(n)
    store_n = store_n + 1
    local dir = s.dir .. "/instr-store-" .. store_n
    return "lua5.4 spec/bench/instr.lua rotate " .. n,
      { INSTR_STORE = dir, INSTR_ADMIN_FILE = admin_file, INSTR_IDS = table.concat(ids, ",", 1, n) }
  end
  local rot = per_op("rotations", rotate, ROTATE_N, envs, 2)
  -- the same slots with full journals: each store filled here, in this process, before the run
  io.stderr:write("bench-instr: durable rotations, slots with a full journal ...\n")
  local rotor = require "rotor"
  local rotate_full = function(n)
    local cmd, extra = rotate(n)
    local store = assert(rotor.store.file(extra.INSTR_STORE))
    for i = 1, n do
      local journal = {}
      for k = 1, 200 do
        journal[k] = { step = ({ "rotation", "create", "verify", "promote" })[k % 4 + 1], outcome = "ok",
          time = "2026-01-01T00:00:00Z", rotation = ("r20260101T000000Z-%016x"):format(k),
          note = k % 4 == 1 and ("client %s rotated (regenerate)"):format(ids[i]) or nil }
      end
      assert(store:put("instr/" .. i, { slot = "instr/" .. i, provider = "genesys", journal = journal,
        versions = { current = { client_id = ids[i], secret = rotor.secret("instr-old-secret-" .. i),
          created = "2026-01-01T00:00:00Z" } } }))
    end
    return cmd, extra
  end
  local rot_full = per_op("rotations", rotate_full, ROTATE_N, envs, 2)

  print(("%-58s %12s"):format("instructions (user space, all threads; callgrind)", "per op"))
  print(("%-58s %12.0f"):format("GET c=1, rotor, HTTP/1.1 (default)", h1))
  print(("%-58s %12.0f"):format("GET c=1, libcurl alone, HTTP/1.1", f1))
  print(("%-58s %12.2f"):format("  rotor / libcurl", h1 / f1))
  print(("%-58s %12.0f"):format("GET c=1, rotor, HTTP/2", h2))
  print(("%-58s %12.0f"):format("GET c=1, libcurl alone, HTTP/2", f2))
  print(("%-58s %12.2f"):format("  rotor / libcurl", h2 / f2))
  print(("%-58s %12.0f"):format("durable rotation (Genesys, file store, c=16, HTTP/2)", rot))
  print(("%-58s %12.0f"):format("  the same, slots with a full journal (200 entries)", rot_full))
  print(("%-58s %12.2f"):format("  full journal / fresh", rot_full / rot))
  os.remove(token_file)
  os.remove(admin_file)
end)
s:stop()
if not ok then
  io.stderr:write(tostring(err) .. "\n")
  os.exit(1)
end
