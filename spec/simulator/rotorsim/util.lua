-- rotorsim.util: JSON, time, randomness, hashing (libcrypto via FFI) and request parsing helpers.
local ffi = require "ffi"
local cjson = require "cjson.safe"

local _M = {}

ffi.cdef [[
int RAND_bytes(unsigned char *buf, int num);
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
unsigned char *HMAC(const void *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
const void *EVP_sha256(void);
]]

local crypto = ffi.load("libcrypto.so.3")
local buf32 = ffi.new("unsigned char[64]")
local mdlen = ffi.new("unsigned int[1]")

function _M.random_bytes(n)
  local b = ffi.new("unsigned char[?]", n)
  if crypto.RAND_bytes(b, n) ~= 1 then error("RAND_bytes failed") end
  return ffi.string(b, n)
end

local function tohex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
_M.tohex = tohex

function _M.random_hex(n) return tohex(_M.random_bytes(n)) end

function _M.sha256(data)
  crypto.SHA256(data, #data, buf32)
  return ffi.string(buf32, 32)
end

function _M.sha256_hex(data) return tohex(_M.sha256(data)) end

function _M.hmac_sha256(key, data)
  crypto.HMAC(crypto.EVP_sha256(), key, #key, data, #data, buf32, mdlen)
  return ffi.string(buf32, mdlen[0])
end

function _M.b64(s) return ngx.encode_base64(s) end

function _M.b64url(s)
  return (ngx.encode_base64(s):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

function _M.uuid()
  local h = _M.random_hex(16)
  local v = string.format("%x", 8 + (tonumber(h:sub(17, 17), 16) % 4))
  return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-4" .. h:sub(14, 16) .. "-" .. v .. h:sub(18, 20)
    .. "-" .. h:sub(21, 32)
end

local ALNUM_UP = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
function _M.random_upper(n)
  local b = _M.random_bytes(n)
  local out = {}
  for i = 1, n do
    local k = (b:byte(i) % 32) + 1
    out[i] = ALNUM_UP:sub(k, k)
  end
  return table.concat(out)
end

-- JSON ---------------------------------------------------------------------------------------
-- Debian's lua-cjson has no empty-array marker: EMPTY_ARRAY stands for [] and is replaced after
-- encoding.
_M.EMPTY_ARRAY = "\0__rotorsim_empty_array__"
_M.null = cjson.null

function _M.array(t)
  if t == nil or next(t) == nil then return _M.EMPTY_ARRAY end
  return t
end

function _M.encode(v)
  local s = cjson.encode(v)
  if s and s:find("__rotorsim_empty_array__", 1, true) then
    s = s:gsub('"\\u0000__rotorsim_empty_array__"', "[]")
  end
  return s
end

_M.decode = cjson.decode

-- time ---------------------------------------------------------------------------------------
local function days_from_civil(y, m, d)
  y = (m <= 2) and (y - 1) or y
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- ISO-8601 ("2028-06-21T00:00:00.000Z", "...+02:00", "2028-06-21") -> epoch seconds, or nil
function _M.parse_iso(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  local h, mi, se, frac, tz = 0, 0, 0, nil, nil
  if rest ~= "" then
    local hh, mm, ss, tail = rest:match("^[T ](%d%d):(%d%d):(%d%d)(.*)$")
    if not hh then return nil end
    h, mi, se = tonumber(hh), tonumber(mm), tonumber(ss)
    frac, tz = tail:match("^(%.?%d*)(.*)$")
    if frac ~= "" and not frac:match("^%.%d+$") then return nil end
  end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + h * 3600 + mi * 60 + se
  if frac and frac ~= "" then t = t + tonumber("0" .. frac) end
  if tz and tz ~= "" and tz ~= "Z" then
    local sign, th, tm = tz:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    local off = tonumber(th) * 3600 + tonumber(tm) * 60
    t = (sign == "+") and (t - off) or (t + off)
  end
  return t
end

function _M.iso(t)
  t = t or ngx.now()
  local ms = math.floor((t - math.floor(t)) * 1000 + 0.5)
  if ms >= 1000 then ms = 999 end
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%03dZ", ms)
end

-- a timestamp given as ISO string or epoch number -> epoch number (nil stays nil)
function _M.to_epoch(v)
  if v == nil or v == cjson.null then return nil end
  if type(v) == "number" then return v end
  return _M.parse_iso(v)
end

-- requests -----------------------------------------------------------------------------------
function _M.body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if not data then
    local f = ngx.req.get_body_file()
    if f then
      local fh = io.open(f, "rb")
      if fh then data = fh:read("*a"); fh:close() end
    end
  end
  return data or ""
end

function _M.content_type()
  local ct = ngx.var.content_type or ""
  return ct:lower()
end

-- application/x-www-form-urlencoded -> table (first value wins for repeated names)
function _M.parse_form(body)
  local args = ngx.decode_args(body or "", 100)
  local out = {}
  for k, v in pairs(args) do
    if type(v) == "table" then v = v[1] end
    if v == true then v = "" end
    out[k] = v
  end
  return out
end

-- multipart/form-data -> table of field name -> value, or nil, err
function _M.parse_multipart(body, ct)
  local boundary = ct:match('boundary="([^"]+)"') or ct:match("boundary=([^;%s]+)")
  if not boundary then return nil, "no boundary" end
  local out = {}
  local delim = "--" .. boundary
  local pos = body:find(delim, 1, true)
  if not pos then return nil, "no parts" end
  pos = pos + #delim
  while true do
    if body:sub(pos, pos + 1) == "--" then break end
    if body:sub(pos, pos + 1) ~= "\r\n" then return nil, "bad part" end
    pos = pos + 2
    local hend = body:find("\r\n\r\n", pos, true)
    if not hend then return nil, "bad part headers" end
    local headers = body:sub(pos, hend - 1)
    local nxt = body:find("\r\n" .. delim, hend + 4, true)
    if not nxt then return nil, "unterminated part" end
    local value = body:sub(hend + 4, nxt - 1)
    local name = headers:match('[Nn]ame="([^"]*)"')
    if name then out[name] = value end
    pos = nxt + 2 + #delim
  end
  return out
end

-- Authorization: Basic -> id, secret (RFC 6749 App. B: each part form-urlencoded), raw_id,
-- raw_secret (the parts as sent, not decoded); or nil
function _M.basic_auth()
  local h = ngx.var.http_authorization
  if not h then return nil end
  local b = h:match("^%s*[Bb][Aa][Ss][Ii][Cc]%s+(%S+)%s*$")
  if not b then return nil end
  local dec = ngx.decode_base64(b)
  if not dec then return nil end
  local id, secret = dec:match("^([^:]*):(.*)$")
  if not id then return nil end
  local raw_id, raw_secret = id, secret
  id, secret = ngx.unescape_uri((id:gsub("%+", " "))), ngx.unescape_uri((secret:gsub("%+", " ")))
  return id, secret, raw_id, raw_secret
end

function _M.bearer()
  local h = ngx.var.http_authorization
  if not h then return nil end
  return h:match("^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
end

function _M.auth_scheme()
  local h = ngx.var.http_authorization
  if not h then return nil end
  return h:match("^%s*(%S+)")
end

return _M
