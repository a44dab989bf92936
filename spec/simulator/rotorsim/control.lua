-- rotorsim.control: the /_sim/ control API (JSON in, JSON out). Not logged, not counted.
local util = require "rotorsim.util"
local store = require "rotorsim.store"
local faults = require "rotorsim.faults"

local _M = {}

local SEEDERS = {
  paylocity = "rotorsim.paylocity",
  spreetail = "rotorsim.spreetail",
  genesys = "rotorsim.genesys",
  spapi = "rotorsim.spapi",
}

local function send(status, body)
  return require("rotorsim.main").send(status, body)
end

local function bad(msg) return send(400, { error = msg }) end

local function json_body()
  local raw = util.body()
  if raw == "" then return {} end
  local v, err = util.decode(raw)
  if v == nil then return nil, "body is not JSON: " .. tostring(err) end
  return v
end

local function clock_info()
  local off = store.sim:get("clock_offset") or 0
  local now = store.now()
  return { now = now, iso = util.iso(now), offset = off }
end

local function seed_one(t)
  if type(t) ~= "table" then return nil, "seed must be an object" end
  local m = SEEDERS[t.provider]
  if not m then return nil, "seed.provider must be one of paylocity, spreetail, genesys, spapi" end
  return require(m).seed(t)
end

local H = {}

H["GET /health"] = function() return 200, { ok = true } end

H["POST /reset"] = function(b)
  store.reset(b.keep_settings)
  return 200, { ok = true }
end

H["POST /seed"] = function(b)
  store.refresh()
  if b[1] ~= nil then
    local out = {}
    for i, t in ipairs(b) do
      local rec, err = seed_one(t)
      if not rec then return 400, { error = "seed[" .. i .. "]: " .. err } end
      out[i] = rec
    end
    return 200, out
  end
  local rec, err = seed_one(b)
  if not rec then return 400, { error = err } end
  return 200, rec
end

H["GET /secrets"] = function()
  local details = store.secrets()
  local list = {}
  for i, d in ipairs(details) do list[i] = d.secret end
  return 200, { secrets = util.array(list), details = util.array(details) }
end

H["GET /log"] = function()
  local d = store.logd
  local out = {}
  local n = d:get("log_n") or 0
  local first = math.max((d:get("log_start") or 0) + 1, n - store.refresh().log_max + 1, 1)
  for i = first, n do
    local v = d:get("log:" .. i)
    if v then out[#out + 1] = util.decode(v) end
  end
  return 200, util.array(out)
end

H["DELETE /log"] = function()
  store.logd:set("log_start", store.logd:get("log_n") or 0)
  return 200, { ok = true }
end

H["GET /counters"] = function()
  local out = {}
  local d = store.logd
  for _, k in ipairs(d:get_keys(0)) do
    if k:sub(1, 6) == "count:" then out[k:sub(7)] = d:get(k) end
  end
  if next(out) == nil then return 200, "{}" end
  return 200, out
end

H["DELETE /counters"] = function()
  local d = store.logd
  for _, k in ipairs(d:get_keys(0)) do
    if k:sub(1, 6) == "count:" then d:delete(k) end
  end
  return 200, { ok = true }
end

H["POST /faults"] = function(b)
  local list = (b[1] ~= nil) and b or { b }
  local out = {}
  for i, f in ipairs(list) do
    local ok, err = faults.validate(f)
    if not ok then return 400, { error = err } end
    out[i] = faults.add(f)
  end
  return 200, (b[1] ~= nil) and out or out[1]
end

H["GET /faults"] = function() return 200, util.array(faults.list()) end

H["DELETE /faults"] = function()
  faults.clear()
  return 200, { ok = true }
end

H["GET /clock"] = function() return 200, clock_info() end

H["POST /clock"] = function(b)
  if b.advance ~= nil then
    if type(b.advance) ~= "number" then return 400, { error = "clock.advance must be seconds" } end
    store.advance(b.advance)
  elseif b.set ~= nil then
    local t = util.to_epoch(b.set)
    if not t then return 400, { error = "clock.set must be epoch seconds or ISO-8601" } end
    store.sim:set("clock_offset", t - ngx.now())
  elseif b.reset then
    store.sim:set("clock_offset", 0)
  else
    return 400, { error = "clock needs advance, set or reset" }
  end
  return 200, clock_info()
end

H["GET /settings"] = function() return 200, store.refresh() end

H["POST /settings"] = function(b)
  local s, err = store.set_settings(b)
  if not s then return 400, { error = err } end
  return 200, s
end

H["GET /state"] = function()
  local out = {}
  for k, v in pairs(store.scan("")) do
    if k:sub(1, 2) ~= "__" and k:sub(1, 6) ~= "fault:" and k ~= "settings" then out[k] = v end
  end
  if next(out) == nil then return 200, "{}" end
  return 200, out
end

H["GET /sqs"] = function()
  store.refresh()
  return 200, require("rotorsim.sqs").account_info()
end

H["POST /sqs/send"] = function(b)
  store.refresh()
  local rec, err = require("rotorsim.sqs").send_message(b.queue, b.body, b.delay)
  if not rec then return 400, { error = err } end
  return 200, rec
end

-- a webhook receiver (Slack-compatible JSON), so notifications can be checked end to end
H["POST /webhook"] = function(b)
  if type(b.text) ~= "string" then return 400, { ok = false, error = "missing_text" } end
  local n = store.sim:incr("webhook_n", 1, 0)
  store.sim:set("webhook:" .. n, util.encode(b))
  return 200, { ok = true }
end

H["GET /webhooks"] = function()
  local out = {}
  for i = 1, store.sim:get("webhook_n") or 0 do
    local v = store.sim:get("webhook:" .. i)
    if v then out[#out + 1] = util.decode(v) end
  end
  return 200, util.array(out)
end

function _M.handle(rest)
  local method = ngx.req.get_method()
  local h = H[method .. " " .. rest]
  if not h then return send(404, { error = "no control endpoint " .. method .. " /_sim" .. rest }) end
  local b, err = json_body()
  if not b then return bad(err) end
  if type(b) ~= "table" then return bad("body must be a JSON object") end
  local ok, status, body = pcall(h, b)
  if not ok then
    ngx.log(ngx.ERR, "rotorsim control: ", status)
    return send(500, { error = tostring(status) })
  end
  return send(status, body)
end

return _M
