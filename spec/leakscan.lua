-- Leak scan: every secret and access token the simulators issued (or were seeded with) during the
-- run is searched for in everything the specs printed and in every file the specs left under the
-- given directories: logs, journals, audit trails, command outputs, server logs, rock trees.
--
-- usage: lua5.4 spec/leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...
--
-- ISSUED_SECRETS_LOG has one value a line: "<value>\t<secret|token>\t<client id>" (the simulator's
-- $ROTOR_SECRETS_LOG) or just "<value>". Each value is searched for in every form it can take on
-- the way out: raw, JSON-escaped ("/" as "\/"), form/URL-encoded (either hex case), and base64 and
-- base64url of each of these, at any alignment inside a longer base64 text (so "Basic
-- base64(id:secret)" is found whatever the id).
--
-- Secrets belong in stores only. A slot file of the file store (JSON with "versions") is decoded,
-- its versions taken out, and the rest (journal, metadata) searched as decoded text. An env file
-- (`env`, `*.env`: a dotenv store or the environment handed to a child process) may hold a
-- secret only as the whole, raw value of an assignment; anywhere else in it, or in another form,
-- is a leak. The other files that
-- hold secrets by design are skipped, each kind named below and counted in the report.
-- Exits 1 naming the file and the form (never the secret) when a secret is found anywhere else,
-- and when nothing was recorded or nothing was scanned (a scan of nothing proves nothing).
package.path = "./?.lua;" .. package.path
local cjson = require "cjson.safe"
local forms = require("spec.helpers.leakforms").forms

local issued_path = arg[1]
if not issued_path or not arg[2] then
  io.stderr:write("usage: leakscan.lua ISSUED_SECRETS_LOG FILE_OR_DIR...\n")
  os.exit(2)
end

local read = require("spec.helpers.sim").read_file

---------------------------------------------------------------------------------------------------
-- what to search for

local values, nvalues, ntokens, exact = {}, 0, 0, {}
do
  local data = read(issued_path) or ""
  local seen = {}
  for line in data:gmatch("[^\n]+") do
    local v, what = line:match("^([^\t]*)\t?([^\t]*)")
    if v and #v >= 8 and not seen[v] then
      seen[v] = true
      exact[v] = true
      nvalues = nvalues + 1
      if what == "token" then ntokens = ntokens + 1 end
      values[#values + 1] = { value = v, what = what == "token" and "access token" or "secret",
                              forms = forms(v) }
    end
  end
end

-- files that hold secrets by design: deploy sinks, the inputs specs hand to the processes they
-- start, keys
local BY_DESIGN = {
  { "exec store sink output (spec)", function(n) return n == "got" end },
  { "curl request config of the simulator helper", function(n) return n:match("^req%d+") end },
  { "TLS keys and the audit HMAC key",
    function(n) return n:match("%.pem$") or n:match("%.key$") or n == ".audit-key" end },
  { "benchmark token file", function(n) return n:match("%.tok$") end },
  { "the issued-secrets list itself", function(n, p) return p == issued_path or n:match("issued%-secrets") end },
}

local function is_env(name) return name == "env" or name:match("%.env$") ~= nil end

-- an env file without the values of its assignments (kept: comments, names, anything else)
local function env_rest(data)
  local out = {}
  for line in (data .. "\n"):gmatch("([^\n]*)\n") do
    local head, val = line:match("^(%s*export%s+[%w_]+=)(.*)$")
    if not head then head, val = line:match("^(%s*[%w_]+=)(.*)$") end
    if head then
      local q = val:match("^'(.*)'$") or val:match('^"(.*)"$')
      -- a value is dropped only when it is exactly an issued value, as a dotenv store writes it
      if exact[q or val] then out[#out + 1] = head else out[#out + 1] = line end
    else
      out[#out + 1] = line
    end
  end
  return table.concat(out, "\n")
end

-- a slot file of the file store: its decoded text without the versions, or nil
local function slot_rest(data)
  local v = cjson.decode(data)
  if type(v) ~= "table" or type(v.versions) ~= "table" then return nil end
  v.versions = nil
  local parts = {}
  local function walk(x, depth)
    if depth > 64 then return end
    if type(x) == "table" then
      for k, y in pairs(x) do
        if type(k) == "string" then parts[#parts + 1] = k end
        walk(y, depth + 1)
      end
    elseif type(x) == "string" then
      parts[#parts + 1] = x
    end
  end
  walk(v, 0)
  return table.concat(parts, "\n")
end

local files = {}
for i = 2, #arg do
  local p = io.popen("find '" .. arg[i]:gsub("'", "'\\''") .. "' -type f 2>/dev/null")
  for line in p:lines() do files[#files + 1] = line end
  p:close()
end

-- A first pass over the files taken as they are (not slot or env files, which are searched after
-- their by-design values are taken out): one `grep -F` with every form of every value (GNU grep's
-- multi-string search reads each file once; etcd's 64 MB write-ahead logs made the per-value
-- search take minutes). Only the files it names are searched again below, to say what leaked.
local function grep_hits(list)
  local hits = {}
  if #list == 0 then return hits end
  local pat_path = (issued_path:match("^(.*)/[^/]*$") or ".") .. "/leakscan-patterns.tmp"
  local fh = assert(io.open(pat_path, "wb"))
  for _, v in ipairs(values) do
    for _, f in ipairs(v.forms) do
      if not f[1]:find("\n", 1, true) then fh:write(f[1], "\n") end
    end
  end
  fh:close()
  -- a canary holding the first form: grep must name it, or its silence proves nothing
  local canary = pat_path .. ".canary"
  fh = assert(io.open(canary, "wb"))
  fh:write("x", values[1] and values[1].forms[1][1] or "", "x\n")
  fh:close()
  local lst_path = pat_path .. ".files"
  fh = assert(io.open(lst_path, "wb"))
  for _, path in ipairs(list) do fh:write(path, "\0") end
  fh:write(canary, "\0")
  fh:close()
  local p = io.popen(("xargs -0 grep -aFl -f '%s' < '%s' 2>/dev/null"):format(pat_path, lst_path))
  for line in p:lines() do hits[line] = true end
  p:close()
  os.remove(pat_path)
  os.remove(lst_path)
  os.remove(canary)
  if not hits[canary] then return nil end -- grep did not work: every file is searched below
  return hits
end

local plain_files = {}
for _, path in ipairs(files) do
  local name = path:match("[^/]+$")
  if not name:match("%.json$") and not is_env(name) then plain_files[#plain_files + 1] = path end
end
local hits = grep_hits(plain_files)

local leaks, scanned, bytes, slots, envs = 0, 0, 0, 0, 0
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
    local data
    if hits and not hits[path] and not name:match("%.json$") and not is_env(name) then
      -- grep read it and found none: counted, not searched again
      local f = io.open(path, "rb")
      local size = f and f:seek("end")
      if f then f:close() end
      if size then
        scanned, bytes = scanned + 1, bytes + size
      end
      goto next_file
    end
    data = read(path)
    if data and name:match("%.json$") then
      local rest = slot_rest(data)
      if rest then data, slots = rest, slots + 1 end
    elseif data and is_env(name) then
      data, envs = env_rest(data), envs + 1
    end
    if data then
      scanned = scanned + 1
      bytes = bytes + #data
      for _, v in ipairs(values) do
        for _, f in ipairs(v.forms) do
          if data:find(f[1], 1, true) then
            leaks = leaks + 1
            io.stderr:write(("leakscan: an issued %s appears (%s) in %s\n"):format(v.what, f[2], path))
            break
          end
        end
      end
    end
  end
  ::next_file::
end
local skips = {}
for why, n in pairs(skipped) do skips[#skips + 1] = n .. " " .. why end
table.sort(skips)
print(("leakscan: %d issued values (%d secrets, %d access tokens), each in its raw, JSON-escaped, "
  .. "URL-encoded, form-encoded and base64 forms, searched for in %d files (%d bytes; %d store slots with their "
  .. "versions taken out, %d env files with their assignments' values taken out): %d found"):format(
  nvalues, nvalues - ntokens, ntokens, scanned, bytes, slots, envs, leaks))
if #skips > 0 then print("leakscan: skipped, holding secrets by design: " .. table.concat(skips, "; ")) end
if leaks > 0 then os.exit(1) end
if nvalues == 0 then
  io.stderr:write("leakscan: no issued secrets were recorded; the scan proves nothing\n")
  os.exit(1)
end
if scanned == 0 then
  io.stderr:write("leakscan: no file was scanned; the scan proves nothing\n")
  os.exit(1)
end
