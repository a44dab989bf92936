-- rotor.store: where rotated secrets live (file) and where they are pushed (dotenv, exec).
--   rotor.store.file(dir)            the embedded default store (get, put, lock, list)
--   rotor.store.etcd{...}            a store in an etcd cluster, shared by a fleet of rotors
--   rotor.store.dotenv(path, keys)   a deploy sink: KEY=value lines apps read
--   rotor.store.exec{ command=... }  a deploy sink: the secret piped to a command's stdin
--   rotor.store.open(spec, base_dir) a store from a configuration's `store` value (below)
-- A custom store is any object with get, put and lock (doc/STORES.md).
local _M = {}

--- A path made absolute against base_dir (relative paths in a config file are the file's). One
-- that starts with "~" is left as it is, for its user to refuse (unexpanded, below).
function _M.resolve(path, base_dir)
  if type(path) ~= "string" or path:find("^[/~]") or base_dir == nil or base_dir == "" then return path end
  if path == "." then return base_dir end
  return base_dir .. "/" .. path:gsub("^%./", "")
end

--- Why a path rotor takes (a store's directory, an audit trail, a .env file, a key file, a CA
-- bundle) is refused: it starts with "~" or holds "$NAME" (or "${NAME}"), which only a shell
-- expands (for a path rotor creates, it would make a directory of that name); nil when it does not.
function _M.unexpanded(path)
  if type(path) ~= "string" then return nil end
  if path:sub(1, 1) == "~" then
    local rest = path:match("^~(/.*)$")
    return ("%s starts with ~, which only a shell expands (rotor would take %q for a directory's name). Write the "
      .. "path in full%s"):format(path, path:match("^[^/]*"),
      rest and (" (in Lua: os.getenv(\"HOME\") .. %q)"):format(rest) or "")
  end
  local before, name, after = path:match("^(.-)%$%{?([%a_][%w_]*)%}?(.*)$")
  if name then
    return ("%s holds $%s, which only a shell expands (rotor would take it for part of a name). Write the path in "
      .. "full (in Lua: %sos.getenv(%q)%s)"):format(path, name, before ~= "" and ("%q .. "):format(before) or "",
      name, after ~= "" and (" .. %q"):format(after) or "")
  end
end

--- The same for a configuration's store value (a directory, or { kind = "file", path = ... }):
-- key ("store" or "store.path"), why | nil.
function _M.unexpanded_store(spec)
  local file = type(spec) == "table" and spec.kind == "file"
  local why = _M.unexpanded(file and spec.path or spec)
  if why then return file and "store.path" or "store", why end
end

function _M.file(dir, opts)
  return require("rotor.store.file").new(dir, opts)
end

--- rotor.store.etcd{ endpoints=, prefix=, cainfo=, cert=, key=, username=, password=, key_file=|key_env=,
-- lease_ttl= }: slots shared by a fleet through etcd (doc/STORES.md)
function _M.etcd(spec)
  return require("rotor.store.etcd").new(spec)
end

function _M.dotenv(path, opts)
  return require("rotor.store.dotenv").new(path, opts)
end

function _M.exec(opts)
  return require("rotor.store.exec").new(opts)
end

--- A store from a configuration value: a string is a file store's directory; a table
-- { kind = "file", path = ... } likewise; { kind = "<other>", ... } is handed to
-- require("rotor.store.<other>").open(spec, base_dir). A store object is returned as it is.
-- Relative paths resolve against base_dir. opts: { read_only = true } (status, due, doctor, a dry
-- run: nothing is created or written). Returns store | nil, message.
function _M.open(spec, base_dir, opts)
  local ro = opts and opts.read_only or nil
  local key, tilde = _M.unexpanded_store(spec)
  if tilde then return nil, key .. ": " .. tilde end
  if type(spec) == "string" then return _M.file(_M.resolve(spec, base_dir), { read_only = ro }) end
  if type(spec) ~= "table" then return nil, "store: a directory or { kind = ..., ... } expected, got " .. type(spec) end
  if spec.kind == nil and type(spec.get) == "function" then return spec end
  if spec.kind == "file" then
    if type(spec.path) ~= "string" or spec.path == "" then return nil, "store.path: a directory expected" end
    -- key_file / key_env (and old_key_files / old_key_envs): secrets sealed at rest (doc/STORES.md)
    local function resolve_all(list)
      if type(list) ~= "table" then return list end
      local out = {}
      for i, f in ipairs(list) do out[i] = _M.resolve(f, base_dir) end
      return out
    end
    return _M.file(_M.resolve(spec.path, base_dir), { journal_max = spec.journal_max,
      read_only = ro or spec.read_only, trusted = resolve_all(spec.trusted),
      key_file = spec.key_file and _M.resolve(spec.key_file, base_dir), key_env = spec.key_env,
      old_key_files = resolve_all(spec.old_key_files), old_key_envs = spec.old_key_envs })
  end
  local mod, why = _M.module(spec.kind)
  if not mod then return nil, "store.kind: " .. why end
  return mod.open(spec, base_dir, opts)
end

-- the modules of rotor.store that push a new secret to its consumers and keep no record
local SINKS = { dotenv = true, exec = true }

local function sink_fix(what)
  return ("%s is a deploy sink, not a store: it hands the new secret to its consumers and keeps no record. Set it "
    .. "as a slot's deploy, and keep rotor's records in a store: a directory (rotor.store.file), or "
    .. "{ kind = \"etcd\", ... }"):format(what)
end

--- The module of a store kind other than "file" (a configuration's store.kind): mod | nil, why
-- (naming the fix: a deploy sink given as the store, a kind no module serves, a module that does
-- not load).
function _M.module(kind)
  if type(kind) ~= "string" or not kind:match("^[%w_]+$") then
    return nil, "a store kind such as \"file\" or \"etcd\" expected"
  end
  if SINKS[kind] then return nil, sink_fix(("kind %q"):format(kind)) end
  local name = "rotor.store." .. kind
  local ok, mod = pcall(require, name)
  if not ok and not tostring(mod):find("module '" .. name .. "' not found", 1, true) then
    return nil, ("the store module %s does not load: %s"):format(name, tostring(mod))
  end
  if not ok or type(mod) ~= "table" or type(mod.open) ~= "function" then
    return nil, ("unknown store kind %s: \"file\" (a directory), \"etcd\", or a module %s with open(spec, "
      .. "base_dir, opts)"):format(kind, name)
  end
  return mod
end

--- Raise unless store has the methods rotation needs.
function _M.check(store, level)
  if type(store) == "string" then
    error(("a store (get, put, lock) expected, got the string %q: for a directory of secrets, pass "
      .. "rotor.store.file(%q)"):format(store, store), (level or 1) + 1)
  end
  if type(store) ~= "table" and type(store) ~= "userdata" then
    error("a store (get, put, lock) expected, got " .. type(store), (level or 1) + 1)
  end
  if type(store.get) ~= "function" and type(store.deploy) == "function" then
    error(sink_fix("the store given (" .. tostring(store) .. ")"), (level or 1) + 1)
  end
  for _, m in ipairs { "get", "put", "lock" } do
    if type(store[m]) ~= "function" then
      error("the store has no " .. m .. " method (a store needs get, put and lock)", (level or 1) + 1)
    end
  end
  return store
end

return _M
