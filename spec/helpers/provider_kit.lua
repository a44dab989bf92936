-- Shared helpers of the provider specs (spec/providers_*_spec.lua): the simulator, its control
-- API, faults, counters, the simulated clock, and the "no secret in this error" check.
local core = require "rotor.core"
local http = require "rotor.http"
local json = require "rotor.json"

local _M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Fallback when spec/helpers/sim.lua is not there: simctl in a temporary directory.
local function start_simctl()
  local dir = os.tmpname()
  os.remove(dir)
  local p = io.popen("spec/simulator/simctl start " .. shell_quote(dir) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  local url = out:match("(https://127%.0%.0%.1:%d+)")
  assert(url, "simctl start failed: " .. out)
  local s = { url = url, ca = dir .. "/ca.pem", dir = dir }
  function s.stop()
    os.execute("spec/simulator/simctl stop " .. shell_quote(dir) .. " >/dev/null 2>&1")
    os.execute("rm -rf " .. shell_quote(dir))
  end
  function s.control(_, method, path, body)
    local req = { url = url .. "/_sim" .. path, method = method, cainfo = s.ca, timeout = 30,
                  headers = { { "Content-Type", "application/json" } } }
    if body ~= nil then req.body = json.encode(body) end
    local res, err = http.request(req, { retries = 0, max_wait = 0 })
    assert(res, tostring(err))
    assert(res.status == 200, "control " .. method .. " " .. path .. ": " .. res.status .. " " .. res.body)
    return json.decode(res.body)
  end
  return s
end

--- Start a simulator (one per spec file).
function _M.start()
  local ok, sim = pcall(require, "spec.helpers.sim")
  if ok and type(sim) == "table" and sim.start then
    return sim.start()
  end
  return start_simctl()
end

function _M.stop(s)
  if s then s:stop() end
end

--- A control call; path relative to /_sim (e.g. "/reset").
function _M.ctl(s, method, path, body)
  return s:control(method, path, body)
end

--- Reset the simulator and rotor's process-wide token cache and pacing buckets.
function _M.reset(s, settings)
  _M.ctl(s, "POST", "/reset")
  if settings then _M.ctl(s, "POST", "/settings", settings) end
  core.token_clear()
  http.reset_pacing()
end

function _M.fault(s, f)
  return _M.ctl(s, "POST", "/faults", f)
end

function _M.advance(s, seconds)
  return _M.ctl(s, "POST", "/clock", { advance = seconds })
end

--- How many requests reached path (the full URI, e.g. "/paylocity/api/v2/credentials/secrets").
function _M.count(s, path)
  local c = _M.ctl(s, "GET", "/counters")
  return type(c) == "table" and c[path] or 0
end

function _M.log(s)
  return _M.ctl(s, "GET", "/log")
end

--- Every secret the simulator ever issued or was seeded with.
function _M.secrets(s)
  local v = _M.ctl(s, "GET", "/secrets")
  return v.secrets or {}
end

local function plain(x)
  if core.is_secret(x) then return x:reveal() end
  return x
end

--- Assert that none of the secrets (strings or rotor.secret values), nor any secret the
-- simulator knows, appears in err (its tostring, message and detail).
function _M.assert_no_secret(s, err, ...)
  assert(err ~= nil, "an error expected")
  local texts = { tostring(err) }
  if type(err) == "table" then
    for _, k in ipairs({ "message", "detail" }) do
      if type(err[k]) == "string" then texts[#texts + 1] = err[k] end
    end
  end
  local all = { ... }
  if s then for _, x in ipairs(_M.secrets(s)) do all[#all + 1] = x end end
  for _, sec in ipairs(all) do
    sec = plain(sec)
    if type(sec) == "string" and #sec >= 6 then
      for _, t in ipairs(texts) do
        assert(not t:find(sec, 1, true), "a secret leaked into an error: " .. texts[1]:gsub(sec, "<LEAK>"))
        -- and no long piece of it (a truncated body must not leak half a secret either)
        local half = sec:sub(1, math.floor(#sec / 2))
        if #half >= 8 then
          assert(not t:find(half, 1, true), "part of a secret leaked into an error")
        end
      end
    end
  end
end

--- Options merging: base plus extra (extra wins; use false-y sentinel _M.NIL to remove).
_M.NIL = setmetatable({}, { __tostring = function() return "NIL" end })
function _M.merge(base, extra)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra or {}) do
    if v == _M.NIL then o[k] = nil else o[k] = v end
  end
  return o
end

--- Elapsed seconds of fn().
function _M.timed(fn)
  local t0 = core.now()
  local a, b, c = fn()
  return core.now() - t0, a, b, c
end

return _M
