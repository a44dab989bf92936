-- A deploy sink writing KEY=value lines (a .env file an application reads at start-up).
--
--   local env = rotor.store.dotenv("/etc/app/genesys.env",
--                                  { client_id = "GENESYS_CLIENT_ID", secret = "GENESYS_CLIENT_SECRET" })
--   rotor.rotate{ ..., deploy = env }        -- or env:deploy(new) inside your own hook
--
-- Other lines of the file are kept as they are; the two keys are replaced or appended. The file
-- is replaced atomically (temp name, fsync, rename, directory fsync) keeping its mode, owner and
-- group; a new file gets opts.mode (0600). When the path is a symbolic link, the link's target
-- is updated (the link stays), provided the link is owned by root, by the user rotor runs as or
-- by the target's owner; otherwise the deploy is refused, saying why.
local core = require "rotor.core"
local errors = require "rotor.errors"

local _M = {}

local Sink = {}
Sink.__index = Sink

local function store_error(what, msg)
  return errors.new { kind = "store", message = what .. ": " .. tostring(msg), detail = msg }
end

local function check_key(k, what)
  if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
    error("rotor.store.dotenv: " .. what .. " must be a variable name ([A-Za-z_][A-Za-z0-9_]*)", 3)
  end
end

-- the options a dotenv sink takes (also a config's deploy = { kind = "dotenv", path = ..., ... })
_M.OPTIONS = { "client_id", "secret", "expires", "mode" }

--- rotor.store.dotenv(path, { client_id = "NAME" | false, secret = "NAME", expires = "NAME" | nil,
--                             mode = 0600 })
function _M.new(path, opts)
  if type(path) ~= "string" or path == "" then error("rotor.store.dotenv: a file path expected", 2) end
  local tilde = require("rotor.store").unexpanded(path)
  if tilde then error("rotor.store.dotenv: " .. tilde, 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("rotor.store.dotenv: opts must be a table", 2) end
  local unknown = require("rotor.keys").unknown_key(opts, _M.OPTIONS, "option")
  if unknown then error("rotor.store.dotenv: " .. unknown, 2) end
  local keys = {
    client_id = opts.client_id == nil and "CLIENT_ID" or opts.client_id,
    secret = opts.secret or "CLIENT_SECRET",
    expires = opts.expires,
  }
  check_key(keys.secret, "secret")
  if keys.client_id then check_key(keys.client_id, "client_id") end
  if keys.expires then check_key(keys.expires, "expires") end
  local m = opts.mode
  if m ~= nil and (type(m) ~= "number" or m % 1 ~= 0 or m < 0 or m > 511) then
    error("rotor.store.dotenv: mode must be a file mode such as 384 (0600)", 2)
  end
  return setmetatable({ path = path, keys = keys, mode = opts.mode or 384 }, Sink)
end

-- a value as a dotenv parser reads it: bare when safe, else double-quoted with escapes
local function quote(v)
  if v:match("^[%w%+/=%._%-:~@,]*$") then return v end
  return '"' .. v:gsub('[\\"$`]', "\\%0"):gsub("\n", "\\n") .. '"'
end

local function unquote(v)
  v = v:gsub("^%s+", ""):gsub("%s+$", "")
  local inner = v:match('^"(.*)"$')
  if inner then
    return (inner:gsub("\\(.)", function(c) return c == "n" and "\n" or c end))
  end
  return v:match("^'(.*)'$") or v
end

--- Read the file: a table of KEY -> value (the secret key's value as a rotor.secret).
function Sink:read()
  if not core.fs_exists(self.path) then return {} end
  local text, msg = core.fs_read(self.path)
  if not text then return nil, store_error("cannot read " .. self.path, msg) end
  local out = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local k, v = line:match("^%s*export%s+([%a_][%w_]*)%s*=(.*)$")
    if not k then k, v = line:match("^%s*([%a_][%w_]*)%s*=(.*)$") end
    if k then
      v = unquote(v)
      out[k] = (k == self.keys.secret) and core.secret(v) or v
    end
  end
  return out
end

--- Write new = { client_id=, secret=<secret or string>, expires= } into the file.
function Sink:deploy(new)
  if type(new) ~= "table" or new.secret == nil then
    error("dotenv:deploy: a version {client_id, secret} expected", 2)
  end
  local values = {}
  local secret = core.is_secret(new.secret) and new.secret:reveal() or tostring(new.secret)
  values[self.keys.secret] = secret
  if self.keys.client_id and new.client_id then values[self.keys.client_id] = tostring(new.client_id) end
  if self.keys.expires and new.expires then values[self.keys.expires] = tostring(new.expires) end
  local lines, seen = {}, {}
  if core.fs_exists(self.path) then
    local text, msg = core.fs_read(self.path)
    if not text then
      return nil, store_error("cannot read " .. self.path, msg)
    end
    for line in text:gmatch("([^\n]*)\n?") do
      local k = line:match("^%s*export%s+([%a_][%w_]*)%s*=") or line:match("^%s*([%a_][%w_]*)%s*=")
      if k and values[k] then
        if not seen[k] then lines[#lines + 1] = k .. "=" .. quote(values[k]) end
        seen[k] = true
      else
        lines[#lines + 1] = line
      end
    end
    while lines[#lines] == "" do lines[#lines] = nil end
  end
  for _, k in ipairs { self.keys.client_id, self.keys.secret, self.keys.expires } do
    if k and values[k] and not seen[k] then lines[#lines + 1] = k .. "=" .. quote(values[k]) end
  end
  local ok, msg = core.fs_write_through(self.path, table.concat(lines, "\n") .. "\n", self.mode)
  if not ok then return nil, store_error("cannot write " .. self.path, msg) end
  return true
end

Sink.__call = Sink.deploy

function Sink:__tostring()
  return "rotor.store.dotenv(" .. self.path .. ")"
end

return _M
