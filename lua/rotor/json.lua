-- JSON through lua-cjson, with integers normalised on Lua 5.3+.
local cjson = require "cjson.safe"

local _M = {}
local codec = cjson.new()
codec.decode_max_depth(64)
codec.encode_max_depth(64)
codec.encode_sparse_array(true, 1, 1)

_M.null = codec.null
_M.empty_array_mt = codec.empty_array_mt

local has_int = math.type ~= nil
local toint = math.tointeger

local function normalise(v)
  local t = type(v)
  if t == "number" then
    if has_int and math.type(v) == "float" then
      local i = toint(v)
      if i then return i end
    end
    return v
  elseif t == "table" then
    for k, x in pairs(v) do
      local tx = type(x)
      if tx == "number" then
        v[k] = normalise(x) -- 1.0 == 1, so assign unconditionally
      elseif tx == "table" then
        normalise(x)
      end
    end
  end
  return v
end

--- Decode a JSON text. Returns the value, or nil and a message naming the problem.
function _M.decode(s)
  if type(s) ~= "string" then return nil, "JSON text expected, got " .. type(s) end
  local v, err = codec.decode(s)
  if v == nil and err then return nil, "malformed JSON: " .. tostring(err) end
  return normalise(v)
end

--- Encode a value. Raises on values JSON cannot carry (a programming error).
function _M.encode(v)
  local s, err = codec.encode(v)
  if not s then error("json.encode: " .. tostring(err), 2) end
  return s
end

--- An empty array that encodes as [] rather than {}.
function _M.array(t)
  return setmetatable(t or {}, codec.empty_array_mt)
end

return _M
