-- Durable writes inside rotor.parallel: the store's puts (and audit appends) of tasks that wait at
-- the same moment go to disk as one group commit on a thread (core.durable_start), each put
-- returning only once its bytes and its name are on disk.
local core = require "rotor.core"
local sched = require "rotor.sched"
local file_store = require "rotor.store.file"
local sim = require "spec.helpers.sim"
local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"

describe("group-committed durable writes", function()
  local dir, real_start, jobs

  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    real_start = core.durable_start
    jobs = {}
    core.durable_start = function(items)
      jobs[#jobs + 1] = #items
      return real_start(items)
    end
  end)
  after_each(function()
    core.durable_start = real_start
    os.execute("rm -rf '" .. dir .. "'")
  end)

  -- a spare that held a displaced record keeps none of its secrets: zeros (its blocks kept) after
  -- the record's journal (which holds none, and is kept when this process wrote the record), or
  -- nothing (when writing the zeros failed)
  local function emptied(path)
    local text = core.fs_read(path)
    if text == nil then return false end
    local journal = text:match('^{"journal":%b[]') or ""
    return text:sub(#journal + 1) == string.rep("\0", #text - #journal) and not journal:find("s-", 1, true)
  end

  -- the file holds only zeros
  local function zeroed(path)
    local text = core.fs_read(path)
    return text ~= nil and #text > 0 and text == string.rep("\0", #text)
  end

  local function record(n)
    return { provider = "genesys", versions = { current = { client_id = "c" .. n, secret = core.secret("s-" .. n) } },
             journal = { { step = "create", outcome = "ok" } } }
  end

  it("puts of 16 tasks waiting together are one group; each is on disk when it returns", function()
    local store = assert(file_store.new(dir))
    local items = {}
    for i = 1, 16 do items[i] = i end
    local seen = {}
    local results, errs = sched.parallel(items, function(i)
      assert(store:put("slot" .. i, record(i)))
      -- readable at once, from the file itself
      seen[i] = core.fs_read(store:path("slot" .. i)):find('"s-' .. i .. '"', 1, true) ~= nil
      return true
    end, { concurrency = 16 })
    assert.same({}, errs)
    assert.equal(16, #results)
    assert.same({ 16 }, jobs)
    for i = 1, 16 do
      assert.is_true(seen[i])
      assert.equal("s-" .. i, assert(store:get("slot" .. i)).versions.current.secret:reveal())
    end
    assert.equal(16, #store:list())
  end)

  -- run a group commit to its end: the result of each item
  local function run_job(items)
    local job = core.durable_start(items)
    local res
    repeat
      core.sleep(0.001)
      res = job:results()
    until res
    job:close()
    local out = {}
    for i = 1, #items do out[i] = res[i] end
    return out
  end

  -- the AddressSanitizer runtime the host under test (ROTOR) is linked with (make asan), or nil
  local function asan_runtime()
    return sim.run("ldd " .. sim.shell_quote(ROTOR) .. " 2>/dev/null"):match("libasan%S* => (%S+)")
  end

  -- the thread ids of this process's threads named rotor-durable
  local function durable_threads()
    local tids = {}
    local ls = io.popen("ls /proc/" .. core.getpid() .. "/task")
    for tid in ls:lines() do
      local f = io.open("/proc/" .. core.getpid() .. "/task/" .. tid .. "/comm")
      local comm = f and f:read("l")
      if f then f:close() end
      if comm == "rotor-durable" then tids[#tids + 1] = tid end
    end
    ls:close()
    return tids
  end

  it("runs the group commits one after another on one thread, kept between them", function()
    -- a thread started per group made each group wait for it to be scheduled
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local d = assert(core.fs_dir(dir, true))
    local seen = {}
    for n = 1, 3 do
      assert.same({ true, true }, run_job({ { "atomic", d, "x.json", "record " .. n, 384 },
                                            { "append", d, "log", "line " .. n .. "\n", 384 } }))
      seen[n] = table.concat(durable_threads(), " ")
    end
    assert.are_not.equal("", seen[1])
    assert.same({ seen[1], seen[1], seen[1] }, seen)
    assert.equal("record 3", core.fs_read(dir .. "/x.json"))
    assert.equal("line 1\nline 2\nline 3\n", core.fs_read(dir .. "/log"))
  end)

  it("appends of one group to one file land in their order, each with its own result", function()
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local d = assert(core.fs_dir(dir, true))
    local res = run_job({ { "append", d, "a.log", "l1\n", 384 }, { "atomic", d, "x.json", "x", 384 },
                          { "append", d, "a.log", "l2\n", 384 }, { "append", d, "b.log", "m1\n", 384 },
                          { "append", d, "a.log", "l3\n", 384 } })
    assert.same({ true, true, true, true, true }, res)
    assert.equal("l1\nl2\nl3\n", core.fs_read(dir .. "/a.log"))
    assert.equal("m1\n", core.fs_read(dir .. "/b.log"))
    assert.equal("x", core.fs_read(dir .. "/x.json"))
    -- a second group appends after the first
    assert.same({ true, true },
      run_job({ { "append", d, "a.log", "l4\n", 384 }, { "append", d, "a.log", "l5\n", 384 } }))
    assert.equal("l1\nl2\nl3\nl4\nl5\n", core.fs_read(dir .. "/a.log"))
  end)

  it("appends of one group to a file that cannot be opened all fail, naming it; the others are done", function()
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local d = assert(core.fs_dir(dir, true))
    local outside = dir .. "-outside"
    sim.write_file(outside, "")
    assert(os.execute("ln -s '" .. outside .. "' '" .. dir .. "/a.log'"))
    local res = run_job({ { "append", d, "a.log", "l1\n", 384 }, { "append", d, "b.log", "m1\n", 384 },
                          { "append", d, "a.log", "l2\n", 384 }, { "atomic", d, "x.json", "x", 384 } })
    os.remove(outside)
    for _, i in ipairs({ 1, 3 }) do
      assert.is_string(res[i])
      assert.matches("a.log is a symbolic link", res[i], 1, true)
    end
    assert.same({ true, true }, { res[2], res[4] })
    assert.equal("m1\n", core.fs_read(dir .. "/b.log"))
    assert.equal("x", core.fs_read(dir .. "/x.json"))
  end)

  it("keeps asynchronous signals off the durable-write thread: they reach a thread that acts on them", function()
    -- a signal the kernel handed to the durable thread would interrupt none of the event loop's
    -- waits; the loop's thread (which started it) keeps its own mask
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local d = assert(core.fs_dir(dir, true))
    assert.same({ true }, run_job({ { "atomic", d, "x.json", "record", 384 } }))
    local pid = core.getpid()
    -- the signals (1-32) a thread blocks, from its SigBlk line: blocked(n) tells
    local function mask_of(tid)
      local f = assert(io.open("/proc/" .. pid .. "/task/" .. tid .. "/status"))
      local hex = f:read("a"):match("\nSigBlk:%s*(%x+)")
      f:close()
      local low = tonumber(hex:sub(-8), 16)
      return function(n) return math.floor(low / 2 ^ (n - 1)) % 2 == 1 end
    end
    local durable = durable_threads()
    assert.equal(1, #durable)
    local blocked = mask_of(durable[1])
    for _, sig in ipairs { 1, 2, 3, 10, 12, 13, 14, 15, 17 } do   -- HUP INT QUIT USR1 USR2 PIPE ALRM TERM CHLD
      assert.is_true(blocked(sig), "signal " .. sig .. " reaches the durable thread")
    end
    for _, sig in ipairs { 4, 7, 8, 11 } do                         -- ILL BUS FPE SEGV: its own faults
      assert.is_false(blocked(sig), "fault signal " .. sig .. " blocked in the durable thread")
    end
    local own = mask_of(tostring(pid))
    for _, sig in ipairs { 2, 15 } do assert.is_false(own(sig), "signal " .. sig .. " blocked in the main thread") end
  end)

  it("a state that closes with a group commit under way finishes it first #proc", function()
    -- the job is neither waited for nor closed: closing the state (the end of the script) runs it
    -- to its end before the thread ends and the module is unloaded
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local script = os.tmpname()
    sim.write_file(script, ([[
      local core = require "rotor.core"
      local d = assert(core.fs_dir(%q, true))
      local items = {}
      for i = 1, 20 do items[i] = { "atomic", d, "slot" .. i .. ".json", "record " .. i, 384 } end
      core.durable_start(items)
      print("started")]]):format(dir))
    local out, rc = sim.run(("timeout -s KILL 20 %s %s 2>&1"):format(ROTOR, sim.shell_quote(script)))
    os.remove(script)
    assert.equal(0, rc, out)
    assert.equal("started\n", out)
    for i = 1, 20 do assert.equal("record " .. i, core.fs_read(dir .. "/slot" .. i .. ".json")) end
  end)

  it("a forked child runs group commits on a thread of its own; the parent keeps its thread #proc", function()
    -- fork() copies only the calling thread: a child that queued a group to the parent's
    -- durable-write thread would wait for ever. spec/helpers/fork_durable.c runs a group, forks,
    -- runs one in the child and one more in the parent. Built like the core under test (with
    -- the sanitizers when the host under test has them).
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local flags = ""
    if asan_runtime() then
      flags = "-fsanitize=address,undefined -g "
    end
    local out, rc = sim.run(("cc %s-o build/fork_durable spec/helpers/fork_durable.c "
      .. "$(pkg-config --cflags --libs lua5.4) 2>&1"):format(flags))
    assert(rc == 0, out)
    out, rc = sim.run(("timeout -s KILL 30 ./build/fork_durable %s %s 2>&1"):format(
      sim.shell_quote(dir), sim.shell_quote(package.cpath)))
    assert.equal("parent true\nchild true\nparent again true\n", out)
    assert.equal(0, rc)
    assert.equal("child.json", core.fs_read(dir .. "/child.json"))
    assert.equal("parent again.json", core.fs_read(dir .. "/parent again.json"))
  end)

  it("keeps no copy of a displaced record: the spare file is emptied, and not a slot", function()
    local store = assert(file_store.new(dir))
    sched.parallel({ 1 }, function()
      assert(store:put("x", record(1)))
      assert(store:put("x", record(2)))
      assert(store:put("x", record(3)))
    end)
    assert.same({ 1, 1, 1 }, jobs)
    assert.equal("s-3", assert(store:get("x")).versions.current.secret:reveal())
    assert.same({ "x" }, store:list())
    local names = core.fs_list(dir)
    table.sort(names)
    assert.same({ "x.json", "x.json.tmp.spare" }, names)
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
    -- a spare that is a symbolic link is not followed: a fresh temporary file is used instead
    local target = dir .. "-elsewhere"
    assert(core.fs_write_atomic(target, "outside", 384))
    assert(os.remove(dir .. "/x.json.tmp.spare"))
    assert(os.execute("ln -s '" .. target .. "' '" .. dir .. "/x.json.tmp.spare'"))
    sched.parallel({ 1 }, function() assert(store:put("x", record(4))) end)
    assert.equal("outside", core.fs_read(target))
    os.remove(target)
    assert.equal("s-4", assert(store:get("x")).versions.current.secret:reveal())
  end)

  it("a write that fails, fails alone, with the file in the message", function()
    local d = assert(core.fs_dir(dir, true))
    assert(os.execute("mkdir '" .. dir .. "/f2'"))   -- a directory where a file should be
    local out = {}
    sched.parallel({ 1, 2, 3 }, function(i)
      out[i] = { sched.durable("append", d, "f" .. i, "data " .. i, 384) }
    end)
    assert.same({ 3 }, jobs)
    assert.same({ true }, out[1])
    assert.same({ true }, out[3])
    assert.is_nil(out[2][1])
    assert.matches("/f2", out[2][2])
    assert.equal("data 3", core.fs_read(dir .. "/f3"))
    d:close()
  end)

  it("writes a rope (strings and { s, i, j } pieces) as its pieces joined, in a group and outside a loop", function()
    local d = assert(core.fs_dir(dir, true))
    local text = "0123456789"
    local rope = { "<", { text, 3, 5 }, "|", { text, 1, 0 }, { text, 10, 10 }, ">" }
    sched.parallel({ 1, 2 }, function(i)
      assert(sched.durable(i == 1 and "atomic" or "append", d, "f" .. i, rope, 384))
    end)
    assert.same({ 2 }, jobs)
    assert.equal("<234|9>", core.fs_read(dir .. "/f1"))
    assert.equal("<234|9>", core.fs_read(dir .. "/f2"))
    assert(sched.durable("atomic", d, "f3", rope, 384))
    assert(sched.durable("append", d, "f3", { "+", { text, 1, 2 } }, 384))
    assert.equal("<234|9>+01", core.fs_read(dir .. "/f3"))
    assert.same({ 2 }, jobs)
    -- a piece out of its string, or of no kind a rope holds: an error naming it, nothing written
    for _, bad in ipairs { { "a", { text, 0, 2 } }, { "a", { text, 5, 11 } }, { "a", { text, 6, 4 } }, { "a", 7 },
                           { { 1, 1, 1 } }, { "a", { text, 1 } } } do
      local ok, err = pcall(d.write, d, "f4", bad, 384)
      assert.is_false(ok)
      assert.matches("piece %d", tostring(err))
      ok, err = pcall(core.durable_start, { { "atomic", d, "f4", bad, 384 } })
      assert.is_false(ok)
      assert.matches("piece %d", tostring(err))
    end
    assert.is_nil(core.fs_read(dir .. "/f4"))
    d:close()
  end)

  it("appends in order, as one group, and outside a loop writes at once", function()
    local d = assert(core.fs_dir(dir, true))
    local path = dir .. "/audit.log"
    sched.parallel({ 1, 2, 3, 4 }, function(i)
      assert(sched.durable("append", d, "audit.log", "line " .. i .. "\n", 384))
    end)
    assert.same({ 4 }, jobs)
    assert.equal("line 1\nline 2\nline 3\nline 4\n", core.fs_read(path))
    assert(sched.durable("append", d, "audit.log", "line 5\n", 384))
    assert.same({ 4 }, jobs)
    assert.equal("line 1\nline 2\nline 3\nline 4\nline 5\n", core.fs_read(path))
    d:close()
  end)

  it("a write queued without waiting goes with the next one, and reaches the disk if never waited for", function()
    local d = assert(core.fs_dir(dir, true))
    local store = assert(file_store.new(dir))
    local got = {}
    sched.parallel({ 1, 2 }, function(i)
      local t = sched.durable_later("append", d, "audit.log", "before put " .. i .. "\n", 384)
      assert(store:put("slot" .. i, record(i)))
      -- its group commit was the put's (or an earlier one): done, no second wait
      got[i] = { t:wait() }
      sched.durable_later("append", d, "audit.log", "never waited " .. i .. "\n", 384)
    end)
    assert.same({ 4, 2 }, jobs)
    assert.same({ { true }, { true } }, got)
    local text = core.fs_read(dir .. "/audit.log")
    for i = 1, 2 do
      assert.truthy(text:find("before put " .. i .. "\n", 1, true))
      assert.truthy(text:find("never waited " .. i .. "\n", 1, true))
    end
    -- outside a loop: written before it returns
    local t = sched.durable_later("append", d, "audit.log", "outside\n", 384)
    assert.truthy(core.fs_read(dir .. "/audit.log"):find("outside\n", 1, true))
    assert.same({ true }, { t:wait() })
    d:close()
  end)

  it("writes queued while a group is on disk start when it ends, before its woken writers run", function()
    -- the group commit of task 1's put is held "on disk" until task 2 has queued its own put;
    -- the moment it is seen done, task 2's put must go to disk: not after task 1 ran on
    local store = assert(file_store.new(dir))
    local release, log = false, {}
    core.durable_start = function(items)
      jobs[#jobs + 1] = #items
      log[#log + 1] = "group of " .. #items
      local job = real_start(items)
      return setmetatable({}, { __index = {
        fd = function() return job:fd() end,
        close = function() return job:close() end,
        results = function()
          if not release then return nil end
          return job:results()
        end } })
    end
    sched.parallel({ 1, 2 }, function(i)
      if i == 2 then
        sched.sleep(0.02)
        local t = sched.durable_later("atomic", assert(core.fs_dir(dir)), "slot2.json", "{}", 384)
        release = true
        assert(t:wait())
        return
      end
      assert(store:put("slot1", record(1)))
      log[#log + 1] = "task 1 runs on"
    end)
    assert.same({ "group of 1", "group of 1", "task 1 runs on" }, log)
  end)

  -- records 1, 2 and 3 put into slot x by one task, each shaped by shape(rec, n) first: the file's
  -- text after each put
  local function put_three(store, shape)
    local texts = {}
    sched.parallel({ 1 }, function()
      for n = 1, 3 do
        local rec = record(n)
        shape(rec, n)
        assert(store:put("x", rec))
        texts[n] = core.fs_read(store:path("x"))
      end
    end)
    return texts
  end

  it("empties a spare by zeroing its bytes, keeping its blocks (no block freed and allocated per write)", function()
    local store = assert(file_store.new(dir))
    local sizes = {}
    for n, text in ipairs(put_three(store, function(rec, n)
      rec.journal[1].note = string.rep("n", 5000 * n)   -- records of two, three and four blocks
    end)) do sizes[n] = #text end
    local spare = dir .. "/x.json.tmp.spare"
    assert.is_true(emptied(spare))
    local out = sim.run("stat -c '%s %b %B' " .. sim.shell_quote(spare))
    local size, blocks, unit = out:match("^(%d+) (%d+) (%d+)")
    -- it held the second record: its size and its blocks are still there, zeroed
    assert.equal(sizes[2], tonumber(size))
    assert.is_true(tonumber(blocks) * tonumber(unit) >= sizes[2])
    -- and the next write into it is cut to its own length, with nothing of the zeros after it
    sched.parallel({ 1 }, function() assert(store:put("x", record(4))) end)
    local text = core.fs_read(store:path("x"))
    assert.truthy(text:find('"s-4"', 1, true))
    assert.is_nil(text:find("\0", 1, true))
    assert.equal(sizes[3], #core.fs_read(spare))
  end)

  it("keeps only the journal of a displaced record it wrote: the rest (the secrets) is zeroed", function()
    local store = assert(file_store.new(dir))
    local texts = put_three(store, function(rec, n)
      for k = 2, 60 do
        rec.journal[k] = { step = "verify", outcome = "ok", note = ("entry %d of record %d"):format(k, n) }
      end
    end)
    -- the spare is the second record's file: its journal as it was, zeros from there on
    local spare = assert(core.fs_read(dir .. "/x.json.tmp.spare"))
    local journal = texts[2]:match('^{"journal":%b[]')
    assert.is_true(#journal > 3000 and #journal < #texts[2])
    assert.equal(#texts[2], #spare)
    assert.equal(journal, spare:sub(1, #journal))
    assert.equal(string.rep("\0", #spare - #journal), spare:sub(#journal + 1))
    assert.truthy(texts[2]:find('"s-2"', 1, true))
    assert.is_nil(spare:find("s-2", 1, true))
  end)

  it("zeroes a displaced file whole when this process did not write it, or it changed since", function()
    local store = assert(file_store.new(dir))
    -- a record in the store's layout, written by someone else
    local foreign = '{"journal":[{"step":"create","outcome":"ok"}],"provider":"genesys","versions":'
      .. '{"current":{"client_id":"c0","secret":"s-0"}}}'
    assert(core.fs_write_atomic(store:path("y"), foreign, 384))
    sched.parallel({ 1 }, function() assert(store:put("y", record(1))) end)
    assert.is_true(zeroed(dir .. "/y.json.tmp.spare"))
    -- a record this process wrote, changed in place afterwards (its size kept): no byte kept
    sched.parallel({ 1 }, function() assert(store:put("z", record(1))) end)
    local path = store:path("z")
    local text = core.fs_read(path)
    local f = assert(io.open(path, "r+b"))
    f:write((text:gsub('"s%-1"', '"s-9"')))
    f:close()
    assert(os.execute("touch -d @1000000000 '" .. path .. "'")) -- another time than its writer's
    sched.parallel({ 1 }, function() assert(store:put("z", record(2))) end)
    assert.is_true(zeroed(dir .. "/z.json.tmp.spare"))
    assert.equal("s-2", assert(store:get("z")).versions.current.secret:reveal())
  end)

  it("a slot written again at once never finds its record emptied by the previous group's clean-up", function()
    -- each group empties the spares it displaced after waking its writers; a writer that puts the
    -- same slot again at once must not have its new bytes emptied under it
    local store = assert(file_store.new(dir))
    local items = {}
    for i = 1, 8 do items[i] = i end
    local bad = {}
    sched.parallel(items, function(i)
      for round = 1, 60 do
        assert(store:put("slot" .. i, record(i * 1000 + round)))
        local text = core.fs_read(store:path("slot" .. i))
        if not (text and text:find('"s-' .. (i * 1000 + round) .. '"', 1, true)) then
          bad[#bad + 1] = ("slot%d round %d: %d bytes"):format(i, round, text and #text or -1)
        end
      end
    end, { concurrency = 8 })
    assert.same({}, bad)
  end)

  -- Races on a slot's spare between two processes (one process runs its group commits one after
  -- another on one thread): spec/helpers/spare_race.sh runs process A (records 1 and 2, two
  -- groups: the second swaps record 2 in and displaces record 1's file into the spare), holds it
  -- at a_at, runs process B (record 3) and holds it at b_at ("none": B runs to its end), then
  -- lets A and B go (spec/helpers/spare_hold.c, preloaded, does the holding). Returns the
  -- script's report and what B saw in the spare while held at "dirsync".
  local function spare_race(a_at, b_at)
    local so = "build/spare_hold.so"
    local out, rc = sim.run("cc -shared -fPIC -o " .. so .. " spec/helpers/spare_hold.c -ldl 2>&1")
    assert(rc == 0, out)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local marks = dir .. "-marks"
    -- a rotor built with AddressSanitizer (make asan) needs its runtime first in the preload list
    local preload = "./" .. so
    local asan = asan_runtime()
    if asan then preload = asan .. " " .. preload end
    out, rc = sim.run(("timeout -s KILL 60 sh spec/helpers/spare_race.sh %s %s %s %s %s %s 2>&1"):format(
      ROTOR, sim.shell_quote(preload), sim.shell_quote(dir), sim.shell_quote(marks), a_at, b_at))
    local seen = core.fs_read(marks .. "/b/seen")
    os.execute("rm -rf '" .. marks .. "'")
    assert.equal(0, rc, out)
    return out, seen
  end

  it("a spare is emptied only while it is still the spare, not after a writer swapped it in #proc", function()
    -- A opens the spare it displaced (record 1's file) to empty it; before A takes its lock, B
    -- writes record 3 into that very file and swaps it in as the slot. A must then leave it.
    local out = spare_race("empty-lock", "none")
    assert.equal("a 0: record 3\nb 0: record 3\nx.json: record 3\n", out)
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
  end)

  it("a spare is never emptied while another writer has it locked #proc", function()
    -- B has written record 3 into the spare (record 1's file, its lock held) and is about to make
    -- it durable and swap it in; A now sets out to empty that spare. A must leave it.
    local out = spare_race("empty-open", "sync")
    -- (A ends before B swaps record 3 in)
    assert.equal("a 0: record 2\nb 0: record 3\nx.json: record 3\n", out)
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
  end)

  it("a spare is emptied only by the group that displaced it, never before the next swap is on disk #proc", function()
    -- B has swapped record 3 in, so the spare is now record 2's file; until B's directory fsync
    -- returns, the slot's name on disk still refers to record 2's file. A now sets out to empty
    -- the spare: emptying record 2's file then could leave, after a crash, a slot of zeros.
    local out, seen = spare_race("empty-open", "dirsync")
    assert.equal("a 0: record 3\nb 0: record 3\nx.json: record 3\n", out)
    -- inside the window the spare still held record 2 (the name on disk refers to it) ...
    assert.equal("record 2", seen)
    -- ... and once B was done, B emptied record 2's file itself
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
  end)
end)
