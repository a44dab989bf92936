-- rotor: rotate OAuth2 client secrets. The public API (README.md; the contracts: doc/INTERNALS.md).
local core = require "rotor.core"
local sched = require "rotor.sched"
local errors = require "rotor.errors"

local _M = {
  _VERSION = core.version,
  core = core,
  errors = errors,
  json = require "rotor.json",
}

--- rotor.secret(str) -> a secret value: tostring() redacted, :reveal() the string.
function _M.secret(v)
  if core.is_secret(v) then return v end
  if type(v) ~= "string" then error("rotor.secret: a string expected, got " .. type(v), 2) end
  return core.secret(v)
end

_M.is_secret = core.is_secret
_M.parallel = sched.parallel
--- rotor.sleep(s) -> true | false: a script's sleep; outside rotor.parallel it ends early (false)
-- when the rotor host gets SIGINT/SIGTERM, so that a waiting script can stop (core.interrupted())
function _M.sleep(s) return sched.sleep(s, true) end

-- providers, loaded on first use
local PROVIDERS = { paylocity = true, spreetail = true, genesys = true, spapi = true }
for name in pairs(PROVIDERS) do
  _M[name] = function(opts)
    require("rotor.client").check_table(name, opts) -- raised here, it names the caller's line
    local p, err = require("rotor.providers." .. name).new(opts)
    return p, err
  end
end

-- rotation, stores and the rest, loaded on first use so `require "rotor"` stays cheap
local LAZY = {
  rotate = function() return require("rotor.rotation").rotate end,
  due = function() return require("rotor.rotation").due end,
  store = function() return require "rotor.store" end,
  audit = function() return require "rotor.audit" end,
}
setmetatable(_M, {
  __index = function(t, k)
    local f = LAZY[k]
    if not f then return nil end
    local v = f()
    rawset(t, k, v)
    return v
  end,
})

return _M
