-- The slot record: its one schema, checked whenever a record is read, whatever the store.
--
--   { slot = <string>, provider = <string>, schema = 1,
--     versions = { current = V, pending = V, previous = V },      -- each optional
--     journal = { { step=, outcome=, time=, rotation=, note= }, ... },
--     rotation = { id=, strategy=, started=, step=, mint = { state=, op=, time=, at=, ... } } | nil,
--     last = { rotation=, outcome=, step=, time= } | nil,
--     retiring = { { client_id=, delete_after= }, ... } | nil }
--   V = { client_id = <string>, secret = <secret>, created=, expires=, promoted=, rotation=, meta = {} }
--
-- validate(record) -> true | nil, "<field>: <problem>" (the first problem found).
-- read(store, slot) -> record | false (no such slot) | nil, err: store:get, the record checked.
local core = require "rotor.core"

local _M = {}

local LABELS = { "current", "pending", "previous" }
_M.LABELS = LABELS

local STEPS = { create = true, verify = true, deploy = true, promote = true, retire = true, done = true }

-- types: "string", "secret string", ... (a secret is a rotor.secret value); the parsed sets are
-- kept, one per spelling
local type_sets = {}
local function opt(v, types)
  if v == nil then return true end
  local set = type_sets[types]
  if not set then
    set = {}
    for t in types:gmatch("%a+") do set[t] = true end
    type_sets[types] = set
  end
  return set[type(v)] == true or (set.secret == true and core.is_secret(v))
end

local VERSION_FIELDS = { client_id = "string", secret = "secret string", created = "string",
                         expires = "string number", promoted = "string", rotation = "string", meta = "table" }

local function check_version(label, v)
  local at = "versions." .. label
  if type(v) ~= "table" then return nil, at .. ": an object expected, found " .. type(v) end
  for k, types in pairs(VERSION_FIELDS) do
    if not opt(v[k], types) then
      return nil, ("%s.%s: %s expected, found %s"):format(at, k, types:gsub(" ", " or "), type(v[k]))
    end
  end
  if type(v.secret) == "string" and v.secret == "" then return nil, at .. ".secret: empty" end
  return true
end

local function array_of_tables(v, at)
  if v == nil then return true end
  if type(v) ~= "table" then return nil, at .. ": an array expected, found " .. type(v) end
  for i, e in ipairs(v) do
    if type(e) ~= "table" then return nil, ("%s[%d]: an object expected, found %s"):format(at, i, type(e)) end
  end
  return true
end

function _M.validate(rec)
  if type(rec) ~= "table" then return nil, "the record: an object expected, found " .. type(rec) end
  for _, k in ipairs { "slot", "provider" } do
    if not opt(rec[k], "string") then return nil, k .. ": a string expected, found " .. type(rec[k]) end
  end
  local versions = rec.versions
  if versions ~= nil then
    if type(versions) ~= "table" then return nil, "versions: an object expected, found " .. type(versions) end
    for _, label in ipairs(LABELS) do
      if versions[label] ~= nil then
        local ok, why = check_version(label, versions[label])
        if not ok then return nil, why end
      end
    end
  end
  local ok, why = array_of_tables(rec.journal, "journal")
  if not ok then return nil, why end
  ok, why = array_of_tables(rec.retiring, "retiring")
  if not ok then return nil, why end
  local rot = rec.rotation
  if rot ~= nil then
    if type(rot) ~= "table" then return nil, "rotation: an object expected, found " .. type(rot) end
    if type(rot.id) ~= "string" or rot.id == "" then return nil, "rotation.id: a string expected" end
    if type(rot.strategy) ~= "string" then return nil, "rotation.strategy: a string expected" end
    if type(rot.step) ~= "string" or not STEPS[rot.step] then
      return nil, "rotation.step: one of create, verify, deploy, promote, retire expected, found "
        .. tostring(rot.step)
    end
    if rot.mint ~= nil and (type(rot.mint) ~= "table" or type(rot.mint.state) ~= "string") then
      return nil, "rotation.mint: an object with a state expected"
    end
  end
  if rec.last ~= nil and type(rec.last) ~= "table" then
    return nil, "last: an object expected, found " .. type(rec.last)
  end
  return true
end

--- A slot's record as every reader takes it (rotation, status, due, doctor, rotor.ngx): store:get,
-- then the schema checked, unless the store checks every record it returns itself
-- (store.checks_records: the file and etcd stores, whose errors name the file or the key). A
-- custom store's malformed record is an error naming the slot and the problem, never a record
-- the reader trips over. Returns record | false (no such slot) | nil, err.
function _M.read(store, slot)
  local rec, err = store:get(slot)
  if not rec or store.checks_records then return rec, err end
  local valid, why = _M.validate(rec)
  if valid then return rec end
  local mt = getmetatable(store)
  local name = type(mt) == "table" and mt.__tostring and tostring(store) or "a store of one's own"
  return nil, require("rotor.errors").new { kind = "store", slot = slot, message = ("slot %s in %s holds no "
    .. "valid record: %s; nothing was changed. Repair or remove the slot's record in that store (rotor doctor "
    .. "shows the slot)"):format(slot, name, why) }
end

return _M
