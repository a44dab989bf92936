-- The leak scan itself: a secret holding "+" and "/" planted in each form it takes on the way out
-- must be found, each in its own file kind; a store slot's versions and a dotenv store's values
-- must not be flagged; a scan that recorded or read nothing must fail.
local sim = require "spec.helpers.sim"
local cjson = require "cjson"

describe("spec/leakscan.lua #proc", function()
  local dir
  local SECRET = "pl+nted/Secret+Value/0123=="   -- "+" and "/" as the simulator's secrets have
  local TOKEN = "Atc|tok/en+value-0123456789"
  local ID = "amzn1.application-oa2-client.0badc0de"
  before_each(function()
    dir = sim.tmpdir("leakscan")
    sim.run("mkdir -p " .. sim.shell_quote(dir .. "/tree/a"))
    sim.write_file(dir .. "/issued", SECRET .. "\tsecret\t" .. ID .. "\n" .. TOKEN .. "\ttoken\t" .. ID .. "\n")
  end)
  after_each(function() sim.run("rm -rf " .. sim.shell_quote(dir)) end)

  local function scan()
    return sim.run("lua5.4 spec/leakscan.lua " .. sim.shell_quote(dir .. "/issued") .. " "
      .. sim.shell_quote(dir .. "/tree") .. " 2>&1")
  end

  local function form_encode(s)
    return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end

  -- each planted file alone in the tree: the scan must fail naming it, and never print the secret
  local PLANTS = {
    { "a JSON audit line (cjson escapes / as \\/)", "audit.log",
      '{"step":"create","note":' .. cjson.encode("minted " .. SECRET) .. '}\n' },
    { "raw in a slot's journal", "genesys%2Fapp.json",
      '{"versions":{},"journal":[{"step":"create","note":"minted ' .. SECRET .. '"}]}' },
    { "JSON-escaped in a slot's journal", "spreetail%2Fapp.json",
      '{"versions":{},"journal":[{"note":"' .. SECRET:gsub("/", "\\/") .. '"}]}' },
    { "URL-encoded in a request trace", "trace.txt", "POST /token client_secret=" .. form_encode(SECRET) .. "&x=1\n" },
    { "in a Basic header (RFC 6749 encoding)", "curl.log",
      "> Authorization: " .. sim.basic(ID, SECRET) .. "\n" },
    { "in a Basic header (raw id:secret)", "curl-raw.log", "> Authorization: " .. sim.basic(ID, SECRET, true) .. "\n" },
    { "in a debug log", "debug.log", "2026-12-01 debug: got secret " .. SECRET .. " from the provider\n" },
    { "in an env file, inside a longer value", "app.env",
      'CLIENT_SECRET=x\nDEBUG_LAST_REQUEST="client_secret=' .. SECRET .. '"\n' },
    { "in an env file, URL-encoded", "env", "export TOKEN_URL=https://h/t?s=" .. form_encode(SECRET) .. "\n" },
    { "base64 alone, mid-text", "blob.txt", "data:" .. sim.b64("xx" .. SECRET .. "yy") .. "\n" },
    { "an access token in a log", "nginx-error.log", "upstream said Bearer " .. TOKEN .. "\n" },
  }
  for _, p in ipairs(PLANTS) do
    it("finds a secret " .. p[1], function()
      sim.write_file(dir .. "/tree/a/" .. p[2], p[3])
      local out, rc = scan()
      assert.equals(1, rc, out)
      assert.matches("appears %(.-%) in .*/tree/a/" .. p[2]:gsub("%p", "%%%0"), out)
      assert.matches("[1-9]%d* found", out)
      assert.is_nil(out:find(SECRET, 1, true))
      assert.is_nil(out:find(TOKEN, 1, true))
    end)
  end

  it("finds a secret holding '~', '*' and a space form-encoded as rotor's token requests send it", function()
    local odd = "odd~secret*with space/9"
    sim.write_file(dir .. "/issued", odd .. "\tsecret\t" .. ID .. "\n")
    -- '*' kept, '~' encoded, a space as '+' (csrc/secret.c, put_formenc)
    local sent = odd:gsub("[^%w%-%._%* ]", function(c) return ("%%%02X"):format(c:byte()) end):gsub(" ", "+")
    sim.write_file(dir .. "/tree/a/trace.txt", "POST /token client_secret=" .. sent .. "\n")
    local out, rc = scan()
    assert.equals(1, rc, out)
    assert.matches("appears %(form%-encoded%) in .*/tree/a/trace%.txt", out)
    assert.is_nil(out:find(odd, 1, true))
  end)

  it("does not flag a store slot's versions nor a dotenv store's values, and counts what it read", function()
    sim.write_file(dir .. "/tree/a/genesys%2Fapp.json",
      '{"versions":{"current":{"secret":' .. cjson.encode(SECRET) .. '}},"journal":[{"note":"ok"}]}')
    sim.write_file(dir .. "/tree/a/app.env", "CLIENT_ID=" .. ID .. "\nCLIENT_SECRET=" .. SECRET .. "\n")
    sim.write_file(dir .. "/tree/a/env", "export ROTOR_T_CLIENT_SECRET='" .. SECRET .. "'\n")
    local out, rc = scan()
    assert.equals(0, rc, out)
    assert.matches("2 issued values %(1 secrets, 1 access tokens%)", out)
    assert.matches("in 3 files", out)
    assert.matches("1 store slots with their versions taken out, 2 env files", out)
    assert.matches("0 found", out)
  end)

  it("refuses to pass when no secret was recorded", function()
    sim.write_file(dir .. "/tree/a/x.log", "nothing\n")
    sim.write_file(dir .. "/issued", "")
    local out, rc = scan()
    assert.equals(1, rc)
    assert.matches("proves nothing", out)
  end)

  it("refuses to pass when it scanned no file", function()
    local out, rc = scan()
    assert.equals(1, rc)
    assert.matches("no file was scanned; the scan proves nothing", out)
  end)
end)
