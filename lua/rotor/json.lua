-- JSON through lua-cjson, with integers normalised on Lua 5.3+, empty arrays kept as arrays and
-- forward slashes left unescaped.
--
-- Debian's lua-cjson (2.1.0) decodes `[]` and `{}` alike to an empty table and encodes every empty
-- table as `{}`, so an empty list field of a provider's object would come back as an object (a
-- strict server answers 400). Where cjson cannot mark arrays itself (OpenResty's cjson can), an
-- empty array in the text is handed to cjson as a one-element array holding a per-process marker
-- string, and comes back as an empty table with the array metatable; on encode, such tables are
-- written as the same marker and the marker is then replaced by `[]`.
local cjson = require "cjson.safe"
local core = require "rotor.core"

local _M = {}
local codec = cjson.new()
codec.decode_max_depth(64)
codec.encode_max_depth(64)
codec.encode_sparse_array(true, 1, 1)

_M.null = codec.null

local native = codec.empty_array_mt ~= nil and codec.decode_array_with_array_mt ~= nil
local array_mt = codec.empty_array_mt or { __name = "rotor.json.array" }
_M.empty_array_mt = array_mt
if native then
  codec.decode_array_with_array_mt(true)
  if codec.encode_escape_forward_slash then codec.encode_escape_forward_slash(false) end
end

-- the marker: a string an input is most unlikely to hold (it changes with the process and the
-- time), valid inside a JSON string; an input that did hold it would only see a one-element
-- array read as an empty one.
local MARK = ("rotor-empty-array-%s-%x"):format(tostring({}):match("0x(%x+)") or "0", os.time())
local MARK_JSON = '["' .. MARK .. '"]'

-- The scan of a text for empty arrays, the walks over a decoded value (floats with an integer
-- value back to integers on Lua 5.3+, marker arrays back to empty arrays) and over a value to
-- encode (userdata through leaf, empty arrays to marker arrays, copying only the paths to a
-- change) are done in C (csrc/json.c): in Lua they cost several times cjson's own work on a
-- store record.
local prepare, normalise_in_place, mark_arrays, finish = core.json_prepare, core.json_normalise,
  core.json_mark_arrays, core.json_finish
local walk_mt = not native and array_mt or nil

--- Decode a JSON text. Returns the value, or nil and a message naming the problem (also for a
-- number that is not finite: cjson reads NaN, Infinity and 1e999, which no encoder writes back).
function _M.decode(s)
  if type(s) ~= "string" then return nil, "JSON text expected, got " .. type(s) end
  local v, err = codec.decode(native and s or mark_arrays(s, MARK_JSON))
  if v == nil and err then return nil, "malformed JSON: " .. tostring(err) end
  return normalise_in_place(v, walk_mt, MARK)
end

--- Encode a value. Raises on values JSON cannot carry (a programming error). leaf (optional):
-- each userdata in v is encoded as leaf(it) returns (a store file reveals its rotor.secret values
-- this way), in the same walk that marks empty arrays; v is copied only along the paths to them.
-- flat (optional): a table inside v whose elements hold no userdata and no empty array, so that
-- the walk need not visit them (a record's journal: up to hundreds of entries of strings).
function _M.encode(v, leaf, flat)
  local marked
  if type(v) == "table" and (leaf or not native) then v, marked = prepare(v, leaf, walk_mt, MARK, flat) end
  local s, err = codec.encode(v)
  if not s then error("json.encode: " .. tostring(err), 2) end
  if native then return s end
  -- cjson 2.1.0 escapes every "/" as "\/": undone, with the marker arrays made "[]", in C
  return finish(s, marked and MARK_JSON or nil)
end

--- An empty array that encodes as [] rather than {}.
function _M.array(t)
  return setmetatable(t or {}, array_mt)
end

--- True when t is a table decoded from (or made as) a JSON array.
function _M.is_array(t)
  return type(t) == "table" and (getmetatable(t) == array_mt or t[1] ~= nil)
end

return _M
