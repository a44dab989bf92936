-- Secrets sealed at rest (AES-256-GCM, rotor.core's seal/unseal) for the file and etcd stores.
--
--   local ring, err = seal.keyring{ key_file = path | key_env = "VAR", old_key_files = {...},
--                                   old_key_envs = {...} }
--   seal.record_to_write(ring, record, slot)   what a store writes: a copy of the record, its
--                                    versions' secrets sealed (ring nil: left as they are)
--   seal.open_versions(ring, record, slot)   sealed secrets of a record read back -> rotor.secret
--
-- key_file holds 32 raw bytes (head -c 32 /dev/urandom > key); key_env names a variable holding
-- them as 64 hex characters. A sealed secret is stored as
--   { alg = "A256GCM", kid = "<16 hex: HMAC-SHA256(key, label), never the key>", data = "<base64>" }
-- bound to its slot name (AAD), so it cannot be moved to another slot. Older keys listed in
-- old_key_files / old_key_envs still open what they sealed; new values are sealed with key_file
-- (or key_env).
local core = require "rotor.core"
local errors = require "rotor.errors"

local _M = {}

local ALG = "A256GCM"
local LABELS = { "current", "pending", "previous" }

local Ring = {}
Ring.__index = Ring

local function config_error(message)
  return nil, errors.new { kind = "config", message = message }
end

local function key_from_file(path)
  if type(path) ~= "string" or path == "" then return config_error("key_file must be a file path") end
  local tilde = require("rotor.store").unexpanded(path)
  if tilde then return config_error("key_file: " .. tilde) end
  if not core.fs_exists(path) then
    return config_error(("key_file %s does not exist; make one with: head -c 32 /dev/urandom > %s && chmod 600 %s")
      :format(path, path, path))
  end
  -- read under the trust rule, open to nobody but its owner, straight into a rotor.secret
  local key, msg = core.fs_read_private(path)
  if not key then return config_error("cannot use key_file " .. path .. ": " .. tostring(msg)) end
  if key:len() ~= 32 then
    local n = key:len()
    key:close()
    return config_error(("key_file %s holds %d bytes; it must hold exactly 32 raw bytes "
      .. "(head -c 32 /dev/urandom > %s)"):format(path, n, path))
  end
  return key
end

local function key_from_env(name)
  if type(name) ~= "string" or name == "" then return config_error("key_env must name an environment variable") end
  local hex = os.getenv(name)
  if hex == nil or hex == "" then
    return config_error(("key_env: the variable %s is not set; it must hold the key as 64 hex characters "
      .. "(e.g. export %s=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'))"):format(name, name))
  end
  hex = hex:gsub("%s", "")
  if #hex ~= 64 or hex:find("[^%x]") then
    return config_error(("key_env: %s must hold exactly 64 hex characters (32 bytes), it holds %d characters")
      :format(name, #hex))
  end
  return core.secret((hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)))
end

--- True when opts configure a key.
function _M.configured(opts)
  return type(opts) == "table" and (opts.key_file ~= nil or opts.key_env ~= nil)
end

--- The configuration problems of the key fields (a list of strings, empty when fine).
function _M.problems(opts, out)
  out = out or {}
  if opts.key_file ~= nil and opts.key_env ~= nil then
    out[#out + 1] = "key_file and key_env: give one of them, not both"
  end
  if opts.key_file ~= nil and (type(opts.key_file) ~= "string" or opts.key_file == "") then
    out[#out + 1] = "key_file must be a file path (32 raw bytes)"
  end
  if opts.key_env ~= nil and (type(opts.key_env) ~= "string" or opts.key_env == "") then
    out[#out + 1] = "key_env must name an environment variable (64 hex characters)"
  end
  for _, f in ipairs { "old_key_files", "old_key_envs" } do
    local v = opts[f]
    if v ~= nil then
      if type(v) ~= "table" then
        out[#out + 1] = f .. " must be a list of " .. (f == "old_key_files" and "file paths" or "variable names")
      else
        for i, x in ipairs(v) do
          if type(x) ~= "string" or x == "" then out[#out + 1] = ("%s[%d] must be a non-empty string"):format(f, i) end
        end
      end
    end
  end
  return out
end

--- keyring(opts) -> ring | nil, err (kind "config")
function _M.keyring(opts)
  local key, err
  if opts.key_file ~= nil then key, err = key_from_file(opts.key_file)
  elseif opts.key_env ~= nil then key, err = key_from_env(opts.key_env)
  else return config_error("no key: set key_file (32 raw bytes) or key_env (64 hex characters)") end
  if not key then return nil, err end
  local kid = core.seal_key_id(key)
  local ring = setmetatable({ key = key, kid = kid, keys = { [kid] = key } }, Ring)
  for _, path in ipairs(opts.old_key_files or {}) do
    local k, kerr = key_from_file(path)
    if not k then return nil, kerr end
    ring.keys[core.seal_key_id(k)] = k
  end
  for _, name in ipairs(opts.old_key_envs or {}) do
    local k, kerr = key_from_env(name)
    if not k then return nil, kerr end
    ring.keys[core.seal_key_id(k)] = k
  end
  return ring
end

local function aad(slot) return "rotor/v1:" .. slot end

--- What a store writes for a record: a copy of its top level with slot and schema set, and, when
-- ring is given, of its versions with each secret (a string or a rotor.secret) sealed. Only the
-- tables on the way to a change are copied; the record itself is never changed.
function _M.record_to_write(ring, record, slot)
  local top = {}
  for k, v in pairs(record) do top[k] = v end
  top.slot, top.schema = slot, 1
  if ring and type(record.versions) == "table" then
    local versions = {}
    for label, v in pairs(record.versions) do versions[label] = v end
    for _, label in ipairs(LABELS) do
      local v = versions[label]
      if type(v) == "table" and (type(v.secret) == "string" or core.is_secret(v.secret)) then
        local c = {}
        for k, x in pairs(v) do c[k] = x end
        c.secret = { alg = ALG, kid = ring.kid, data = core.seal(ring.key, v.secret, aad(slot)) }
        versions[label] = c
      end
    end
    top.versions = versions
  end
  return top
end

--- A key derived from the sealing key (64 hex), e.g. for the audit trail's fingerprints.
function Ring:derive(label)
  return core.hmac_sha256_hex(self.key, "rotor derived key v1: " .. label)
end

local function is_sealed(s)
  return type(s) == "table" and s.alg == ALG and type(s.kid) == "string" and type(s.data) == "string"
end
_M.is_sealed = is_sealed

--- Open the sealed secrets of a record read back (in place): each becomes a rotor.secret.
-- Returns true | nil, err (kind "config" for a missing key, "store" for a value that does not open).
function _M.open_versions(ring, record, slot)
  local versions = type(record.versions) == "table" and record.versions or {}
  for _, label in ipairs(LABELS) do
    local v = versions[label]
    if type(v) == "table" and is_sealed(v.secret) then
      local key = ring and ring.keys[v.secret.kid]
      if not key then
        return config_error(("slot %s holds a secret sealed with key id %s, and %s: configure that key "
          .. "(key_file / key_env, or old_key_files / old_key_envs when it is an older key)"):format(
          slot, v.secret.kid, ring and "no configured key has that id" or "no key is configured"))
      end
      local s, why = core.unseal(key, v.secret.data, aad(slot))
      if not s then
        return nil, errors.new { kind = "store", message = ("slot %s: the %s secret cannot be opened: %s")
          :format(slot, label, why) }
      end
      v.secret = s
    end
  end
  return true
end

return _M
