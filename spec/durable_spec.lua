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

  -- a spare that held a displaced record keeps none of its bytes: zeros (its blocks kept), or
  -- nothing (when writing the zeros failed)
  local function emptied(path)
    local text = core.fs_read(path)
    return text ~= nil and text == string.rep("\0", #text)
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

  it("empties a spare by zeroing its bytes, keeping its blocks (no block freed and allocated per write)", function()
    local store = assert(file_store.new(dir))
    local sizes = {}
    sched.parallel({ 1 }, function()
      for n = 1, 3 do
        local rec = record(n)
        rec.journal[1].note = string.rep("n", 5000 * n)   -- records of two, three and four blocks
        assert(store:put("x", rec))
        sizes[n] = #core.fs_read(store:path("x"))
      end
    end)
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

  it("a spare is emptied only while it is still the spare, not after a writer swapped it in #proc", function()
    -- the window: a group opens the spare it displaced to empty it, and before it takes the
    -- spare's lock the next group writes a record into that very file and swaps it in as the
    -- slot. The preloaded library holds the second flock call of a durable thread (the first is
    -- for the spare its group writes, the second for the spare it empties) for 300 ms, once: the
    -- second group's emptying, a window the third group's write fills.
    local so = "build/flock_delay.so"
    local out, rc = sim.run("cc -shared -fPIC -o " .. so .. " spec/helpers/flock_delay.c -ldl 2>&1")
    assert(rc == 0, out)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local mark = dir .. "-mark"
    -- a rotor built with AddressSanitizer (make asan) needs its runtime first in the preload list
    local preload = "./" .. so
    local asan = sim.run("ldd " .. sim.shell_quote(ROTOR) .. " 2>/dev/null"):match("libasan%S* => (%S+)")
    if asan then preload = asan .. " " .. preload end
    out, rc = sim.run(("LD_PRELOAD=%s ROTOR_FLOCK_DELAY_CALL=2 ROTOR_FLOCK_DELAY_MARK=%s %s %s %s 2>&1"):format(
      sim.shell_quote(preload), sim.shell_quote(mark), ROTOR, "spec/helpers/spare_race.lua", sim.shell_quote(dir)))
    assert.equal("delayed\n", core.fs_read(mark))
    os.remove(mark)
    assert.equal(0, rc, out)
    assert.equal("record 3\n", out)
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
  end)

  it("a spare is emptied only by the group that displaced it, never before the next swap is on disk #proc", function()
    -- the window: group 2 is done and sets out to empty the spare it displaced (record 1's file);
    -- before it opens the spare, group 3 writes the slot into that file and swaps it in, so the
    -- spare is now record 2's file. Until group 3's directory fsync returns, the slot's name on
    -- disk still refers to record 2's file: emptying it then could leave, after a crash, a slot
    -- of zeros. The preloaded library holds group 2's open back for 150 ms and group 3's directory
    -- fsync for 300 ms, and copies what the spare holds at that moment into the mark file.
    local so = "build/spare_window.so"
    local out, rc = sim.run("cc -shared -fPIC -o " .. so .. " spec/helpers/spare_window.c -ldl 2>&1")
    assert(rc == 0, out)
    assert(os.execute("mkdir -m 700 '" .. dir .. "'"))
    local mark = dir .. "-mark"
    local preload = "./" .. so
    local asan = sim.run("ldd " .. sim.shell_quote(ROTOR) .. " 2>/dev/null"):match("libasan%S* => (%S+)")
    if asan then preload = asan .. " " .. preload end
    out, rc = sim.run(("LD_PRELOAD=%s ROTOR_SPARE_NAME=x.json.tmp.spare ROTOR_SPARE_MARK=%s %s %s %s 2>&1"):format(
      sim.shell_quote(preload), sim.shell_quote(mark), ROTOR, "spec/helpers/spare_race.lua", sim.shell_quote(dir)))
    local seen = core.fs_read(mark)
    os.remove(mark)
    assert.equal(0, rc, out)
    assert.equal("record 3\n", out)
    -- inside the window the spare still held record 2 (the name on disk refers to it)
    assert.equal("record 2", seen)
    -- and once group 3 was done, it emptied record 2's file itself
    assert.is_true(emptied(dir .. "/x.json.tmp.spare"))
  end)
end)
