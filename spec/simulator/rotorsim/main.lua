-- rotorsim.main: the request dispatcher. Routes /<provider>/... to the provider modules and
-- /_sim/... to the control API; counts and logs every provider request; applies faults.
local util = require "rotorsim.util"
local store = require "rotorsim.store"

local _M = {}

local ROUTES = {
  paylocity = "rotorsim.paylocity",
  spreetail = "rotorsim.spreetail",
  genesys = "rotorsim.genesys",
  spapi = "rotorsim.spapi",
  lwa = "rotorsim.spapi",
  sqs = "rotorsim.sqs",
}

function _M.init()
  -- load every module in the master so workers share the compiled code
  require "cjson"
  for _, m in pairs(ROUTES) do require(m) end
  require "rotorsim.control"
  require "rotorsim.faults"
end

-- send a handler's answer: body is a table (JSON), a string, or nil
local function send(status, body, headers)
  ngx.status = status
  if headers then
    for k, v in pairs(headers) do ngx.header[k] = v end
  end
  if body == util.EMPTY_ARRAY then body = {} end
  if type(body) == "table" then
    body = next(body) == nil and "[]" or util.encode(body)
    if not (headers and headers["Content-Type"]) then ngx.header["Content-Type"] = "application/json" end
  end
  if body and body ~= "" then
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  else
    if status ~= 204 and status ~= 304 then ngx.header["Content-Length"] = 0 end
    ngx.send_headers()
  end
  return ngx.exit(ngx.OK)
end
_M.send = send

local logd = store.logd

local function log_request(method, uri, status, fault)
  local S = store.S
  if not S.log_enabled then return end
  local n = logd:incr("log_n", 1, 0)
  logd:set("log:" .. n, util.encode({
    method = method, path = uri, status = status, query = ngx.var.args,
    t = util.iso(store.now()), proto = ngx.var.server_protocol,
    auth = util.auth_scheme(), content_type = ngx.var.content_type, fault = fault,
    conn = tonumber(ngx.var.connection),
  }))
  if n > S.log_max then logd:delete("log:" .. (n - S.log_max)) end
end

function _M.handle()
  local uri = ngx.var.uri
  local prefix, rest = uri:match("^/([^/]+)(.*)$")
  if prefix == "_sim" then
    return require("rotorsim.control").handle(rest)
  end
  local modname = ROUTES[prefix]
  if not modname then
    return send(404, { message = "no simulated provider at " .. uri })
  end
  local S = store.refresh()
  local method = ngx.req.get_method()
  logd:incr("count:" .. uri, 1, 0)
  logd:incr("count:" .. method .. " " .. uri, 1, 0)

  local faults = require "rotorsim.faults"
  local fault = faults.take(uri, method)
  if S.latency > 0 then ngx.sleep(S.latency) end
  local fname
  if fault then
    fname = faults.name(fault)
    if fault.delay then ngx.sleep(fault.delay) end
    if fault.status then
      log_request(method, uri, fault.status, fname)
      return faults.send_status(fault, send)
    end
    if fault.apply == false and (fault.reset or fault.hang) then
      util.body()
      log_request(method, uri, 0, fname)
      if fault.reset then return ngx.exit(444) end
      return faults.hang(S)
    end
  end

  local ok, status, body, headers = pcall(require(modname).handle, rest, method, prefix)
  if not ok then
    ngx.log(ngx.ERR, "rotorsim: ", status)
    status, body, headers = 500, { message = "simulator error: " .. tostring(status) }, nil
  end
  if fault then
    log_request(method, uri, (fault.reset or fault.hang) and 0 or status, fname)
    return faults.apply(fault, S, status, body, headers, send)
  end
  log_request(method, uri, status)
  return send(status, body, headers)
end

return _M
