-- A deploy sink that pipes the new secret to a command's standard input, e.g.
--
--   deploy = rotor.store.exec{
--     command = "kubectl create secret generic genesys --from-file=client_secret=/dev/stdin "
--            .. "--dry-run=client -o yaml | kubectl apply -f -" }
--   deploy = rotor.store.exec{ command = "vault kv put secret/genesys client_secret=-" }
--
-- The secret is written to stdin only: never on the command line, never in the environment.
-- In the command, {client_id}, {slot} and {expires} are replaced by shell-quoted values (never
-- the secret). input = "secret" (default: the bare secret, no newline), "line" (with a newline),
-- "json" ({"client_id":..,"secret":..,"expires":..}) or "env" (CLIENT_ID=...\nCLIENT_SECRET=...).
local core = require "rotor.core"
local errors = require "rotor.errors"
local json = require "rotor.json"

local _M = {}

local Sink = {}
Sink.__index = Sink

local INPUTS = { secret = true, line = true, json = true, env = true }

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function _M.new(opts)
  if type(opts) == "string" then opts = { command = opts } end
  if type(opts) ~= "table" or type(opts.command) ~= "string" or opts.command == "" then
    error("rotor.store.exec: { command = \"...\" } expected", 2)
  end
  local input = opts.input or "secret"
  if not INPUTS[input] then error("rotor.store.exec: input must be secret, line, json or env", 2) end
  return setmetatable({ command = opts.command, input = input, name = opts.name }, Sink)
end

local function payload(self, new, secret)
  if self.input == "secret" then return secret end
  if self.input == "line" then return secret .. "\n" end
  if self.input == "json" then
    return json.encode { client_id = new.client_id, secret = secret, expires = new.expires }
  end
  return ("CLIENT_ID=%s\nCLIENT_SECRET=%s\n"):format(tostring(new.client_id or ""), secret)
end

--- Run the command with the secret on stdin: true | nil, err (kind "store": the command failed).
function Sink:deploy(new)
  if type(new) ~= "table" or new.secret == nil then error("exec:deploy: a version {client_id, secret} expected", 2) end
  local cmd = self.command:gsub("{([%w_]+)}", function(k)
    if k == "client_id" or k == "slot" or k == "expires" then return shell_quote(new[k] or "") end
  end)
  local secret = core.is_secret(new.secret) and new.secret:reveal() or tostring(new.secret)
  -- the command's exit status goes to a file: a pipe's close() gives no status under Lua 5.1/LuaJIT
  local status_file = os.tmpname()
  local f, perr = io.popen("( " .. cmd .. " ); echo $? > " .. shell_quote(status_file), "w")
  if not f then
    os.remove(status_file)
    return nil, errors.new { kind = "store", message = "cannot start the deploy command", detail = perr }
  end
  local wrote = f:write(payload(self, new, secret))
  secret = nil -- luacheck: ignore 311
  f:close()
  local sf = io.open(status_file, "rb")
  local code = sf and tonumber(sf:read("*a"):match("%d+"))
  if sf then sf:close() end
  os.remove(status_file)
  if wrote and code == 0 then return true end
  local what = self.name or self.command:match("^%s*(%S+)") or "command"
  return nil, errors.new {
    kind = "store",
    message = ("deploy command %s failed (exit %s)"):format(what, tostring(code or "unknown")),
  }
end

Sink.__call = Sink.deploy

function Sink:__tostring()
  return "rotor.store.exec(" .. (self.name or self.command:match("^%s*(%S+)") or "?") .. ")"
end

return _M
