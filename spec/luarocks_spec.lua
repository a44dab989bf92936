-- The LuaRocks package: `luarocks make` (offline, --deps-mode=none: Debian's lua-cjson is the
-- runtime dependency) into temporary trees for Lua 5.4 and LuaJIT, then rotor from those trees
-- only: `require "rotor"` under lua5.4 and luajit, and the provider specs in a busted
-- subprocess whose module paths name the installed tree and not ./lua. It only drives
-- processes, so it runs the same under Lua 5.4 and LuaJIT. Tagged #slow (~20 s): `make test` runs
-- it once, under Lua 5.4.
local sim = require "spec.helpers.sim"

local run, shq = sim.run, sim.shell_quote

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local ROOT = trim(run("pwd"))
local ROCKSPEC = ROOT .. "/rockspec/rotor-scm-1.rockspec"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- the command as people type it: no CURL_INCDIR, although Debian's curl.h is in the multiarch
-- include directory where LuaRocks does not look
local function luarocks_make(tree, lua_version, extra)
  return run("cd " .. shq(ROOT) .. " && ROCK_BUILD=" .. shq(tree .. "/.build") .. " luarocks --tree "
    .. shq(tree) .. " --lua-version " .. lua_version .. " make " .. shq(ROCKSPEC)
    .. " --deps-mode=none " .. (extra or "") .. " 2>&1")
end

-- module paths that reach the tree (and the system's lua-cjson), never ./lua
local function tree_paths(tree, v)
  local lpath = tree .. "/share/lua/" .. v .. "/?.lua;" .. tree .. "/share/lua/" .. v .. "/?/init.lua"
  local cpath = tree .. "/lib/lua/" .. v .. "/?.so"
  return lpath, cpath
end

describe("the LuaRocks package #luarocks #slow", function()
  local dir

  setup(function()
    dir = sim.tmpdir("rocks")
  end)

  teardown(function()
    -- the rock tree stays under $TMPDIR for the leak scan of `make test` (ROTOR_SIM_KEEP)
    if dir and os.getenv("ROTOR_SIM_KEEP") == nil then run("rm -rf " .. shq(dir)) end
  end)

  it("installs with luarocks make for Lua 5.4: module, core and the rotor executable", function()
    local tree = dir .. "/t54"
    local out, rc = luarocks_make(tree, "5.4")
    assert.equal(0, rc, out)
    assert.truthy(exists(tree .. "/lib/lua/5.4/rotor/core.so"))
    assert.truthy(exists(tree .. "/share/lua/5.4/rotor/init.lua"))
    assert.truthy(exists(tree .. "/share/lua/5.4/rotor/ngx.lua"))
    assert.truthy(exists(tree .. "/bin/rotor"))
    local lpath, cpath = tree_paths(tree, "5.4")
    local code = "local r = require 'rotor'; local s = r.secret('x'); "
      .. "print(r._VERSION, package.searchpath('rotor', package.path), "
      .. "package.searchpath('rotor.core', package.cpath), tostring(s))"
    out, rc = run("cd " .. shq(dir) .. " && LUA_PATH_5_4=" .. shq(lpath .. ";;") .. " LUA_CPATH_5_4="
      .. shq(cpath .. ";;") .. " lua5.4 -e " .. shq(code) .. " 2>&1")
    assert.equal(0, rc, out)
    assert.truthy(out:find(tree .. "/share/lua/5.4/rotor/init.lua", 1, true), out)
    assert.truthy(out:find(tree .. "/lib/lua/5.4/rotor/core.so", 1, true), out)
    assert.truthy(out:find("rotor.secret(<redacted>)", 1, true), out)
    -- the installed host finds the tree's Lua files by itself
    out, rc = run("cd " .. shq(dir) .. " && " .. shq(tree .. "/bin/rotor")
      .. " -e \"print(package.searchpath('rotor', package.path))\" 2>&1")
    assert.equal(0, rc, out)
    assert.truthy(out:find("share/lua/5.4/rotor/init.lua", 1, true), out)
  end)

  it("installs for LuaJIT (Lua 5.1 ABI, LuaJIT headers) without the executable", function()
    local tree = dir .. "/tjit"
    local out, rc = luarocks_make(tree, "5.1", "LUA_INCDIR=/usr/include/luajit-2.1")
    assert.equal(0, rc, out)
    assert.truthy(out:find("embeds Lua 5.4", 1, true), out)
    assert.is_false(exists(tree .. "/bin/rotor"))
    local lpath, cpath = tree_paths(tree, "5.1")
    local code = "local r = require 'rotor'; print(r._VERSION, jit and jit.version, "
      .. "r.json.encode({ n = 1 }), tostring(r.secret('x')))"
    out, rc = run("cd " .. shq(dir) .. " && LUA_PATH=" .. shq(lpath .. ";;") .. " LUA_CPATH="
      .. shq(cpath .. ";;") .. " luajit -e " .. shq(code) .. " 2>&1")
    assert.equal(0, rc, out)
    assert.truthy(out:find("LuaJIT", 1, true), out)
    assert.truthy(out:find('{"n":1}', 1, true), out)
  end)

  it("passes the provider specs from the installed tree only", function()
    local tree = dir .. "/t54"
    assert.truthy(exists(tree .. "/lib/lua/5.4/rotor/core.so"), "the 5.4 tree is installed")
    local specs = trim(run("cd " .. shq(ROOT) .. " && ls spec/providers_*_spec.lua 2>/dev/null"))
    if specs == "" then specs = "spec/http_spec.lua spec/oauth_spec.lua" end
    specs = specs:gsub("%s+", " ")
    local lpath, cpath = tree_paths(tree, "5.4")
    -- ./?.lua is for spec.helpers only: rotor itself comes from the tree
    local out, rc = run("cd " .. shq(ROOT) .. " && lua5.4 /usr/bin/busted -o TAP --cpath=" .. shq(cpath)
      .. " --lpath=" .. shq(lpath .. ";./?.lua") .. " " .. specs .. " 2>&1")
    local ok, failed = 0, {}
    for line in out:gmatch("[^\n]+") do
      if line:match("^ok ") then ok = ok + 1 end
      if line:match("^not ok ") then failed[#failed + 1] = line end
    end
    print(("\n  luarocks: %s from the installed tree: %d passed, %d failed"):format(specs, ok, #failed))
    assert.truthy(ok > 0, out)
    assert.same({}, failed)
    assert.equal(0, rc)
  end)
end)
