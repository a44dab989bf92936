-- Leak scan: every secret the simulators issued (or were seeded with) during the run is searched
-- for in everything the specs printed and in every file the specs left under the given
-- directories: logs, journals, audit trails, command outputs, server logs.
--
-- usage: lua5.4 spec/leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...
--
-- Secrets belong in stores only. So a slot file of the file store (JSON with "versions") is
-- scanned with its versions taken out (its journal and metadata must be clean), and the files
-- that hold secrets by design are skipped, each kind named below and counted in the report.
-- Exits 1 naming the file (never the secret) when a secret is found anywhere else.
package.path = "./?.lua;./lua/?.lua;" .. package.path
local json = require "rotor.json"

local issued_path = arg[1]
if not issued_path then
  io.stderr:write("usage: leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...\n")
  os.exit(2)
end

local secrets, nsecrets = {}, 0
local f = io.open(issued_path, "rb")
if f then
  for line in f:lines() do
    if #line >= 8 and not secrets[line] then
      secrets[line] = true
      nsecrets = nsecrets + 1
    end
  end
  f:close()
end

-- files that hold secrets by design: stores, deploy sinks, and the inputs specs hand to the
-- processes they start
local BY_DESIGN = {
  { "dotenv store or env file handed to a child process",
    function(n) return n == "env" or n:match("%.env$") end },
  { "exec store sink output (spec)", function(n) return n == "got" end },
  { "curl request config of the simulator helper", function(n) return n:match("^req%d+") end },
  { "TLS keys and the audit HMAC key",
    function(n) return n:match("%.pem$") or n:match("%.key$") or n == ".audit-key" end },
  { "benchmark token file", function(n) return n:match("%.tok$") end },
  { "the issued-secrets list itself", function(n, p) return p == issued_path or n:match("issued%-secrets") end },
}

local read = require("spec.helpers.sim").read_file

local files = {}
for i = 2, #arg do
  local p = io.popen("find '" .. arg[i]:gsub("'", "'\\''") .. "' -type f 2>/dev/null")
  for line in p:lines() do files[#files + 1] = line end
  p:close()
end

local leaks, scanned, bytes, slots = 0, 0, 0, 0
local skipped = {}
for _, path in ipairs(files) do
  local name = path:match("[^/]+$")
  local why
  for _, d in ipairs(BY_DESIGN) do
    if d[2](name, path) then why = d[1] break end
  end
  if why then
    skipped[why] = (skipped[why] or 0) + 1
  else
    local data = read(path)
    if data and name:match("%.json$") then
      local v = json.decode(data)
      if type(v) == "table" and type(v.versions) == "table" then
        -- a slot of the file store: the versions are the store; the rest must be clean
        v.versions = nil
        data = json.encode(v)
        slots = slots + 1
      end
    end
    if data then
      scanned = scanned + 1
      bytes = bytes + #data
      for s in pairs(secrets) do
        if data:find(s, 1, true) then
          leaks = leaks + 1
          io.stderr:write("leakscan: an issued secret appears in " .. path .. "\n")
        end
      end
    end
  end
end
local skips = {}
for why, n in pairs(skipped) do skips[#skips + 1] = n .. " " .. why end
table.sort(skips)
print(("leakscan: %d issued secrets searched for in %d files (%d bytes; %d store slots with their "
  .. "versions taken out): %d found"):format(nsecrets, scanned, bytes, slots, leaks))
if #skips > 0 then print("leakscan: skipped, holding secrets by design: " .. table.concat(skips, "; ")) end
if leaks > 0 then os.exit(1) end
if nsecrets == 0 then
  io.stderr:write("leakscan: no issued secrets were recorded; the scan proves nothing\n")
  os.exit(1)
end
