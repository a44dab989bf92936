-- The README's "Try it against the simulator" section, run verbatim as a newcomer would: its
-- commands and its files are extracted from README.md (nothing here restates them) and run in a
-- fresh directory that looks like a checkout (the built tree linked in): start the simulator as
-- documented, write and run the first script, `status`, then a config run with --only-due from
-- another directory, then stop the simulator.
local core = require "rotor.core"
local sim = require "spec.helpers.sim"

local SECTION = "## Try it against the simulator"

-- the fenced blocks of one README section, in order: { lang=, text= }
local function blocks(readme)
  local a = assert(readme:find(SECTION, 1, true), "README.md has no section " .. SECTION)
  local b = readme:find("\n## ", a + #SECTION, true) or #readme
  local section = readme:sub(a, b)
  local out = {}
  for lang, text in section:gmatch("\n```(%w*)\n(.-)\n```") do out[#out + 1] = { lang = lang, text = text } end
  return out
end

describe("the README, followed by a newcomer #proc", function()
  local readme = assert(sim.read_file("README.md"))
  local list = blocks(readme)
  local dir, simdir

  setup(function()
    dir = sim.tmpdir("newcomer")
    simdir = dir .. "/sim"
    -- a checkout: the sources and the built tree of this one
    local repo = os.getenv("PWD")
    for _, name in ipairs { "Makefile", "csrc", "lua", "spec", "examples", "build", "rockspec" } do
      assert(sim.run(("ln -s %s %s"):format(sim.shell_quote(repo .. "/" .. name), sim.shell_quote(dir .. "/" .. name))))
    end
  end)

  teardown(function()
    if simdir then sim.run("spec/simulator/simctl stop " .. sim.shell_quote(simdir) .. " >/dev/null 2>&1") end
  end)

  it("has a first script that cannot lock anyone out", function()
    local first
    for _, b in ipairs(list) do if b.lang == "lua" then first = first or b.text end end
    assert.truthy(first, "no Lua block")
    assert.truthy(first:find('strategy = "new_client"', 1, true) and first:find("deploy =", 1, true), first)
  end)

  it("runs verbatim: make sim, the first script, status, a config run from another directory", function()
    local sh = { "set -e" }
    local files = 0
    for _, b in ipairs(list) do
      if b.lang == "lua" then
        local name = b.text:match("^%-%- ([%w_.-]+%.lua)")
        assert.truthy(name, "a Lua block of the section does not start with `-- NAME.lua`:\n" .. b.text)
        assert(core.fs_write_atomic(dir .. "/" .. name, b.text .. "\n", 420))
        files = files + 1
      elseif b.lang == "sh" then
        sh[#sh + 1] = b.text
      end
    end
    assert.equal(2, files)
    assert.is_true(#sh >= 4)
    local script = table.concat(sh, "\n") .. "\n"
    assert(core.fs_write_atomic(dir .. "/newcomer.sh", script, 448))
    -- SIM_DIR keeps this run's simulator apart from the checkout's build/sim
    local out, rc = sim.run(("cd %s && SIM_DIR=%s bash ./newcomer.sh 2>&1"):format(sim.shell_quote(dir),
      sim.shell_quote(simdir)))
    assert.equal(0, rc, script .. "\n---\n" .. out)
    assert.truthy(out:find("rotated\tgenesys/reporting\tnew client\t", 1, true), out)
    assert.truthy(out:find("store: file store " .. dir .. "/secrets", 1, true), out)
    assert.truthy(out:find("genesys/reporting  genesys", 1, true), out)
    assert.truthy(out:find("skipped  genesys/reporting: not due", 1, true), out)
    assert.is_false(core.fs_exists("/tmp/secrets/genesys%2Freporting.json"))
    local app = assert(sim.read_file(dir .. "/reporting.env"))
    assert.truthy(app:find("CLIENT_ID=", 1, true))
    -- the simulator was stopped as the README says
    local _, src = sim.run("spec/simulator/simctl status " .. sim.shell_quote(simdir) .. " >/dev/null 2>&1")
    assert.equal(1, src)
  end)
end)

describe("README.md and doc/", function()
  it("name only files that are in the repository", function()
    local tops = { spec = true, doc = true, examples = true, lua = true, csrc = true, rockspec = true }
    local missing = {}
    local files = { "README.md" }
    for _, n in ipairs(assert(core.fs_list("doc"))) do
      if n:match("%.md$") then files[#files + 1] = "doc/" .. n end
    end
    for _, f in ipairs(files) do
      local text = assert(sim.read_file(f))
      for p in text:gmatch("[%s`(%[|]((%l+)/[%w_./%-]*[%w_])") do
        local top = p:match("^(%l+)/")
        if tops[top] and not p:find("[<*]") and not core.fs_exists(p) then missing[#missing + 1] = f .. ": " .. p end
      end
      -- a bare NAME.md is the checkout's or doc/'s
      for name in text:gmatch("%f[%w/]([%u][%u_]*%.md)") do
        if not core.fs_exists(name) and not core.fs_exists("doc/" .. name) then
          missing[#missing + 1] = f .. ": " .. name
        end
      end
    end
    assert.same({}, missing)
  end)
end)
