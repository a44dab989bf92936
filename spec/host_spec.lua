-- The rotor executable: usage, -v, -e, scripts, arg, exit codes, tracebacks without secrets.
local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)__rc=(%d+)%s*$")
  return body, tonumber(rc)
end

-- ROTOR_BIN: another build of the host, e.g. the ASan+UBSan one of `make asan`
local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local ROTOR_ABS = ROTOR:sub(1, 1) == "/" and ROTOR or (os.getenv("PWD") .. "/" .. ROTOR)

local function tmpfile(content)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  f:write(content)
  f:close()
  return name
end

describe("the rotor host #proc", function()
  it("prints usage and exits 2 with no arguments", function()
    local out, rc = sh(ROTOR)
    assert.equals(2, rc)
    assert.matches("usage: rotor SCRIPT.lua", out)
  end)

  it("prints its version, Lua's and libcurl's", function()
    local out, rc = sh(ROTOR .. " -v")
    assert.equals(0, rc)
    assert.matches("^rotor %d+%.%d+%.%d+ %(Lua 5%.4", out)
    assert.matches("libcurl", out)
  end)

  it("runs -e code with rotor found without LUA_PATH", function()
    local out, rc = sh("env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH " .. ROTOR ..
      " -e 'local r = require \"rotor\"; print(r._VERSION, type(r.parallel))'")
    assert.equals(0, rc)
    assert.matches("^%d+%.%d+%.%d+\tfunction", out)
  end)

  it("finds the modules from another working directory", function()
    local out, rc = sh("cd / && " .. ROTOR_ABS .. " -e 'print(require(\"rotor.core\").version)'")
    assert.equals(0, rc)
    assert.matches("%d+%.%d+%.%d+", out)
  end)

  it("passes arguments to a script in arg and ...", function()
    local f = tmpfile("print(arg[0] ~= nil, arg[1], arg[2], select('#', ...))")
    local out, rc = sh(ROTOR .. " " .. f .. " one two")
    os.remove(f)
    assert.equals(0, rc)
    assert.equals("true\tone\ttwo\t2\n", out)
  end)

  it("exits 1 with a traceback for a script error, and redacts every live secret", function()
    local f = tmpfile([[
local rotor = require "rotor"
local s = rotor.secret("do-not-print-this-secret-42")
local function inner() error("failed while holding " .. s:reveal()) end
inner()
]])
    local out, rc = sh(ROTOR .. " " .. f)
    os.remove(f)
    assert.equals(1, rc)
    assert.matches("stack traceback", out)
    assert.matches("<redacted>", out)
    assert.is_nil(out:find("do-not-print-this-secret-42", 1, true))
  end)

  it("reports a broken script as a syntax error naming the file", function()
    local f = tmpfile("local x = = 1\n")
    local out, rc = sh(ROTOR .. " " .. f)
    os.remove(f)
    assert.equals(1, rc)
    assert.matches(f:match("[^/]+$"), out)
    assert.matches("unexpected symbol", out)
  end)

  it("names a missing script", function()
    local out, rc = sh(ROTOR .. " /nonexistent/script.lua")
    assert.equals(1, rc)
    assert.matches("cannot run /nonexistent/script%.lua: [^\n]*No such file or directory", out)
  end)

  it("rejects an unknown option with usage", function()
    local out, rc = sh(ROTOR .. " --frobnicate")
    assert.equals(2, rc)
    assert.matches("unknown option '%-%-frobnicate'", out)
  end)

  it("stops after the current step on SIGTERM and exits 130", function()
    local f = tmpfile([[
local core = require "rotor.core"
io.stdout:write("ready\n") io.stdout:flush()
for step = 1, 200 do
  core.sleep(0.05)
  if core.interrupted() then print("stopped cleanly after step " .. step) return end
end
print("not interrupted")
]])
    local out, rc = sh("(" .. ROTOR .. " " .. f .. " & pid=$!; sleep 0.5; kill -TERM $pid; wait $pid)")
    os.remove(f)
    assert.equals(130, rc)
    assert.matches("stopped cleanly after step", out)
  end)
end)
