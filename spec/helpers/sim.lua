-- spec.helpers.sim: start/stop the provider simulator from specs and talk to it with the curl CLI.
--
--   local sim = require "spec.helpers.sim"
--   local s = sim.start()            -- new instance (own dir, port, CA); s.url, s.ca, s.dir
--   s:control("POST", "/seed", { provider = "genesys", admin = true })   --> decoded JSON, status
--   local res = s:request{ method = "POST", path = "/genesys/login/oauth/token",
--                          basic = { id, secret }, form = { grant_type = "client_credentials" } }
--   res.status, res.headers["retry-after"], res.body, res.json
--   s:stop()
--
-- Works under Lua 5.1/LuaJIT and 5.4. Needs curl, openssl and nginx with the lua module.
local cjson = require "cjson.safe"

local _M = {}

local function script_dir()
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) == "@" then
    local d = src:sub(2):match("^(.*)/[^/]*$")
    if d then return d end
  end
  return "spec/helpers"
end

_M.simctl = script_dir() .. "/../simulator/simctl"

local function shq(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.shell_quote = shq

-- run a shell command; returns stdout, exit code
local function run(cmd)
  local p = assert(io.popen(cmd .. "; echo \"__rc=$?\"", "r"))
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.*)__rc=(%d+)%s*$")
  return body or out, tonumber(rc) or -1
end
_M.run = run

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end
_M.read_file, _M.write_file = read_file, write_file

-- a new directory of the specs' own (mode 0700) under $TMPDIR: rotor-<tag>.XXXXXX
local function tmpdir(tag)
  local out, rc = run("mktemp -d \"${TMPDIR:-/tmp}/rotor-" .. (tag or "sim") .. ".XXXXXX\"")
  assert(rc == 0, "mktemp failed")
  return (out:gsub("%s+$", ""))
end
_M.tmpdir = tmpdir

-- RFC 6749 App. B: form-urlencode (spaces as '+')
local function form_encode(s)
  return (tostring(s):gsub("[^A-Za-z0-9%-%._~ ]", function(c)
    return string.format("%%%02X", c:byte())
  end):gsub(" ", "+"))
end
_M.form_encode = form_encode

local function b64(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = alphabet:sub(c1 + 1, c1 + 1) .. alphabet:sub(c2 + 1, c2 + 1)
      .. (b and alphabet:sub(c3 + 1, c3 + 1) or "=") .. (c and alphabet:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end
_M.b64 = b64

-- Basic header value, RFC 6749 App. B encoding unless raw
function _M.basic(id, secret, raw)
  if raw then return "Basic " .. b64(id .. ":" .. secret) end
  return "Basic " .. b64(form_encode(id) .. ":" .. form_encode(secret))
end

local function encode_form(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = form_encode(k) .. "=" .. form_encode(t[k]) end
  return table.concat(parts, "&")
end
_M.encode_form = encode_form

-- curl config-file quoting
local function cq(s)
  local e = tostring(s):gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("\n", "\\n"):gsub("\r", "\\r"):gsub("\t", "\\t")
  return '"' .. e .. '"'
end

local Sim = {}
Sim.__index = Sim

-- start a new simulator instance; opts.settings = { ... } applied once it answers; opts.env =
-- { NAME = value } for the server (e.g. ROTOR_SECRETS_LOG); opts.dir to choose the directory
function _M.start(opts)
  opts = opts or {}
  local dir = opts.dir or tmpdir()
  local prefix = ""
  for k, v in pairs(opts.env or {}) do prefix = prefix .. k .. "=" .. shq(v) .. " " end
  local out, rc = run(prefix .. shq(_M.simctl) .. " start " .. shq(dir) .. " 2>&1")
  if rc ~= 0 then error("simulator did not start (" .. rc .. "): " .. out) end
  local env = read_file(dir .. "/env") or ""
  local self = setmetatable({ dir = dir, owns_dir = opts.dir == nil, seq = 0 }, Sim)
  self.url = env:match("ROTOR_SIM_URL=(%S+)")
  self.ca = env:match("ROTOR_SIM_CA=(%S+)")
  assert(self.url and self.ca, "simulator wrote no env file in " .. dir)
  -- readiness check
  local ready = false
  for _ = 1, 50 do
    local res = self:request{ path = "/_sim/health" }
    if res and res.status == 200 then ready = true break end
    run("sleep 0.05")
  end
  if not ready then self:stop() error("simulator at " .. self.url .. " does not answer") end
  if opts.settings then self:settings(opts.settings) end
  return self
end

-- an instance started elsewhere (simctl start; ROTOR_SIM_URL / ROTOR_SIM_CA in the environment)
function _M.from_env()
  local url, ca = os.getenv("ROTOR_SIM_URL"), os.getenv("ROTOR_SIM_CA")
  if not url or not ca then return nil, "ROTOR_SIM_URL / ROTOR_SIM_CA not set" end
  return setmetatable({ url = url, ca = ca, dir = tmpdir(), owns_dir = true, seq = 0, external = true }, Sim)
end

function Sim:stop()
  if not self.external and self.dir then run(shq(_M.simctl) .. " stop " .. shq(self.dir) .. " >/dev/null 2>&1") end
  if self.owns_dir and self.dir and not os.getenv("ROTOR_SIM_KEEP") then
    run("rm -rf " .. shq(self.dir))
  end
  self.dir = nil
end

-- one HTTP request with the curl CLI. o: method, path (appended to url) or url, headers (table
-- name -> value, or array of "Name: value"), body (string), json (table), form (table,
-- urlencoded), multipart (table, literal values), basic = {id, secret[, raw]}, bearer,
-- http1 (bool), timeout (s, default 30), sigv4 ("aws:amz:REGION:sqs") with user ("AKID:SECRET").
-- Returns res { status, headers (lower-case names), body, json }, or nil, err, curl_exit_code.
function Sim:request(o)
  self.seq = self.seq + 1
  local base = self.dir .. "/req" .. self.seq
  local cfg = {
    "silent", "show-error", "cacert = " .. cq(self.ca),
    "request = " .. cq(o.method or "GET"),
    "url = " .. cq(o.url or (self.url .. (o.path or "/"))),
    "dump-header = " .. cq(base .. ".hdr"), "output = " .. cq(base .. ".body"),
    "write-out = " .. cq("%{http_code}"),
    "max-time = " .. tostring(o.timeout or 30),
  }
  if o.http1 then cfg[#cfg + 1] = "http1.1" end
  if o.sigv4 then cfg[#cfg + 1] = "aws-sigv4 = " .. cq(o.sigv4) end
  if o.user then cfg[#cfg + 1] = "user = " .. cq(o.user) end
  local headers = {}
  if o.headers then
    if o.headers[1] then
      for _, h in ipairs(o.headers) do headers[#headers + 1] = h end
    else
      for k, v in pairs(o.headers) do headers[#headers + 1] = k .. ": " .. v end
    end
  end
  local body = o.body
  if o.json ~= nil then
    body = cjson.encode(o.json)
    headers[#headers + 1] = "Content-Type: application/json"
  elseif o.form then
    body = encode_form(o.form)
    headers[#headers + 1] = "Content-Type: application/x-www-form-urlencoded"
  end
  if o.basic then headers[#headers + 1] = "Authorization: " .. _M.basic(o.basic[1], o.basic[2], o.basic[3]) end
  if o.bearer then headers[#headers + 1] = "Authorization: Bearer " .. o.bearer end
  for _, h in ipairs(headers) do cfg[#cfg + 1] = "header = " .. cq(h) end
  if o.multipart then
    local keys = {}
    for k in pairs(o.multipart) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do cfg[#cfg + 1] = "form-string = " .. cq(k .. "=" .. o.multipart[k]) end
  elseif body ~= nil then
    write_file(base .. ".in", body)
    cfg[#cfg + 1] = "data-binary = " .. cq("@" .. base .. ".in")
  end
  write_file(base .. ".cfg", table.concat(cfg, "\n") .. "\n")
  local out, rc = run("curl -K " .. shq(base .. ".cfg") .. " 2>" .. shq(base .. ".err"))
  local hdr = read_file(base .. ".hdr") or ""
  local rbody = read_file(base .. ".body") or ""
  local err = read_file(base .. ".err") or ""
  os.remove(base .. ".cfg"); os.remove(base .. ".hdr"); os.remove(base .. ".body")
  os.remove(base .. ".err"); os.remove(base .. ".in")
  if rc ~= 0 then return nil, "curl exit " .. rc .. ": " .. err:gsub("%s+$", ""), rc end
  local res = { status = tonumber(out:match("(%d+)%s*$")), headers = {}, body = rbody }
  -- the last header block (after any 100 Continue)
  local block = hdr:match(".*\r?\n\r?\n(HTTP/.-)$") or hdr
  for line in block:gmatch("[^\r\n]+") do
    local k, v = line:match("^([^:%s]+):%s*(.-)%s*$")
    if k then res.headers[k:lower()] = v end
  end
  if rbody ~= "" then res.json = cjson.decode(rbody) end
  return res
end

-- control API: path "/seed" or "/_sim/seed"; returns decoded JSON, status
function Sim:control(method, path, body)
  if path:sub(1, 6) ~= "/_sim/" then path = "/_sim" .. path end
  local res, err = self:request{ method = method, path = path, json = body }
  if not res then error("simulator control " .. method .. " " .. path .. ": " .. err) end
  if res.status >= 300 then
    error("simulator control " .. method .. " " .. path .. ": " .. res.status .. " " .. res.body)
  end
  return res.json, res.status
end

function Sim:reset(keep_settings) return self:control("POST", "/reset", { keep_settings = keep_settings }) end
function Sim:seed(t) return (self:control("POST", "/seed", t)) end
function Sim:settings(t)
  if t == nil then return (self:control("GET", "/settings")) end
  return (self:control("POST", "/settings", t))
end
function Sim:fault(t) return (self:control("POST", "/faults", t)) end
function Sim:advance(seconds) return (self:control("POST", "/clock", { advance = seconds })) end
function Sim:clock() return (self:control("GET", "/clock")) end
function Sim:secrets() return (self:control("GET", "/secrets")).secrets end
function Sim:log() return (self:control("GET", "/log")) end
function Sim:counters() return (self:control("GET", "/counters")) end
function Sim:sqs() return (self:control("GET", "/sqs")) end

-- one signed SQS JSON 1.0 call: target "ReceiveMessage" | "DeleteMessage" | ...; body a table.
-- o.access_key / o.secret_key override the simulated account's keys; o.headers adds headers.
function Sim:sqs_call(target, body, o)
  o = o or {}
  local acct = self.sqs_account or self:sqs()
  self.sqs_account = acct
  local headers = { "Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS." .. target }
  for _, h in ipairs(o.headers or {}) do headers[#headers + 1] = h end
  return self:request{
    method = "POST", url = acct.endpoint .. "/", headers = headers, body = cjson.encode(body),
    sigv4 = o.sigv4 or ("aws:amz:" .. acct.region .. ":sqs"),
    user = (o.access_key or acct.access_key) .. ":" .. (o.secret_key or acct.secret_key),
    timeout = o.timeout,
  }
end

-- env for child processes / scripts
function Sim:env()
  return { ROTOR_SIM_URL = self.url, ROTOR_SIM_CA = self.ca }
end

return _M
