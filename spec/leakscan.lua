-- Leak scan: every secret the simulators issued during the run is searched for in everything the
-- specs printed and in every log, journal and audit file under the given directories.
-- usage: lua5.4 spec/leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...
-- Exits 1 naming the file (never the secret) when one is found.
local issued_path = arg[1]
if not issued_path then
  io.stderr:write("usage: leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...\n")
  os.exit(2)
end

local secrets = {}
local f = io.open(issued_path, "rb")
if f then
  for line in f:lines() do
    if #line >= 8 then secrets[line] = true end
  end
  f:close()
end
local nsecrets = 0
for _ in pairs(secrets) do nsecrets = nsecrets + 1 end

-- files worth scanning: output, logs, journals, audit trails (not the stores, which hold secrets
-- by design, and not the list of issued secrets itself)
local function wanted(path)
  if path == issued_path or path:match("issued%-secrets") then return false end
  local name = path:match("[^/]+$")
  return name:match("%.log$") or name:match("audit") or name:match("journal")
    or name:match("%.jsonl$") or name:match("%.out$") or name:match("%.err$")
end

local files = {}
for i = 2, #arg do
  local p = arg[i]
  local attr = io.popen("find '" .. p:gsub("'", "'\\''") .. "' -type f 2>/dev/null")
  for line in attr:lines() do
    if line == p or wanted(line) then files[#files + 1] = line end
  end
  attr:close()
end

local leaks, scanned, bytes = 0, 0, 0
for _, path in ipairs(files) do
  local h = io.open(path, "rb")
  if h then
    local data = h:read("a") or ""
    h:close()
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
print(string.format("leakscan: %d issued secrets searched for in %d files (%d bytes): %d found",
  nsecrets, scanned, bytes, leaks))
if leaks > 0 then os.exit(1) end
if nsecrets == 0 then
  io.stderr:write("leakscan: no issued secrets were recorded; the scan proves nothing\n")
  os.exit(1)
end
