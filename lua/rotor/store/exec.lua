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
--
-- The command runs under /bin/sh with an explicit environment: the variables of ENV_ALLOW taken
-- from rotor's own environment, plus opts.env = { NAME = "value" | true (take it from rotor's
-- environment) | false (leave it out) }. Nothing else of rotor's environment (where admin secrets
-- often live) reaches it, and it inherits no descriptor but stdin (the secret), stdout and stderr.
-- A command still running after opts.timeout seconds (3600: an hour, long enough for a deploy
-- that waits on a rollout) is stopped: its process group gets SIGTERM, then SIGKILL, and the
-- deploy fails (the new secret stays pending for the next run). In a batch, the other rotations go
-- on while the command runs (sched.wait_child).
local core = require "rotor.core"
local errors = require "rotor.errors"
local bounds = require "rotor.bounds"
local json = require "rotor.json"
local sched = require "rotor.sched"

local _M = {}

local Sink = {}
Sink.__index = Sink

local INPUTS = { secret = true, line = true, json = true, env = true }

--- Seconds a deploy command may run before it is stopped (opts.timeout)
_M.TIMEOUT = 3600

--- The variables a deploy command gets from rotor's environment unless opts.env says otherwise.
_M.ENV_ALLOW = { "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_ALL",
                 "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "TERM" }
local DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

local function check_env(env)
  if env == nil then return end
  if type(env) ~= "table" then error("rotor.store.exec: env must be a table { NAME = value | true | false }", 3) end
  for k, v in pairs(env) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") then
      error("rotor.store.exec: env names must be variable names ([A-Za-z_][A-Za-z0-9_]*)", 3)
    end
    if type(v) ~= "string" and type(v) ~= "boolean" then
      error("rotor.store.exec: env." .. k .. " must be a string, true (inherit) or false (drop)", 3)
    end
    if type(v) == "string" and v:find("%z") then error("rotor.store.exec: env." .. k .. " holds a NUL byte", 3) end
  end
end

--- The environment of the command: an array of "NAME=value".
function _M.environment(user)
  local vars = {}
  for _, k in ipairs(_M.ENV_ALLOW) do vars[k] = os.getenv(k) end
  for k, v in pairs(user or {}) do
    if v == true then vars[k] = os.getenv(k) elseif v == false then vars[k] = nil else vars[k] = v end
  end
  if vars.PATH == nil then vars.PATH = DEFAULT_PATH end
  local out = {}
  for k, v in pairs(vars) do out[#out + 1] = k .. "=" .. v end
  table.sort(out)
  return out
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function _M.new(opts)
  if type(opts) == "string" then opts = { command = opts } end
  -- a misspelt option first: { comand = ... } is missing its command because of it
  local unknown = type(opts) == "table"
    and require("rotor.keys").unknown_key(opts, { "command", "input", "env", "name", "timeout" }, "option")
  if unknown then error("rotor.store.exec: " .. unknown, 2) end
  if type(opts) ~= "table" or type(opts.command) ~= "string" or opts.command == "" then
    error("rotor.store.exec: { command = \"...\" } expected", 2)
  end
  local t = opts.timeout
  if t ~= nil then
    local ok, why = bounds.within(bounds.TIME_LIMIT, t)
    if not ok then error("rotor.store.exec: timeout: " .. why, 2) end
  end
  if opts.name ~= nil and (type(opts.name) ~= "string" or opts.name == "") then
    error("rotor.store.exec: name must be a non-empty string", 2)
  end
  local input = opts.input or "secret"
  if not INPUTS[input] then error("rotor.store.exec: input must be secret, line, json or env", 2) end
  check_env(opts.env)
  return setmetatable({ command = opts.command, input = input, name = opts.name, env = opts.env,
                        timeout = t or _M.TIMEOUT }, Sink)
end

local function payload(self, new)
  if self.input == "secret" then return new.secret end
  local secret = core.is_secret(new.secret) and new.secret:reveal() or tostring(new.secret)
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
  local input = payload(self, new)
  if type(input) ~= "string" and not core.is_secret(input) then input = tostring(input) end
  -- started, then waited for as a task of the loop: the other rotations of a batch go on meanwhile
  local child, serr = core.spawn_start { argv = { "/bin/sh", "-c", cmd }, env = _M.environment(self.env),
                                         input = input, timeout = self.timeout }
  input = nil -- luacheck: ignore 311
  local code, wrote, stopped
  if child then code, wrote, stopped = sched.wait_child(child) else code, wrote = nil, serr end
  local what = self.name or self.command:match("^%s*(%S+)") or "command"
  if code == nil and stopped == "timeout" then
    return nil, errors.new { kind = "store", message = ("deploy command %s did not finish within %s s and was "
      .. "stopped (SIGTERM to its process group, then SIGKILL); raise the sink's timeout if it needs longer")
      :format(what, tostring(self.timeout)), detail = wrote }
  end
  if code == nil and stopped == "interrupted" then
    return nil, errors.new { kind = "interrupted", message = ("deploy command %s was stopped: rotor got SIGINT or "
      .. "SIGTERM (SIGTERM to its process group, then SIGKILL)"):format(what) }
  end
  if code == nil then
    return nil, errors.new { kind = "store", message = "cannot start the deploy command", detail = wrote }
  end
  if wrote and code == 0 then return true end
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
