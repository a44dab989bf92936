-- rotor.store: where rotated secrets live (file) and where they are pushed (dotenv, exec).
--   rotor.store.file(dir)            the embedded default store (get, put, lock, list)
--   rotor.store.dotenv(path, keys)   a deploy sink: KEY=value lines apps read
--   rotor.store.exec{ command=... }  a deploy sink: the secret piped to a command's stdin
-- A custom store is any object with get, put and lock (doc/STORES.md).
local _M = {}

function _M.file(dir, opts)
  return require("rotor.store.file").new(dir, opts)
end

function _M.dotenv(path, opts)
  return require("rotor.store.dotenv").new(path, opts)
end

function _M.exec(opts)
  return require("rotor.store.exec").new(opts)
end

--- Raise unless store has the methods rotation needs.
function _M.check(store, level)
  if type(store) ~= "table" and type(store) ~= "userdata" then
    error("a store (get, put, lock) expected, got " .. type(store), (level or 1) + 1)
  end
  for _, m in ipairs { "get", "put", "lock" } do
    if type(store[m]) ~= "function" then
      error("the store has no " .. m .. " method (a store needs get, put and lock)", (level or 1) + 1)
    end
  end
  return store
end

return _M
