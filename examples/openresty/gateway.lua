-- gateway.lua: the handlers of examples/openresty/nginx.conf.
-- One rotor.ngx object per worker (made in init_by_lua, inherited by every worker); tokens live
-- in the shared dict rotor_tokens; the libcurl work runs in the thread pool "rotor".
local rngx = require "rotor.ngx"
local cjson = require "cjson.safe"

local _M = {}

local gw, job

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local function genesys_options()
  return {
    region = env("ROTOR_GENESYS_REGION"),
    base_url = env("ROTOR_GENESYS_URL"),
    token_url = env("ROTOR_GENESYS_TOKEN_URL"),
    cainfo = env("ROTOR_CA"),
  }
end

function _M.init()
  local store = env("ROTOR_STORE", "/etc/rotor/secrets")
  local slot = env("ROTOR_SLOT", "genesys/gateway")
  local err
  gw, err = rngx.new {
    provider = "genesys", options = genesys_options(),
    store_dir = store, slot = slot,
    dict = "rotor_tokens", thread_pool = "rotor",
    check_interval = tonumber(env("ROTOR_CHECK_INTERVAL", "1")),
  }
  if not gw then error("gateway: " .. tostring(err)) end
  -- the rotation: the admin credential (its own slot) regenerates the gateway client's secret
  job = {
    provider = "genesys", options = genesys_options(), store_dir = store,
    slot = slot, admin_slot = env("ROTOR_ADMIN_SLOT"),
    due = { max_age_days = 90 },
  }
end

local function rotate(premature, force)
  if premature then return end
  local plain = {}
  for k, v in pairs(job) do plain[k] = v end
  plain.force = force or nil
  local res, err = rngx.rotate(plain, "rotor")
  if not res then
    if err.kind == "config" then
      ngx.log(ngx.NOTICE, "gateway: rotation skipped: ", tostring(err))
    else
      ngx.log(ngx.ERR, "gateway: rotation of ", job.slot, " failed: ", tostring(err))
    end
    return nil, err
  end
  if res.skipped then
    ngx.log(ngx.INFO, "gateway: rotation of ", job.slot, " not due: ", res.skipped)
  else
    ngx.log(ngx.NOTICE, "gateway: rotated ", job.slot, " to version ", tostring(res.version))
  end
  return res
end

function _M.init_worker()
  local every = tonumber(env("ROTOR_ROTATE_EVERY"))
  -- one worker runs the schedule (the store's slot lock keeps any other rotor out as well)
  if every and every > 0 and ngx.worker.id() == 0 then
    local ok, err = ngx.timer.every(every, rotate)
    if not ok then ngx.log(ngx.ERR, "gateway: cannot schedule the rotation: ", err) end
  end
end

local function worker_header()
  ngx.header["X-Worker"] = tostring(ngx.worker.id()) .. "/" .. tostring(ngx.worker.pid())
end

local function fail(err)
  ngx.status = (err.kind == "config" or err.kind == "store") and 500 or 502
  ngx.say(cjson.encode { error = err.kind, status = err.status, message = err.message })
end

--- The worker's rotor.ngx object (for handlers of your own).
function _M.object()
  return gw
end

function _M.ping()
  worker_header()
  ngx.say('{"pong":true}')
end

function _M.me()
  worker_header()
  local body, err = gw:request("GET", "/api/v2/tokens/me", { op = "get_tokens_me" })
  if not body then return fail(err) end
  local client = type(body) == "table" and body.OAuthClient or {}
  ngx.say(cjson.encode { client_id = client.id, organization = body.organization and body.organization.id })
end

function _M.rotate_now()
  worker_header()
  local res, err = rotate(false, true)
  if not res then return fail(err) end
  ngx.say(cjson.encode(res))
end

return _M
