-- rotorsim.faults: injected faults for the next N requests to a path.
-- A fault is { path, count, method?, issued?, status?, retry_after?, body?, echo?, delay?, reset?,
--              hang?, apply?, truncate?, cut?, malformed?, oversize? } (see spec/simulator/README.md).
local util = require "rotorsim.util"
local store = require "rotorsim.store"

local _M = {}

local sim = store.sim

local KINDS = { "echo", "status", "reset", "hang", "truncate", "cut", "malformed", "oversize", "delay" }

function _M.name(f)
  for _, k in ipairs(KINDS) do
    if f[k] then return k end
  end
  return "none"
end

function _M.validate(f)
  if type(f) ~= "table" then return nil, "fault must be an object" end
  if type(f.path) ~= "string" or f.path:sub(1, 1) ~= "/" then
    return nil, "fault.path must be an absolute path such as /genesys/api/v2/oauth/clients"
  end
  if f.count ~= nil and (type(f.count) ~= "number" or f.count < 1) then
    return nil, "fault.count must be a positive number"
  end
  if f.status ~= nil and (type(f.status) ~= "number" or f.status < 100 or f.status > 599) then
    return nil, "fault.status must be an HTTP status"
  end
  if f.delay ~= nil and (type(f.delay) ~= "number" or f.delay < 0) then
    return nil, "fault.delay must be seconds"
  end
  if _M.name(f) == "none" then
    return nil, "fault needs one of status, echo, delay, reset, hang, truncate, cut, malformed, oversize"
  end
  return true
end

-- What a request carries that could be a credential: the Basic header's parts (decoded and as
-- sent), the bearer token, and every string field of a form, multipart or JSON body.
local function carried()
  local out = {}
  local id, secret, raw_id, raw_secret = util.basic_auth()
  for _, v in ipairs { id or false, secret or false, raw_id or false, raw_secret or false, util.bearer() or false,
                       ngx.var.http_x_amz_access_token or false } do
    if v then out[#out + 1] = v end
  end
  local body = util.body()
  local ct = util.content_type()
  local fields
  if ct:find("application/x-www-form-urlencoded", 1, true) then
    fields = util.parse_form(body)
  elseif ct:find("multipart/form-data", 1, true) then
    fields = util.parse_multipart(body, ngx.var.content_type or "")
  elseif ct:find("json", 1, true) then
    local ok, v = pcall(util.decode, body)
    fields = ok and type(v) == "table" and v or nil
  end
  for _, v in pairs(fields or {}) do
    if type(v) == "string" and v ~= "" then out[#out + 1] = v end
  end
  return out, body
end

-- true when the request carries a secret the simulator issued (not a seeded one): the `issued`
-- filter, for a provider that refuses freshly minted secrets
local function carries_issued()
  local have = {}
  for _, v in ipairs((carried())) do have[v] = true end
  for _, rec in ipairs(store.secrets()) do
    if rec.source == "issued" and have[rec.secret] then return true end
  end
  return false
end

-- queue a fault (appends to the path's queue)
function _M.add(f)
  f.count = f.count or 1
  if f.echo and not f.status then f.status = 400 end
  f.left = f.count
  return store.locked(function()
    local key = "fault:" .. f.path
    local q = store.get(key) or {}
    q[#q + 1] = f
    store.put(key, q)
    return f
  end)
end

function _M.list()
  local out = {}
  for _, q in pairs(store.scan("fault:")) do
    for _, f in ipairs(q) do out[#out + 1] = f end
  end
  return out
end

function _M.clear()
  store.locked(function()
    for k in pairs(store.scan("fault:")) do sim:delete(k) end
  end)
end

-- the fault to apply to this request (consumes one use), or nil
function _M.take(uri, method)
  local key = "fault:" .. uri
  if not sim:get(key) then return nil end
  -- the issued filter reads the request: decided before the lock is taken
  local issued
  for _, f in ipairs(store.get(key) or {}) do
    if f.issued then issued = carries_issued() break end
  end
  return store.locked(function()
    local q = store.get(key)
    if not q then return nil end
    for i, f in ipairs(q) do
      if (f.method == nil or f.method:upper() == method) and (not f.issued or issued) then
        f.left = f.left - 1
        if f.left <= 0 then table.remove(q, i) end
        if #q == 0 then sim:delete(key) else store.put(key, q) end
        return f
      end
    end
    return nil
  end)
end

-- the fault replaces the answer with a status (the request is not processed)
function _M.send_status(f, send)
  util.body()
  local headers = {}
  if f.retry_after then headers["Retry-After"] = tostring(f.retry_after) end
  if f.headers then for k, v in pairs(f.headers) do headers[k] = v end end
  local body = f.body
  if f.echo then
    -- a provider that quotes the request back: the body as sent, the Authorization header, every
    -- credential-like value decoded, and the same values JSON-escaped ("/" as "\/")
    local values, raw = carried()
    local esc = {}
    for i, v in ipairs(values) do esc[i] = (v:gsub("\\", "\\\\"):gsub('"', '\\"'):gsub("/", "\\/")) end
    local text = "cannot process the request: " .. raw .. " (Authorization: "
      .. tostring(ngx.var.http_authorization) .. "; x-amz-access-token: "
      .. tostring(ngx.var.http_x_amz_access_token) .. "; fields: " .. table.concat(values, " ")
      .. '; as JSON: {"values":["' .. table.concat(esc, '","') .. '"]})'
    body = { error = "invalid_request", error_description = text, message = text, code = "bad.request",
             status = f.status }
  elseif body == nil then
    body = { message = "simulated fault", status = f.status }
    if f.status == 429 then body.message = "Too many requests (simulated)" end
  end
  return send(f.status, body, headers)
end

function _M.hang(S)
  ngx.on_abort(function() ngx.exit(499) end)
  ngx.sleep(S.hang_seconds)
  return ngx.exit(444)
end

-- after the request was processed: alter or withhold its answer
function _M.apply(f, S, status, body, headers, send)
  if f.reset then return ngx.exit(444) end
  if f.hang then return _M.hang(S) end
  if type(body) == "table" then body = util.encode(body) end
  body = body or ""
  headers = headers or {}
  if not headers["Content-Type"] then headers["Content-Type"] = "application/json" end
  if f.truncate then
    -- a complete HTTP response whose JSON body stops half way
    return send(status, body:sub(1, math.floor(#body / 2)), headers)
  elseif f.malformed then
    return send(status, '{"malformed": <html>simulated bad gateway</html>', headers)
  elseif f.oversize then
    local pad = string.rep("x", S.oversize_bytes)
    return send(status, '{"padding":"' .. pad .. '","body":' .. (body ~= "" and body or "null") .. "}",
      headers)
  elseif f.cut then
    -- Content-Length announces the whole body, half is sent, the connection is closed
    ngx.status = status
    for k, v in pairs(headers) do ngx.header[k] = v end
    ngx.header["Content-Length"] = #body + 16
    ngx.print(body:sub(1, math.floor(#body / 2)))
    ngx.flush(true)
    return ngx.exit(444)
  end
  return send(status, body, headers)
end

return _M
