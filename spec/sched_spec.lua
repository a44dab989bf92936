-- rotor.parallel: results, errors, the concurrency bound, nesting and sleeping.
local rotor = require "rotor"
local core = require "rotor.core"

describe("rotor.parallel", function()
  it("returns fn's first value per item and its second as the error", function()
    local results, errs = rotor.parallel({ 10, 20, 30 }, function(x, i)
      if i == 2 then return nil, "no " .. x end
      return x * 2
    end)
    assert.equals(20, results[1])
    assert.is_nil(results[2])
    assert.equals(60, results[3])
    assert.equals("no 20", errs[2])
    assert.is_nil(errs[1])
  end)

  it("records a raised error as the message, and the others still run", function()
    local results, errs = rotor.parallel({ 1, 2, 3 }, function(x)
      if x == 2 then error("boom " .. x, 0) end
      return x
    end)
    assert.equals("boom 2", errs[2])
    assert.equals(1, results[1])
    assert.equals(3, results[3])
  end)

  it("goes on with a worker's next items after one raised, and closes a raising item's to-be-closed values",
    function()
    local closed, fn = {}
    if _VERSION == "Lua 5.4" then
      -- a chunk: `<close>` does not parse on LuaJIT
      fn = assert(load([[local closed, sched = ...
        return function(i)
          local guard <close> = setmetatable({}, { __close = function() closed[i] = true end })
          sched.sleep(0.001)   -- a yield to the loop while the value is open
          if i % 2 == 0 then error("item " .. i .. " failed", 0) end
          return i
        end]]))(closed, require "rotor.sched")
    else
      fn = function(i)
        require("rotor.sched").sleep(0.001)
        if i % 2 == 0 then error("item " .. i .. " failed", 0) end
        return i
      end
    end
    local items = {}
    for i = 1, 8 do items[i] = i end
    local results, errs = rotor.parallel(items, fn, { concurrency = 2 })
    for i = 1, 8 do
      if i % 2 == 0 then
        assert.is_nil(results[i])
        assert.equals("item " .. i .. " failed", errs[i])
      else
        assert.equals(i, results[i])
        assert.is_nil(errs[i])
      end
      if _VERSION == "Lua 5.4" then assert.is_true(closed[i], "item " .. i .. " closed") end
    end
  end)

  it("never runs more than `concurrency` items at once", function()
    local running, peak = 0, 0
    local items = {}
    for i = 1, 20 do items[i] = i end
    rotor.parallel(items, function()
      running = running + 1
      if running > peak then peak = running end
      rotor.sleep(0.01)
      running = running - 1
    end, { concurrency = 4 })
    assert.equals(4, peak)
  end)

  it("sleeps concurrently: 10 sleepers of 0.2 s take about 0.2 s, not 2 s", function()
    local t0 = core.now()
    rotor.parallel({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, function() rotor.sleep(0.2) end,
      { concurrency = 10 })
    local dt = core.now() - t0
    assert.is_true(dt >= 0.2 and dt < 1.0, "took " .. dt)
  end)

  it("nests: a worker may run its own parallel batch", function()
    local results = rotor.parallel({ 1, 2 }, function(i)
      local inner = rotor.parallel({ 1, 2, 3 }, function(j) rotor.sleep(0.01) return i * j end)
      return inner[1] + inner[2] + inner[3]
    end)
    assert.same({ 6, 12 }, results)
  end)

  it("reports progress", function()
    local seen = {}
    rotor.parallel({ 1, 2, 3 }, function() end, { progress = function(done, n) seen[#seen + 1] = done .. "/" .. n end })
    assert.same({ "1/3", "2/3", "3/3" }, seen)
  end)

  it("rejects wrong arguments with error()", function()
    assert.error_matches(function() rotor.parallel("x", function() end) end, "items must be a table", nil, true)
    assert.error_matches(function() rotor.parallel({}, "f") end, "fn must be a function", nil, true)
    assert.error_matches(function() rotor.parallel({ 1 }, function() end, { concurrency = 0 }) end,
      "concurrency must be a number >= 1", nil, true)
    -- NaN passed the check (NaN < 1 is false): no worker started, and the batch ended in "tasks
    -- are blocked with nothing to wake them"
    assert.error_matches(function() rotor.parallel({ 1 }, function() end, { concurrency = 0 / 0 }) end,
      "concurrency must be a number >= 1", nil, true)
    -- a misspelt concurrency ran the batch at the default 16 against a provider's limits
    assert.error_matches(function() rotor.parallel({ 1 }, function() end, { concurency = 2 }) end,
      "rotor.parallel: concurency: unknown option; did you mean concurrency?", nil, true)
    assert.error_matches(function() rotor.parallel({ 1 }, function() end, { progress = true }) end,
      "progress must be a function", nil, true)
  end)

  it("returns empty tables for no items", function()
    local r, e = rotor.parallel({}, function() error("not called") end)
    assert.same({}, r)
    assert.same({}, e)
  end)
end)
