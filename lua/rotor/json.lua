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
-- time), valid inside a JSON string. This module needs no C code (the leak scan, the simulator's
-- tools use it with a plain Lua), hence no random bytes from the core; an input that did hold
-- it would only see a one-element array read as an empty one.
local MARK = ("rotor-empty-array-%s-%x"):format(tostring({}):match("0x(%x+)") or "0", os.time())
local MARK_JSON = '["' .. MARK .. '"]'

local has_int = math.type ~= nil
local toint = math.tointeger

-- integers back to integers; marker arrays back to empty arrays
local function normalise(v)
  local t = type(v)
  if t == "number" then
    if has_int and math.type(v) == "float" then
      local i = toint(v)
      if i then return i end
    end
    return v
  elseif t == "table" then
    if not native and v[1] == MARK and v[2] == nil then
      v[1] = nil
      return setmetatable(v, array_mt)
    end
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "number" or tx == "table" then v[k] = normalise(x) end
    end
  end
  return v
end

-- the text with every empty array `[ ]` outside strings replaced by the marker array
local function mark_empty_arrays(s)
  if not s:find("%[%s*%]") then return s end
  local out, i, n = {}, 1, #s
  local pos = 1
  while i <= n do
    local a = s:find('["%[]', i)
    if not a then break end
    if s:sub(a, a) == '"' then
      -- skip the string: to the next quote not escaped by an odd run of backslashes
      local j = a + 1
      while true do
        local q = s:find('"', j, true)
        if not q then return s end -- unterminated: cjson reports it
        local b = q - 1
        while b > a and s:sub(b, b) == "\\" do b = b - 1 end
        if (q - 1 - b) % 2 == 0 then
          j = q
          break
        end
        j = q + 1
      end
      i = j + 1
    else
      local e = s:match("^%[%s*()%]", a)
      if e then
        out[#out + 1] = s:sub(pos, a - 1)
        out[#out + 1] = MARK_JSON
        pos = e + 1
        i = e + 1
      else
        i = a + 1
      end
    end
  end
  if pos == 1 then return s end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

-- a copy of v in which each empty array is the marker array (when cjson cannot mark arrays) and
-- each userdata u is leaf(u) (tables are copied only on the way to a change; v itself is never
-- changed). Returns the copy, whether anything changed, whether a marker array was put in.
local function mark_for_encode(v, depth, leaf)
  local t = type(v)
  if t == "userdata" then
    local nv = leaf(v)
    return nv, not rawequal(nv, v), false
  end
  if depth > 64 then return v, false, false end
  if not native and getmetatable(v) == array_mt and next(v) == nil then return { MARK }, true, true end
  local copy, changed, marked
  for k, x in pairs(v) do
    local tx = type(x)
    -- strings, numbers and booleans (most of a record) need no call
    if tx == "table" or (tx == "userdata" and leaf) then
      local nx, c, m = mark_for_encode(x, depth + 1, leaf)
      if c then
        if not copy then
          copy = {}
          for k2, x2 in pairs(v) do copy[k2] = x2 end
        end
        copy[k] = nx
        changed = true
        marked = marked or m
      end
    end
  end
  return copy or v, changed, marked
end

--- Decode a JSON text. Returns the value, or nil and a message naming the problem.
function _M.decode(s)
  if type(s) ~= "string" then return nil, "JSON text expected, got " .. type(s) end
  local v, err = codec.decode(native and s or mark_empty_arrays(s))
  if v == nil and err then return nil, "malformed JSON: " .. tostring(err) end
  return normalise(v)
end

--- Encode a value. Raises on values JSON cannot carry (a programming error). leaf (optional):
-- each userdata in v is encoded as leaf(it) returns (a store file reveals its rotor.secret values
-- this way), in the same walk that marks empty arrays; v is copied only along the paths to them.
function _M.encode(v, leaf)
  local marked, _
  if type(v) == "table" and (leaf or not native) then v, _, marked = mark_for_encode(v, 0, leaf) end
  local s, err = codec.encode(v)
  if not s then error("json.encode: " .. tostring(err), 2) end
  if native then return s end
  -- cjson 2.1.0 escapes every "/" as "\/": a run of backslashes before "/" is always odd there
  if s:find("\\/", 1, true) then s = s:gsub("(\\+)/", function(b) return b:sub(2) .. "/" end) end
  if marked then s = s:gsub(MARK_JSON:gsub("%p", "%%%0"), "[]") end
  return s
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
