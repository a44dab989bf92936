-- spec.helpers.leakforms: the forms a secret takes on its way out (raw, JSON-escaped, URL-encoded
-- in either hex case, form-encoded as rotor's token requests do it, and base64 / base64url of
-- each, at any alignment inside a longer base64 text such as "Basic base64(id:secret)"), and a
-- search for them. Used by spec/leakscan.lua and by the specs that check errors, logs and command
-- output for secrets. Lua 5.1 to 5.4.
local _M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local floor = math.floor

function _M.b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local i1, i2, i3, i4 = floor(n / 262144) % 64, floor(n / 4096) % 64, floor(n / 64) % 64, n % 64
    out[#out + 1] = B64:sub(i1 + 1, i1 + 1) .. B64:sub(i2 + 1, i2 + 1)
      .. (b and B64:sub(i3 + 1, i3 + 1) or "=") .. (c and B64:sub(i4 + 1, i4 + 1) or "=")
  end
  return table.concat(out)
end

local function json_escape(s)
  return (s:gsub('[%c"\\/]', function(c)
    if c == "/" then return "\\/" elseif c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
    return ("\\u%04x"):format(c:byte())
  end))
end

-- letters, digits, "-._", keep (a pattern class item) and spaces as they are, then spaces as "+",
-- every other byte as fmt gives it
local function pct_encode(s, keep, fmt)
  return (s:gsub("[^%w%-%._" .. keep .. " ]", function(c) return fmt:format(c:byte()) end):gsub(" ", "+"))
end

-- the base64 characters that depend on s alone when s sits at byte offset k (0, 1, 2) of a longer
-- base64-encoded text: found whatever comes before and after it
local function b64_cores(s)
  local out = {}
  for k = 0, 2 do
    local enc = _M.b64(("\0"):rep(k) .. s)
    local skip = ({ 0, 2, 3 })[k + 1]
    local upto = floor((k + #s) / 3) * 4
    local core = enc:sub(skip + 1, upto)
    if #core >= 8 then out[#out + 1] = core end
  end
  return out
end

--- Every form of value v to search for: { {text, form name}, ... } (forms shorter than 8 left out).
function _M.forms(v)
  local list, seen = {}, {}
  local function add(text, form)
    if #text >= 8 and not seen[text] then
      seen[text] = true
      list[#list + 1] = { text, form }
    end
  end
  local bases = {
    { v, "raw" }, { json_escape(v), "JSON-escaped" },
    { pct_encode(v, "~", "%%%02X"), "URL-encoded" }, { pct_encode(v, "~", "%%%02x"), "URL-encoded" },
    -- as rotor's token requests form-encode a secret (body and Basic header): '*' kept, '~' encoded
    { pct_encode(v, "%*", "%%%02X"), "form-encoded" },
  }
  for _, b in ipairs(bases) do
    add(b[1], b[2])
    for _, core in ipairs(b64_cores(b[1])) do
      add(core, "base64 of " .. b[2])
      add((core:gsub("[+/]", { ["+"] = "-", ["/"] = "_" })), "base64url of " .. b[2])
    end
  end
  return list
end

--- The form in which one of the values appears in text, and that value's index; or nil.
-- values: strings (anything shorter than 8 bytes is skipped).
function _M.find(text, values)
  if type(text) ~= "string" then return nil end
  for i, v in ipairs(values) do
    if type(v) == "string" and #v >= 8 then
      for _, f in ipairs(_M.forms(v)) do
        if text:find(f[1], 1, true) then return f[2], i end
      end
    end
  end
  return nil
end

--- The values of an issued-secrets log ("<value>\t<secret|token>\t<client id>" lines, or bare values).
function _M.read_issued(path)
  local out = {}
  local f = io.open(path, "rb")
  if not f then return out end
  for line in f:lines() do
    local v = line:match("^([^\t]*)")
    if v and #v >= 8 then out[#out + 1] = v end
  end
  f:close()
  return out
end

return _M
