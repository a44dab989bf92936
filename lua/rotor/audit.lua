-- The audit trail: one JSON line per rotation step, appended (and fsynced) to a 0600 file.
--   {"time":..,"slot":..,"provider":..,"rotation":..,"step":..,"outcome":..,"client_id":..,
--    "fingerprint":"<HMAC-SHA256 of the secret under the store's audit key>","note":..}
-- The fingerprint lets two records be compared (same secret or not) without revealing either;
-- the key lives in the store directory (0600). Never the secret itself.
local core = require "rotor.core"
local json = require "rotor.json"
local errors = require "rotor.errors"
local timefmt = require "rotor.timefmt"

local _M = {}

local Audit = {}
Audit.__index = Audit

--- audit.open{ path=, key= } or audit.open(store) (the store's audit_path and audit_key).
function _M.open(spec)
  if type(spec) ~= "table" then error("audit.open: a table {path=, key=} or a store expected", 2) end
  if type(spec.audit_path) ~= "function" then
    -- a misspelt key would leave the trail without its fingerprints
    local unknown = require("rotor.keys").unknown_key(spec, { "path", "key" }, "field")
    if unknown then error("audit.open: " .. unknown, 2) end
  end
  local path, key, store = spec.path, spec.key, nil
  if type(spec.audit_path) == "function" then -- a store
    local kerr
    path = spec:audit_path()
    key, kerr = spec:audit_key()
    if not key then return nil, kerr end
    if type(spec.audit_append) == "function" then store = spec end
  end
  if type(path) ~= "string" or path == "" then error("audit.open: path must be a file path", 2) end
  local tilde = require("rotor.store").unexpanded(path)
  if tilde then error("audit.open: path: " .. tilde, 2) end
  if key ~= nil and type(key) ~= "string" and not core.is_secret(key) then
    error("audit.open: key must be a string or a rotor.secret", 2)
  end
  return setmetatable({ path = path, key = key, store = store }, Audit)
end

local WEAK_KEYS = { __mode = "k" }

--- The fingerprint of a secret under this trail's key (nil without a key or a secret). A
-- rotor.secret value is fingerprinted once per trail: a rotation's steps name the same new
-- secret again (create, verify, promote), and an HMAC costs more than the rest of an entry.
function Audit:fingerprint(secret)
  if secret == nil or self.key == nil then return nil end
  local cache = self.fingerprints
  local fp = cache and cache[secret]
  if fp then return fp end
  fp = core.hmac_sha256_hex(self.key, secret)
  if core.is_secret(secret) then
    if not cache then
      cache = setmetatable({}, WEAK_KEYS)
      self.fingerprints = cache
    end
    cache[secret] = fp
  end
  return fp
end

-- true when the trail's file ends without a newline (a torn last line); false when it is empty,
-- absent, ends with one, or cannot be read (the append that follows then says why). Opened as
-- the append opens it: no link followed, a regular file only (never blocking on a FIFO).
local function torn(trail)
  local last
  local store = trail.store
  if store and store.audit_tail then last = store:audit_tail(1) else last = core.fs_tail(trail.path, 1) end
  return type(last) == "string" and last ~= "" and last ~= "\n"
end

--- The entry written for fields (also used by trails kept elsewhere, e.g. in etcd): trail needs
-- a fingerprint(secret) method.
function _M.entry(trail, f)
  return {
    time = f.time or timefmt.iso(),
    slot = f.slot, provider = f.provider, rotation = f.rotation,
    step = f.step, outcome = f.outcome, client_id = f.client_id,
    note = f.note, fingerprint = trail:fingerprint(f.secret),
  }
end

--- Append one entry, or several (an array of them) in one durable append. fields: slot,
-- provider, rotation, step, outcome, client_id, note, secret (fingerprinted, never written),
-- time (default now). Returns true | nil, err; with later = true, what the store's
-- audit_append(line, true) returns for a trail in a store directory (a ticket: ticket:wait() gives
-- true | nil, err), else the result.
function Audit:write(fields, later)
  local list = fields[1] ~= nil and fields or { fields }
  local lines = {}
  for i, f in ipairs(list) do lines[i] = json.encode(_M.entry(self, f)) .. "\n" end
  local line = table.concat(lines)
  if not self.checked_tail then
    -- a run killed in the middle of an append leaves a line without its newline: start on a fresh
    -- line, so that the torn entry stays alone and every later one parses
    self.checked_tail = true
    if torn(self) then line = "\n" .. line end
  end
  -- a store appends relative to its directory, under its trust rule; else the file named
  if self.store then return self.store:audit_append(line, later) end
  local ok, msg = core.fs_append(self.path, line, 384)
  if not ok then
    return nil, errors.new { kind = "store", message = "cannot append to the audit trail", detail = msg }
  end
  return true
end

--- Read the trail back: an array of entries (for status and tests).
function Audit:entries()
  local text, msg
  if self.store and self.store.audit_read then
    text, msg = self.store:audit_read()
    if text == nil then return nil, msg end
  else
    if not core.fs_exists(self.path) then return {} end
    text, msg = core.fs_read(self.path)
    if not text then
      return nil, errors.new { kind = "store", message = "cannot read the audit trail", detail = msg }
    end
  end
  if not text then return {} end
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local e = json.decode(line)
    if type(e) == "table" then out[#out + 1] = e end
  end
  return out
end

return _M
