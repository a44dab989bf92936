-- spec/bench/run.lua: rotor's benchmarks, measured in one run against the bundled simulator.
--
--   make bench        (= lua5.4 spec/bench/run.lua, from the repository root, after `make`)
--
-- 1. throughput: rotor.parallel at concurrency 1, 8, 32 doing a token-authenticated GET
--    (Genesys /api/v2/tokens/me), as a ratio to wrk (HTTP/1.1, one thread, N connections) on the
--    same URL. Three interleaved rounds per concurrency: wrk, then rotor running a fixed count of
--    requests (BENCH_SECONDS of that round's wrk rate) over HTTP/1.1 (rotor's default: N
--    connections) and over HTTP/2 (http2=true: one connection); each ratio is taken within its
--    round, the median shown.
--    In each round libcurl alone does the same requests too (spec/bench/curl_floor.c: a C client
--    on the multi interface, easy handles reused, no Lua), for the part of the gap that is
--    libcurl's own. Each run's CPU time per request is shown beside it (rotor: this process;
--    wrk and libcurl alone: the child's user + system time, in ticks of 10 ms): at concurrency 1
--    the client's CPU time lies on every request's path, so the gap to wrk follows it. A request's
--    time at concurrency 1 also holds the wake-ups of the client and of the simulator, each
--    waiting for the other: the same rotor loop made about 7,000 requests/s on a quiet machine
--    and 21,000 while another job kept both cores busy (2026-12-05). Rates from different moments
--    do not compare; the ratios within a round do.
-- 2. a paced batch: N requests under R/s (policy.rate in rotor, spreetail_rate in the simulator:
--    a token bucket of 25, refilled at 25/s, per client); wall time over the floor (N-1)/R, and the 429s.
-- 3. startup: `build/rotor -e ''` against `lua5.4 -e ''` (hyperfine).
-- 4. peak RSS of a child `build/rotor spec/bench/rss_worker.lua` doing 10,000 GETs at
--    concurrency 32 (VmHWM).
-- 5. minting: regenerate N Genesys secrets (postOauthClientSecret) at concurrency 16, rotor
--    (rotor.genesys + rotor.parallel, pacing off) against the official Genesys Cloud JS SDK (npm
--    purecloud-platform-client-v2, installed into build/bench-sdk when missing;
--    spec/bench/sdk_regenerate.js) on the same simulator (its rate limit lifted), in interleaved
--    rounds (rotor, SDK, rotor, SDK, ...); each round warms up on N/4 calls first (untimed).
--    The ratio of the medians.
-- 6. a durable batch: rotor.rotate of N slots (mint, persist pending, verify, promote, audit; the
--    file store in build/bench-store on this disk, real fsync) at concurrency 16: on new slots
--    (after the first round, in a store of their own: they rotate the same clients, and a store
--    refuses a second slot for a client one of its slots holds), on the same slots again, and
--    after each slot's journal was filled to the store's last 200 entries (as a slot rotated for
--    long carries them). Three rounds of each, every batch followed
--    by an SDK round; each batch's rate as a ratio to the SDK's bare regenerate rate (the median of
--    part 5's SDK rounds and this row's), and the median of the three ratios. A batch runs on the
--    connections the run before it left (rotor keeps a finished batch's connections for the next),
--    as the SDK's timed calls run on those its warm-up opened. Beside the goal, each batch is also
--    followed by an SDK round that keeps each new secret as the least a script must do not to lose
--    a secret shown once (a temporary file, fsync, rename, directory fsync: build/bench-sdk-store),
--    and the row's median rate is shown against the median of those rounds: the SDK doing some of
--    the durable work rotor does, where the goal's peer does none. Last, for information, three
--    batches of new slots at concurrency 32, each followed by an SDK round at 32: the ratio of the
--    medians (a batch's rate grows with the rotations that share each group commit).
-- 7. group commit beside a writer: 150 group commits of 19 durable writes (18 atomic 3.3 kB files
--    and an append, as a batch's group) in build/bench-gc, on a quiet system and then while dd
--    rewrites a 500 MB file on the same file system; the median and the slowest, in ms (a
--    syncfs would wait for dd's data too: the durable thread syncs per file when much is dirty).
-- Prints a table and writes build/bench.json. A benchmark, not a spec: nothing here fails on a
-- missed target (the exit status is non-zero only when the benchmark itself could not run).
-- No secret or token is printed or put on a command line: wrk and the RSS worker read them
-- from files (mode 0600) in the simulator's directory, removed at the end.
package.path = "./lua/?.lua;./lua/?/init.lua;./?.lua;" .. package.path
package.cpath = "./build/5.4/?.so;" .. package.cpath

local rotor = require "rotor"
local core = require "rotor.core"
local http = require "rotor.http"
local oauth = require "rotor.oauth"
local json = require "rotor.json"
local sched = require "rotor.sched"
local sim = require "spec.helpers.sim"

local shq, run = sim.shell_quote, sim.run
local now = core.now

local CONCURRENCY = { 1, 8, 32 }
local WRK_SECONDS = 2         -- wrk -d
local BENCH_SECONDS = 2       -- rotor runs this many seconds' worth of wrk's rate (of the round)
local THROUGHPUT_ROUNDS = 3   -- per concurrency: wrk, rotor HTTP/1.1, rotor HTTP/2, interleaved
local PACED_RATE = 25         -- R, requests per second (rotor's pacing and the simulator's limit)
local PACED_N = 125           -- N
local RSS_REQUESTS = 10000
local MINT_N = 400            -- secrets regenerated per round, and slots rotated per batch
local MINT_CONC = 16
local MINT_ROUNDS = 3
local BATCH_ROUNDS = 3        -- per kind of batch: a batch, then an SDK round, interleaved
local WIDE_CONC = 32          -- the information row: new slots, rotor and the SDK both at this concurrency
local SDK_PACKAGE = "purecloud-platform-client-v2"
local SDK_DIR = "build/bench-sdk"
local TARGET = {
  sim_rps = 10000, ratio_1 = 0.90, ratio_32 = 0.80, paced = 1.05, paced_429 = 0, startup = 1.5,
  rss_mb = 30, mint = 2.0, batch = 1.0,
}

local function log(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
  io.stderr:flush()
end

local function need(cmd)
  local _, rc = run("command -v " .. cmd .. " >/dev/null 2>&1")
  if rc ~= 0 then error("spec/bench: " .. cmd .. " is not installed (make deps)", 0) end
end
need("wrk"); need("hyperfine")
for _, f in ipairs{ "build/rotor", "build/5.4/rotor/core.so" } do
  if not io.open(f, "rb") then error("spec/bench: " .. f .. " is missing: run make first", 0) end
end

local function write_private(path, data)
  local _, rc = run("umask 077 && : > " .. shq(path))
  assert(rc == 0, "cannot create " .. path)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local read_all = sim.read_file

-- ---- connections of this process to the simulator (which protocol rotor really uses) ----
local function self_pid()
  local s = read_all("/proc/self/stat") or ""
  return s:match("^(%d+)")
end
local PID = self_pid()

-- the sum of two CPU-time fields (numbered as in stat(5)) of a /proc stat file, in seconds (clock
-- ticks of 1/100 s); the fields after the command start at field 3 (the state)
local function stat_cpu(path, a, b)
  local rest = (read_all(path) or ""):match("%) (.*)$") or ""
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return ((tonumber(f[a - 2]) or 0) + (tonumber(f[b - 2]) or 0)) / 100
end

-- CPU seconds of this process's main thread (the event loop): utime + stime, fields 14 and 15
local function main_thread_cpu() return stat_cpu("/proc/" .. PID .. "/task/" .. PID .. "/stat", 14, 15) end

-- CPU seconds of this process's children that have ended (and been waited for): cutime + cstime,
-- fields 16 and 17
local function children_cpu() return stat_cpu("/proc/" .. PID .. "/stat", 16, 17) end

local function established_to(port)
  local inodes = {}
  local out = run("ls -l /proc/" .. PID .. "/fd 2>/dev/null")
  for ino in out:gmatch("socket:%[(%d+)%]") do inodes[ino] = true end
  local n = 0
  for _, tab in ipairs{ "tcp", "tcp6" } do
    local t = read_all("/proc/" .. PID .. "/net/" .. tab) or ""
    for line in t:gmatch("[^\n]+") do
      -- sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      local rem, st, ino = line:match("^%s*%d+:%s+%x+:%x+%s+%x+:(%x+)%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
      if rem and tonumber(rem, 16) == port and st == "01" and inodes[ino] then n = n + 1 end
    end
  end
  return n
end

-- BENCH_PARTS=5,6 runs only those parts (for working on one; `make bench` runs them all)
local PARTS = {}
for p in (os.getenv("BENCH_PARTS") or "1,2,3,4,5,6,7"):gmatch("%d+") do PARTS[tonumber(p)] = true end
local function part(n) return PARTS[n] == true end

-- rotor's default protocol: what a request table without http2 gets (csrc/http.c; http_spec
-- checks it is HTTP/1.1)
local DEFAULT_HTTP2 = false

local function median(t)
  local c = {}
  for i, v in ipairs(t) do c[i] = v end
  table.sort(c)
  local n = #c
  if n % 2 == 1 then return c[(n + 1) // 2] end
  return (c[n // 2] + c[n // 2 + 1]) / 2
end

-- ---- the official Genesys Cloud JS SDK (npm), for parts 5 and 6 ----
local function sdk_install()
  local _, rc = run("command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1")
  if rc ~= 0 then return nil, "node and npm are needed (make deps installs nodejs; npm: apt-get install npm)" end
  local pj = SDK_DIR .. "/node_modules/" .. SDK_PACKAGE .. "/package.json"
  if not read_all(pj) then
    log("mint: installing the SDK (npm %s into %s) ...", SDK_PACKAGE, SDK_DIR)
    local out, irc = run("mkdir -p " .. shq(SDK_DIR) .. " && npm install --prefix " .. shq(SDK_DIR)
      .. " --no-audit --no-fund --loglevel=error " .. SDK_PACKAGE .. " 2>&1")
    if irc ~= 0 or not read_all(pj) then return nil, "npm install failed: " .. out:sub(1, 200) end
  end
  local meta = json.decode(read_all(pj) or "") or {}
  local nv = run("node --version 2>/dev/null"):gsub("%s+$", "")
  return { version = meta.version, node = nv }
end

-- ---- the simulator ----
local s = sim.start()
-- one rotor round: MINT_N // 4 untimed regenerates, then MINT_N timed, on one loop (so the
-- connections the warm-up opened serve the timed part, as the SDK's keep-alive agent does)
local function rotor_mint_round(gc, ids, port)
  local okn, failed, dt, conns = 0, 0, 0, nil
  sched.close_idle()   -- each round opens its connections in its warm-up, as the SDK's does
  local before = established_to(port)
  rotor.parallel({ 1 }, function()
    local warm = {}
    for i = 1, MINT_N // 4 do warm[i] = ids[i] end
    rotor.parallel(warm, function(id) gc:post_oauth_client_secret(id) end, { concurrency = MINT_CONC })
    local t0 = now()
    rotor.parallel(ids, function(id)
      local c = gc:post_oauth_client_secret(id)
      if c and core.is_secret(c.secret) then okn = okn + 1 else failed = failed + 1 end
    end, { concurrency = MINT_CONC })
    dt = now() - t0
    conns = established_to(port) - before
  end)
  return { rate = #ids / dt, seconds = dt, ok = okn, failed = failed, connections = conns }
end

-- one SDK round (a node process): the same warm-up, then the timed part; with persist_dir, each
-- new secret kept durably there before the call counts (spec/bench/sdk_regenerate.js)
local function sdk_mint_round(sv, g, persist_dir, conc)
  local out, rc = run(string.format("NODE_EXTRA_CA_CERTS=%s ROTOR_SIM_URL=%s ROTOR_BENCH_SDK_DIR=%s "
    .. "ROTOR_BENCH_CLIENT_ID=%s ROTOR_BENCH_SECRET_FILE=%s ROTOR_BENCH_IDS_FILE=%s "
    .. "ROTOR_BENCH_CONCURRENCY=%d ROTOR_BENCH_WARMUP=%d %snode spec/bench/sdk_regenerate.js 2>&1",
    shq(s.ca), shq(s.url), shq(SDK_DIR), shq(g.client_id), shq(sv.secret_file), shq(sv.ids_file), conc or MINT_CONC,
    MINT_N // 4, persist_dir and ("ROTOR_BENCH_PERSIST_DIR=" .. shq(persist_dir) .. " ") or ""))
  local okn, failed, dt, conns = out:match("ROTOR_SDK (%d+) (%d+) (%S+) (%-?%d+)")
  if rc ~= 0 or not okn then error("the SDK round failed (" .. rc .. "): " .. core.redact(out:sub(1, 300)), 0) end
  return { rate = MINT_N / tonumber(dt), seconds = tonumber(dt), ok = tonumber(okn), failed = tonumber(failed),
    connections = tonumber(conns) }
end

local function genesys_admin(g)
  local gc = assert(rotor.genesys { client_id = g.client_id, client_secret = g.client_secret,
    base_url = s.url .. "/genesys", token_url = s.url .. "/genesys/login/oauth/token", cainfo = s.ca,
    pacing = false })
  assert(gc:token())
  return gc
end

local function seed_clients(n, name)
  local batch = {}
  for i = 1, n do batch[i] = { provider = "genesys", name = name .. i } end
  local out = s:seed(batch)
  local ids = {}
  for i, c in ipairs(out) do ids[i] = c.client_id end
  return ids
end

local function mint_bench(_, g)
  local sdk, why = sdk_install()
  if not sdk then return { error = why } end
  local port = tonumber(s.url:match(":(%d+)$"))
  local ids = seed_clients(MINT_N, "bench-mint-")
  local sv = { secret_file = s.dir .. "/bench-sdk-secret", ids_file = s.dir .. "/bench-sdk-ids" }
  write_private(sv.secret_file, g.client_secret)
  write_private(sv.ids_file, table.concat(ids, "\n") .. "\n")
  local gc = genesys_admin(g)
  local rounds, rr, sr, failed = {}, {}, {}, 0
  for i = 1, MINT_ROUNDS do
    log("mint: round %d of %d: rotor, then the SDK ...", i, MINT_ROUNDS)
    local r = rotor_mint_round(gc, ids, port)
    local k = sdk_mint_round(sv, g)
    rounds[i] = { rotor = r, sdk = k }
    rr[i], sr[i] = r.rate, k.rate
    failed = failed + r.failed + k.failed
  end
  local out = { rounds = rounds, rotor_rate = median(rr), sdk_rate = median(sr), failed = failed,
    sdk_version = sdk.version, node_version = sdk.node, sdk_rates = sr,
    rotor_conns = rounds[#rounds].rotor.connections, sdk_conns = rounds[#rounds].sdk.connections,
    sv = sv, n = MINT_N, concurrency = MINT_CONC }
  out.ratio = out.rotor_rate / out.sdk_rate
  return out
end

-- part 7: group commits of a batch-sized group, quiet and beside a writer on the same file system
local function group_commit_bench()
  local dir = "build/bench-gc"
  run("rm -rf " .. shq(dir) .. " && mkdir -p " .. shq(dir) .. " && chmod 700 " .. shq(dir))
  local d = assert(core.fs_dir(dir, true))
  local data, line = ("x"):rep(3300), ("y"):rep(300) .. "\n"
  local function commits(n)
    local times = {}
    for r = 1, n do
      local items = {}
      for i = 1, 18 do items[i] = { "atomic", d, "slot" .. i .. ".json", data, 384 } end
      items[19] = { "append", d, "audit.log", line, 384 }
      local t0 = now()
      local job = core.durable_start(items)
      local res
      repeat core.sleep(0.0002); res = job:results() until res
      job:close()
      for i = 1, #res do
        if res[i] ~= true then error("group commit " .. r .. ": " .. tostring(res[i]), 0) end
      end
      times[r] = (now() - t0) * 1e3
    end
    table.sort(times)
    return { median = times[(n + 1) // 2], max = times[n], n = n }
  end
  log("group commit: 150 quiet, then 150 beside dd ...")
  local quiet = commits(150)
  local big = dir .. "/dd-file"
  local pid = run("(for i in 1 2 3 4 5 6 7 8 9 10 11 12; do dd if=/dev/zero of=" .. shq(big)
    .. " bs=1M count=500 conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 & echo $!"):match("%d+")
  core.sleep(0.5)
  local ok, busy = pcall(commits, 150)
  run("pkill -P " .. pid .. " 2>/dev/null; kill " .. pid .. " 2>/dev/null; sleep 0.2; rm -rf " .. shq(dir))
  if not ok then error(busy, 0) end
  return { quiet = quiet, beside_writer = busy }
end

-- one timed batch: rotor.rotate of the slots PREFIX1..PREFIXn in rotor.parallel, with its group
-- commits counted (how many, how big, how long on disk) and the CPU it took
local function batch_round(store, gc, ids, prefix, items, conc)
  local audit_before = #(read_all(store:audit_path()) or ""):gsub("[^\n]", "")
  local okn, failed, firsterr = 0, 0, nil
  local jobs = { n = 0, items = 0, seconds = 0 }
  local real_start = core.durable_start
  core.durable_start = function(list)
    local job = real_start(list)
    jobs.n, jobs.items = jobs.n + 1, jobs.items + #list
    return setmetatable({}, { __index = {
      fd = function() return job:fd() end,
      close = function() return job:close() end,
      results = function()
        local r = job:results()
        if r then jobs.seconds = jobs.seconds + r.seconds end
        return r
      end } })
  end
  collectgarbage()
  local t0, c0, m0 = now(), os.clock(), main_thread_cpu()
  local ok, perr = pcall(rotor.parallel, items, function(i)
    local res, err = rotor.rotate { slot = prefix .. i, provider = gc, store = store,
      target = { client_id = ids[i] } }
    if res then okn = okn + 1 else failed = failed + 1; firsterr = firsterr or tostring(err) end
  end, { concurrency = conc or MINT_CONC })
  local dt, cpu, mcpu = now() - t0, os.clock() - c0, main_thread_cpu() - m0
  core.durable_start = real_start
  if not ok then error(perr, 0) end
  local lines = #(read_all(store:audit_path()) or ""):gsub("[^\n]", "") - audit_before
  return { rate = #items / dt, seconds = dt, ok = okn, failed = failed, error = firsterr, jobs = jobs, cpu = cpu,
    mcpu = mcpu, lines = lines }
end

local function batch_bench(_, g, mt)
  if mt.error then return { error = "needs the SDK: " .. mt.error } end
  local ids = seed_clients(MINT_N, "bench-batch-")
  local dir, sdk_dir = "build/bench-store", "build/bench-sdk-store"
  run("rm -rf " .. shq(dir) .. " " .. shq(dir) .. "-* " .. shq(sdk_dir))
  local store = assert(rotor.store.file(dir))
  local gc = genesys_admin(g)
  local items = {}
  for i = 1, MINT_N do items[i] = i end
  local out = { runs = {} }
  for _, name in ipairs{ "new slots", "same slots again", "slots with a full journal" } do
    if name == "slots with a full journal" then
      -- a slot rotated for long carries the store's last 200 journal entries (journal_max) in
      -- every read and write: each record is filled up to that with copies of its own entries
      rotor.parallel(items, function(i)
        local rec = assert(store:get("bench/1/" .. i))
        local own, j = rec.journal, {}
        for k = 1, 200 - #own do
          local e = own[(k - 1) % #own + 1]
          j[k] = { step = e.step, outcome = e.outcome, time = e.time, rotation = e.rotation, note = e.note }
        end
        for _, e in ipairs(own) do j[#j + 1] = e end
        rec.journal = j
        assert(store:put("bench/1/" .. i, rec))
      end, { concurrency = MINT_CONC })
    end
    -- interleaved rounds: a batch, then an SDK round; new slots are a fresh set each round (the
    -- same clients, so in a store of their own after the first: a store refuses a second slot for
    -- a client one of its slots holds), the others the first round's slots again
    local run_out = { name = name, rounds = {}, failed = 0, seconds = 0, cpu_seconds = 0, main_cpu_seconds = 0,
      writes = 0, group_commits = 0, disk_seconds = 0, lines = 0, sdk_failed = 0, persist_failed = 0 }
    local sdk_rates, persist_rates = {}, {}
    for _, r in ipairs(mt.sdk_rates) do sdk_rates[#sdk_rates + 1] = r end
    for round = 1, BATCH_ROUNDS do
      log("durable batch: %d rotations (%s), round %d of %d, then an SDK round, bare and persisting ...", MINT_N,
        name, round, BATCH_ROUNDS)
      local prefix = "bench/" .. (name == "new slots" and round or 1) .. "/"
      local b = batch_round(name == "new slots" and round > 1 and assert(rotor.store.file(dir .. "-" .. round))
        or store, gc, ids, prefix, items)
      local k = sdk_mint_round(mt.sv, g)
      local kp = sdk_mint_round(mt.sv, g, sdk_dir)
      sdk_rates[#sdk_rates + 1] = k.rate
      persist_rates[round] = kp.rate
      run_out.rounds[round] = { rate = b.rate, sdk_round = k.rate, sdk_persist_round = kp.rate }
      run_out.failed = run_out.failed + b.failed
      run_out.sdk_failed = run_out.sdk_failed + k.failed
      run_out.persist_failed = run_out.persist_failed + kp.failed
      run_out.error = run_out.error or (b.error and core.redact(b.error)) or nil
      run_out.seconds = run_out.seconds + b.seconds
      run_out.cpu_seconds, run_out.main_cpu_seconds = run_out.cpu_seconds + b.cpu, run_out.main_cpu_seconds + b.mcpu
      run_out.writes, run_out.group_commits = run_out.writes + b.jobs.items, run_out.group_commits + b.jobs.n
      run_out.disk_seconds, run_out.lines = run_out.disk_seconds + b.jobs.seconds, run_out.lines + b.lines
    end
    -- each round's ratio is to the median of every SDK round so far (part 5's and this row's)
    local sdk_rate = median(sdk_rates)
    local ratios, rates = {}, {}
    for i, rd in ipairs(run_out.rounds) do
      rd.ratio = rd.rate / sdk_rate
      ratios[i], rates[i] = rd.ratio, rd.rate
    end
    local rotations = MINT_N * BATCH_ROUNDS
    run_out.sdk_rate, run_out.rate, run_out.ratio = sdk_rate, median(rates), median(ratios)
    -- beside the goal: the SDK doing the least that keeps a secret shown once (this row's rounds)
    run_out.sdk_persist_rate = median(persist_rates)
    run_out.persist_ratio = run_out.rate / run_out.sdk_persist_rate
    run_out.writes_per_rotation = run_out.writes / rotations
    run_out.audit_lines_per_rotation = run_out.lines / rotations
    run_out.writes_per_group = run_out.group_commits > 0 and run_out.writes / run_out.group_commits or 0
    run_out.group_ms = run_out.group_commits > 0 and run_out.disk_seconds / run_out.group_commits * 1e3 or 0
    run_out.rotations = rotations
    out.runs[#out.runs + 1] = run_out
  end
  -- information beside the goal: new slots with both sides at twice the concurrency (a batch's
  -- rate grows with how many rotations share each group commit; the SDK's is bound by its CPU)
  local wide_r, wide_s, wide_failed = {}, {}, 0
  for round = 1, BATCH_ROUNDS do
    log("durable batch: %d rotations (new slots) at c=%d, round %d of %d, then an SDK round at c=%d ...", MINT_N,
      WIDE_CONC, round, BATCH_ROUNDS, WIDE_CONC)
    local b = batch_round(assert(rotor.store.file(dir .. "-wide" .. round)), gc, ids, "bench/wide" .. round .. "/",
      items, WIDE_CONC)
    local k = sdk_mint_round(mt.sv, g, nil, WIDE_CONC)
    wide_r[round], wide_s[round] = b.rate, k.rate
    wide_failed = wide_failed + b.failed + k.failed
  end
  out.wide = { concurrency = WIDE_CONC, rate = median(wide_r), sdk_rate = median(wide_s), failed = wide_failed,
    rates = wide_r, sdk_rates = wide_s }
  out.wide.ratio = out.wide.rate / out.wide.sdk_rate
  run("rm -rf " .. shq(dir) .. " " .. shq(dir) .. "-* " .. shq(sdk_dir))
  os.remove(mt.sv.secret_file)
  os.remove(mt.sv.ids_file)
  mt.sv = nil
  return out
end

local ok_all, err_all = xpcall(function()
  local port = tonumber(s.url:match(":(%d+)$"))
  s:settings{ genesys_rate = 0, log_enabled = false }
  local g = s:seed{ provider = "genesys", admin = true }
  local gspec = {
    url = s.url .. "/genesys/login/oauth/token", style = "basic", provider = "genesys",
    client_id = g.client_id, client_secret = rotor.secret(g.client_secret), cainfo = s.ca,
  }
  local token = assert(oauth.token(gspec))
  local url = s.url .. "/genesys/api/v2/tokens/me"
  local results = { simulator = { url_path = "/genesys/api/v2/tokens/me" } }

  -- wrk reads the token from a file: never on a command line
  local tokfile, wrkscript = s.dir .. "/bench-token", s.dir .. "/bench-wrk.lua"
  write_private(tokfile, token:reveal())
  write_private(wrkscript, table.concat({
    "local f = assert(io.open(" .. string.format("%q", tokfile) .. ", 'rb'))",
    "wrk.headers['Authorization'] = 'Bearer ' .. f:read('*a')",
    "f:close()",
    "function done(summary)",
    "  local e = summary.errors",
    "  io.write(string.format('ROTOR_WRK %d %d %d %d %d %d %d\\n', summary.requests, summary.duration,",
    "    e.connect, e.read, e.write, e.status, e.timeout))",
    "end",
  }, "\n") .. "\n")

  local function wrk(conns)
    local c0 = children_cpu()
    local out, rc = run(string.format("wrk -t1 -c%d -d%ds -s %s %s 2>&1", conns, WRK_SECONDS,
      shq(wrkscript), shq(url)))
    local req, dur, ce, re, we, se, te = out:match("ROTOR_WRK (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)")
    if rc ~= 0 or not req then error("wrk failed (" .. rc .. "): " .. out:sub(1, 300), 0) end
    local errors = ce + re + we + se + te
    return { rps = req / (dur / 1e6), requests = tonumber(req), errors = math.tointeger(errors),
      cpu_us = (children_cpu() - c0) / req * 1e6 }
  end

  -- rotor: n GETs through rotor.parallel; a fresh request table per call, as a client builds it
  local function rotor_run(conc, h2, n, probe_at)
    local items = {}
    for i = 1, n do items[i] = i end
    local good, bad, conns = 0, 0, nil
    sched.close_idle()   -- close the connections the previous run left: each run opens its own
    local before = probe_at and established_to(port)   -- e.g. the token fetch's connection
    local t0, c0 = now(), os.clock()
    rotor.parallel(items, function(i)
      local res = http.request({
        url = url, cainfo = s.ca, http2 = h2,
        headers = { { "Authorization", token, prefix = "Bearer " } },
      }, { provider = "genesys", op = "bench" })
      if res and res.status == 200 then good = good + 1 else bad = bad + 1 end
      if i == probe_at then conns = established_to(port) - before end
    end, { concurrency = conc })
    local dt, cpu = now() - t0, os.clock() - c0
    return { rps = n / dt, requests = n, seconds = dt, failed = bad, connections = conns, cpu_us = cpu / n * 1e6 }
  end

  -- libcurl's own floor (spec/bench/curl_floor.c, built by make bench): n GETs at concurrency c
  local function curl_floor(conc, h2, n)
    local c0 = children_cpu()
    local out, rc = run(string.format("build/curl_floor %s %s %s %d %d %d 2>&1", shq(url), shq(s.ca),
      shq(tokfile), n, conc, h2 and 1 or 0))
    local req, secs, bad = out:match("CURL_FLOOR (%d+) ([%d.]+) (%d+)")
    if rc ~= 0 or not req then error("curl_floor failed (" .. rc .. "): " .. out:sub(1, 300), 0) end
    return { rps = tonumber(req) / tonumber(secs), failed = tonumber(bad), cpu_us = (children_cpu() - c0) / n * 1e6 }
  end

  -- 1. throughput ------------------------------------------------------------------------------
  if part(1) then
    results.throughput = {}
    for _, c in ipairs(CONCURRENCY) do
      local row = { concurrency = c, rounds = {} }
      local protocol = {}
      for _, mode in ipairs{ { "h1", false }, { "h2", true } } do
        -- untimed: the protocol the simulator sees (its request log)
        s:settings{ log_enabled = true }
        s:control("DELETE", "/log")
        rotor_run(c, mode[2], 4 * c)
        local protos = {}
        for _, e in ipairs(s:log()) do
          if e.path == results.simulator.url_path then protos[e.proto] = (protos[e.proto] or 0) + 1 end
        end
        s:settings{ log_enabled = false }
        local plist = {}
        for k in pairs(protos) do plist[#plist + 1] = k end
        table.sort(plist)
        protocol[mode[1]] = table.concat(plist, "+")
      end
      -- interleaved rounds: wrk, rotor HTTP/1.1, rotor HTTP/2, each ratio within its round
      local wr, ratios, floor = {}, { h1 = {}, h2 = {} }, { h1 = {}, h2 = {} }
      local rates, last = { h1 = {}, h2 = {} }, {}
      for k = 1, THROUGHPUT_ROUNDS do
        log("throughput: concurrency %d, round %d of %d: wrk %d s, rotor HTTP/1.1, rotor HTTP/2 ...", c, k,
          THROUGHPUT_ROUNDS, WRK_SECONDS)
        local w = wrk(c)
        local n = math.max(200 * c, math.floor(w.rps * BENCH_SECONDS))
        wr[k] = w.rps
        local rd = { wrk = w }
        for _, mode in ipairs{ { "h1", false }, { "h2", true } } do
          local r = rotor_run(c, mode[2], n, n // 2)
          r.ratio = r.rps / w.rps
          rd[mode[1]] = r
          ratios[mode[1]][k], rates[mode[1]][k] = r.ratio, r.rps
          last[mode[1]] = r
          -- libcurl alone, the same requests (its floor: what rotor adds is the rest)
          local fl = curl_floor(c, mode[2], n)
          fl.ratio = fl.rps / w.rps
          rd["floor_" .. mode[1]] = fl
          floor[mode[1]][k] = fl.ratio
        end
        row.rounds[k] = rd
      end
      -- the median over the rounds of each run's client CPU per request (µs)
      local function cpu_of(key)
        local v = {}
        for k, rd in ipairs(row.rounds) do v[k] = rd[key].cpu_us end
        return median(v)
      end
      row.wrk = { rps = median(wr), errors = 0, cpu_us = cpu_of("wrk") }
      for _, rd in ipairs(row.rounds) do row.wrk.errors = row.wrk.errors + rd.wrk.errors end
      for _, m in ipairs{ "h1", "h2" } do
        local failed = 0
        for _, rd in ipairs(row.rounds) do failed = failed + rd[m].failed end
        row[m] = { rps = median(rates[m]), ratio = median(ratios[m]), ratios = ratios[m], failed = failed,
          protocol = protocol[m], connections = last[m].connections,
          floor_ratio = median(floor[m]), floor_ratios = floor[m],
          cpu_us = cpu_of(m), floor_cpu_us = cpu_of("floor_" .. m) }
      end
      results.throughput[#results.throughput + 1] = row
      if c == 32 then results.simulator.wrk_rps_c32 = row.wrk.rps end
    end
    os.remove(tokfile)
    os.remove(wrkscript)
  end

  -- 2. paced batch (Spreetail: spreetail_rate is a token bucket of 25, refilled at 25/s, per client)
  if part(2) then
    log("paced: %d requests at %d/s ...", PACED_N, PACED_RATE)
    s:settings{ spreetail_rate = PACED_RATE, log_enabled = true, log_max = 100000 }
    local sp = s:seed{ provider = "spreetail" }
    local sspec = {
      url = s.url .. "/spreetail/api/v0/oauth/token", style = "form", provider = "spreetail",
      client_id = sp.client_id, client_secret = rotor.secret(sp.client_secret), cainfo = s.ca,
      fields = { grant_type = "GrantType", client_id = "ClientId", client_secret = "ClientSecret" },
      response = { token = "accessToken", expires = "expiresIn" },
    }
    local stoken = assert(oauth.token(sspec))
    local spath = "/spreetail/api/v0/client-credentials"
    local items = {}
    for i = 1, PACED_N do items[i] = i end
    s:control("DELETE", "/log")
    local good, retried = 0, 0
    local policy = { provider = "spreetail", op = "bench",
      rate = { key = "bench:spreetail", rate = PACED_RATE, per = 1 } }
    collectgarbage()
    local t0 = now()
    rotor.parallel(items, function()
      local res = http.request({ url = s.url .. spath, cainfo = s.ca,
        headers = { { "Authorization", stoken, prefix = "Bearer " } } }, policy)
      if res and res.status == 200 then good = good + 1 end
      if res and res.attempts and res.attempts > 1 then retried = retried + 1 end
    end, { concurrency = 16 })
    local wall = now() - t0
    local n429, seen = 0, 0
    for _, e in ipairs(s:log()) do
      if e.path == spath then
        seen = seen + 1
        if e.status == 429 then n429 = n429 + 1 end
      end
    end
    s:settings{ log_enabled = false }
    local floor = (PACED_N - 1) / PACED_RATE
    results.paced = {
      n = PACED_N, rate = PACED_RATE, wall = wall, floor = floor, floor_rule = "(N-1)/R",
      ratio = wall / floor, ratio_n_over_r = wall / (PACED_N / PACED_RATE), ok = good,
      server_requests = seen, status_429 = n429, retried = retried,
      limit = "simulator spreetail_rate (token bucket per client: R at once, refilled at R/s) on GET " .. spath,
    }
  end

  -- 3. startup ---------------------------------------------------------------------------------
  if part(3) then
    log("startup: hyperfine ...")
    local hf = s.dir .. "/bench-hyperfine.json"
    local out, rc = run("hyperfine -N --warmup 20 --runs 200 --export-json " .. shq(hf) ..
      " \"build/rotor -e ''\" \"lua5.4 -e ''\" 2>&1")
    local hj = json.decode(read_all(hf) or "")
    if rc ~= 0 or type(hj) ~= "table" then error("hyperfine failed: " .. out:sub(1, 300), 0) end
    local rr, lr = hj.results[1], hj.results[2]
    results.startup = {
      rotor_mean_ms = rr.mean * 1e3, lua_mean_ms = lr.mean * 1e3,
      rotor_median_ms = rr.median * 1e3, lua_median_ms = lr.median * 1e3,
      ratio = rr.mean / lr.mean, ratio_median = rr.median / lr.median, runs = 200,
    }
  end

  -- 4. peak RSS --------------------------------------------------------------------------------
  if part(4) then
    local secfile = s.dir .. "/bench-secret"
    write_private(secfile, g.client_secret)
    results.rss = {}
    for _, mode in ipairs{ { "h2", "1" }, { "h1", "0" } } do
      log("rss: %d requests, concurrency 32, %s ...", RSS_REQUESTS, mode[1])
      local t1 = now()
      local o, rc2 = run(string.format("ROTOR_SIM_URL=%s ROTOR_SIM_CA=%s ROTOR_BENCH_CLIENT_ID=%s "
        .. "ROTOR_BENCH_SECRET_FILE=%s ROTOR_BENCH_REQUESTS=%d ROTOR_BENCH_CONCURRENCY=32 ROTOR_BENCH_HTTP2=%s "
        .. "build/rotor spec/bench/rss_worker.lua 2>&1", shq(s.url), shq(s.ca), shq(g.client_id),
        shq(secfile), RSS_REQUESTS, mode[2]))
      local okn, failed, hwm = o:match("ok=(%d+) failed=(%d+) vmhwm_kb=(%-?%d+)")
      if rc2 ~= 0 or not okn then error("rss worker failed (" .. rc2 .. "): " .. core.redact(o:sub(1, 300)), 0) end
      results.rss[mode[1]] = { ok = tonumber(okn), failed = tonumber(failed), vmhwm_kb = tonumber(hwm),
        mb = tonumber(hwm) / 1024, seconds = now() - t1 }
    end
    os.remove(secfile)
  end

  -- 5. minting: rotor against the official Genesys Cloud JS SDK ----------------------------------
  if part(5) then
    results.mint = mint_bench(s, g)
  end

  -- 6. a durable rotation batch ----------------------------------------------------------------
  if part(6) then
    results.mint = results.mint or mint_bench(s, g)   -- its SDK rates are the reference
    results.batch = batch_bench(s, g, results.mint)
  end

  -- 7. group commit beside a writer --------------------------------------------------------------
  if part(7) then
    results.group_commit = group_commit_bench()
  end

  if results.mint and results.mint.sv then   -- part 5 ran without part 6: its SDK inputs
    os.remove(results.mint.sv.secret_file)
    os.remove(results.mint.sv.ids_file)
    results.mint.sv = nil
  end

  -- report -------------------------------------------------------------------------------------
  local rows = {}
  local function row(name, value, target, pass)
    local verdict = pass == nil and "" or (pass and "PASS" or "MISS")
    rows[#rows + 1] = { name = name, value = value, target = target or "", result = verdict }
  end
  local simrps = results.simulator.wrk_rps_c32
  if simrps then
    row("simulator: wrk -t1 -c32 req/s", string.format("%.0f", simrps), ">= 10000", simrps >= TARGET.sim_rps)
  end
  for _, t in ipairs(results.throughput or {}) do
    local c = t.concurrency
    local function conns(r)
      return string.format(" [%s, %s conn]", r.protocol ~= "" and r.protocol or "?", r.connections or "?")
    end
    row(string.format("c=%d wrk (HTTP/1.1, %d conn) req/s, median", c, c), string.format("%.0f", t.wrk.rps)
      .. (t.wrk.errors > 0 and (" (" .. t.wrk.errors .. " errors)") or ""))
    -- the goal applies to rotor's default protocol (http2 = DEFAULT_HTTP2 in a request table)
    local goal = (c == 1 and TARGET.ratio_1) or (c == 32 and TARGET.ratio_32) or nil
    for _, m in ipairs{ { "h1", "HTTP/1.1", false }, { "h2", "HTTP/2", true } } do
      local r = t[m[1]]
      local default = m[3] == DEFAULT_HTTP2
      local target = goal and default and string.format(">= %.2f x wrk", goal) or nil
      local rs = {}
      for k, v in ipairs(r.ratios) do rs[k] = string.format("%.2f", v) end
      local pass
      if target then pass = r.ratio >= goal and r.failed == 0 end
      row(string.format("c=%d rotor %s%s req/s, ratio", c, m[2], default and " (default)" or ""),
        string.format("%.0f; rounds %s: median %.2f%s%s", r.rps, table.concat(rs, " "), r.ratio, conns(r),
          r.failed > 0 and (" " .. r.failed .. " failed") or ""), target, pass)
      if r.floor_ratio then
        local fs = {}
        for k, v in ipairs(r.floor_ratios) do fs[k] = string.format("%.2f", v) end
        row(string.format("  libcurl alone (C, multi), %s: ratio to wrk; rotor / libcurl", m[2]),
          string.format("rounds %s: median %.2f; %.2f", table.concat(fs, " "), r.floor_ratio,
            r.ratio / r.floor_ratio))
      end
      if r.cpu_us then
        row(string.format("  client CPU per request (us), %s: rotor / libcurl alone / wrk", m[2]),
          string.format("%.1f / %.1f / %.1f", r.cpu_us, r.floor_cpu_us, t.wrk.cpu_us))
      end
    end
  end
  local p = results.paced
  if p then
    row(string.format("paced N=%d R=%d/s: wall / ((N-1)/R)", p.n, p.rate),
      string.format("%.3f (%.2f s / %.2f s)", p.ratio, p.wall, p.floor), "<= 1.05", p.ratio <= TARGET.paced)
    row("paced: 429s from the simulator", string.format("%d of %d", p.status_429, p.server_requests), "0",
      p.status_429 == 0 and p.ok == p.n)
  end
  local st = results.startup
  if st then
    row("startup: rotor -e '' / lua5.4 -e '' (mean)",
      string.format("%.2f (%.2f ms / %.2f ms)", st.ratio, st.rotor_mean_ms, st.lua_mean_ms), "<= 1.5",
      st.ratio <= TARGET.startup)
    row("startup: same, median", string.format("%.2f (%.2f ms / %.2f ms)", st.ratio_median,
      st.rotor_median_ms, st.lua_median_ms))
  end
  for _, m in ipairs(results.rss and { "h2", "h1" } or {}) do
    local r = results.rss[m]
    -- a VmHWM that could not be read (-1) is no measurement: never a PASS
    row(string.format("peak RSS, %d GETs c=32 %s (VmHWM)", RSS_REQUESTS, m == "h2" and "HTTP/2" or "HTTP/1.1"),
      (r.vmhwm_kb > 0 and string.format("%.1f MB", r.mb) or "unreadable")
        .. (r.failed > 0 and (" " .. r.failed .. " failed") or ""), "<= 30 MB",
      r.vmhwm_kb > 0 and r.mb <= TARGET.rss_mb and r.failed == 0)
  end
  local mt = results.mint or { error = "skipped (BENCH_PARTS)" }
  if mt.error then
    row("mint: rotor / JS SDK", "not measured: " .. mt.error, ">= 2.00", false)
  else
    for i, rd in ipairs(mt.rounds) do
      row(string.format("mint round %d: rotor / SDK regenerate/s", i),
        string.format("%.0f / %.0f = %.2f", rd.rotor.rate, rd.sdk.rate, rd.rotor.rate / rd.sdk.rate))
    end
    row(string.format("mint N=%d c=%d: rotor / JS SDK (medians)", MINT_N, MINT_CONC),
      string.format("%.0f / %.0f = %.2f%s", mt.rotor_rate, mt.sdk_rate, mt.ratio,
        (mt.failed > 0) and (" " .. mt.failed .. " failed") or ""),
      ">= 2.00", mt.ratio >= TARGET.mint and mt.failed == 0)
    row("mint: connections rotor / SDK opened per round", string.format("%s / %s", tostring(mt.rotor_conns),
      tostring(mt.sdk_conns)))
  end
  local bt = results.batch or { error = "skipped (BENCH_PARTS)" }
  if bt.error then
    row("durable batch: rotor.rotate / SDK", "not measured: " .. bt.error, ">= 1.00", false)
  else
    for _, b in ipairs(bt.runs) do
      local rr = {}
      for i, rd in ipairs(b.rounds) do rr[i] = string.format("%.2f", rd.ratio) end
      row(string.format("durable batch N=%d c=%d, %s: rotate/s / SDK", MINT_N, MINT_CONC, b.name),
        string.format("%.0f / %.0f; rounds %s: median %.2f%s%s", b.rate, b.sdk_rate, table.concat(rr, " "), b.ratio,
          b.failed > 0 and (" " .. b.failed .. " failed") or "",
          b.sdk_failed > 0 and (" (" .. b.sdk_failed .. " of the SDK's calls in this row failed)") or ""),
        ">= 1.00", b.ratio >= TARGET.batch and b.failed == 0 and b.sdk_failed == 0)
      row(string.format("  %s: rotate/s / SDK keeping each new secret durably", b.name),
        string.format("%.0f / %.0f = %.2f%s", b.rate, b.sdk_persist_rate, b.persist_ratio,
          b.persist_failed > 0 and (" (" .. b.persist_failed .. " of those SDK calls failed)") or ""))
      row(string.format("  %s: fsync-ed writes per rotation (puts and audit appends)", b.name),
        string.format("%.1f, for %.1f audit lines", b.writes_per_rotation, b.audit_lines_per_rotation))
      row(string.format("  %s: group commits, writes each, ms each on disk", b.name),
        string.format("%d, %.1f, %.2f ms (%.2f s of %.2f s)", b.group_commits, b.writes_per_group, b.group_ms,
          b.disk_seconds, b.seconds))
      row(string.format("  %s: CPU per rotation, rotor process (all threads) / its event loop", b.name),
        string.format("%.2f ms / %.2f ms (%.2f s, %.2f s of %.2f s)", b.cpu_seconds * 1e3 / b.rotations,
          b.main_cpu_seconds * 1e3 / b.rotations, b.cpu_seconds, b.main_cpu_seconds, b.seconds))
    end
  end
  if bt.wide then
    local w = bt.wide
    row(string.format("durable batch N=%d, new slots, both at c=%d (information): rotate/s / SDK", MINT_N,
      w.concurrency), string.format("%.0f / %.0f = %.2f%s", w.rate, w.sdk_rate, w.ratio,
      w.failed > 0 and (" (" .. w.failed .. " failed)") or ""))
  end
  local gc = results.group_commit
  if gc then
    row("group commit of 19 writes, quiet: median / slowest ms",
      string.format("%.2f / %.2f (%d commits)", gc.quiet.median, gc.quiet.max, gc.quiet.n))
    row("  beside dd writing to the same file system: median / slowest ms",
      string.format("%.2f / %.2f (%d commits)", gc.beside_writer.median, gc.beside_writer.max, gc.beside_writer.n))
  end
  results.table = rows

  local w1, w2, w3 = 6, 5, 6
  for _, r in ipairs(rows) do
    w1 = math.max(w1, #r.name); w2 = math.max(w2, #r.value); w3 = math.max(w3, #r.target)
  end
  local fmt = "%-" .. w1 .. "s  %-" .. w2 .. "s  %-" .. w3 .. "s  %s"
  local lines = { string.format(fmt, "metric", "value", "target", "result"),
    string.rep("-", w1 + w2 + w3 + 12) }
  for _, r in ipairs(rows) do lines[#lines + 1] = string.format(fmt, r.name, r.value, r.target, r.result) end
  print(table.concat(lines, "\n"))
  print(string.format("throughput: %d interleaved rounds per concurrency (wrk %d s; rotor %d s of that "
    .. "round's wrk rate per protocol); wrk is HTTP/1.1 with N connections; the goal rows are rotor's "
    .. "default protocol (%s)", THROUGHPUT_ROUNDS, WRK_SECONDS, BENCH_SECONDS,
    DEFAULT_HTTP2 and "HTTP/2" or "HTTP/1.1"))
  if not mt.error then
    print(string.format("mint: %d rounds interleaved, each %d regenerates after %d untimed; the SDK "
      .. "%s %s on node %s", MINT_ROUNDS, MINT_N, MINT_N // 4, SDK_PACKAGE, mt.sdk_version or "?",
      mt.node_version or "?"))
  end
  if bt and not bt.error then
    print(string.format("durable batch: %d rounds of each kind, each batch followed by an SDK round; a round's "
      .. "ratio is to the median of part 5's SDK rounds and that row's; then an SDK round that writes each new "
      .. "secret to a file (temporary name, fsync, rename, directory fsync) before counting it", BATCH_ROUNDS))
  end
  if p then
    print(string.format("paced: %s; floor (N-1)/R: the first request goes at once; wall / (N/R) = %.3f",
      p.limit, p.ratio_n_over_r))
  end

  results.libcurl = core.curl_version
  results.when = os.date("!%Y-%m-%dT%H:%M:%SZ")
  os.execute("mkdir -p build")
  local jf = assert(io.open("build/bench.json", "wb"))
  jf:write(json.encode(results), "\n")
  jf:close()
  print("written: build/bench.json")
end, debug.traceback)
s:stop()
if not ok_all then
  io.stderr:write("spec/bench: ", core.redact(tostring(err_all)), "\n")
  os.exit(1)
end
