-- The leak scan itself: it must find a planted secret, and must not flag a store slot's versions.
local sim = require "spec.helpers.sim"

describe("spec/leakscan.lua #proc", function()
  local dir
  before_each(function()
    dir = sim.run("mktemp -d"):gsub("%s+$", "")
  end)
  after_each(function() sim.run("rm -rf " .. sim.shell_quote(dir)) end)

  local function scan()
    return sim.run("lua5.4 spec/leakscan.lua " .. sim.shell_quote(dir .. "/issued") .. " "
      .. sim.shell_quote(dir .. "/tree") .. " 2>&1")
  end

  it("finds an issued secret in a log, a journal or an audit trail, naming the file only", function()
    sim.run("mkdir -p " .. sim.shell_quote(dir .. "/tree/a"))
    sim.write_file(dir .. "/issued", "planted-secret-0123456789\n")
    sim.write_file(dir .. "/tree/a/slot.json",
      '{"versions":{"current":{"secret":"planted-secret-0123456789"}},"journal":[]}')
    local out, rc = scan()
    assert.equals(0, rc, out)
    assert.matches("1 store slots with their versions taken out%): 0 found", out)
    sim.write_file(dir .. "/tree/a/audit.log", '{"step":"create","note":"planted-secret-0123456789"}\n')
    out, rc = scan()
    assert.equals(1, rc)
    assert.matches("appears in .*/tree/a/audit.log", out)
    assert.is_nil(out:find("planted-secret-0123456789", 1, true))
    sim.run("rm " .. sim.shell_quote(dir .. "/tree/a/audit.log"))
    sim.write_file(dir .. "/tree/a/slot.json",
      '{"versions":{},"journal":[{"note":"planted-secret-0123456789"}]}')
    out, rc = scan()
    assert.equals(1, rc)
    assert.matches("appears in .*/tree/a/slot.json", out)
  end)

  it("refuses to pass when no secret was recorded", function()
    sim.run("mkdir -p " .. sim.shell_quote(dir .. "/tree"))
    sim.write_file(dir .. "/issued", "")
    local out, rc = scan()
    assert.equals(1, rc)
    assert.matches("proves nothing", out)
  end)
end)
