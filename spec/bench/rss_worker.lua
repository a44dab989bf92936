-- spec/bench/rss_worker.lua: the child of the peak-RSS benchmark (spec/bench/run.lua).
--
--   build/rotor spec/bench/rss_worker.lua
--
-- Environment: ROTOR_SIM_URL, ROTOR_SIM_CA, ROTOR_BENCH_CLIENT_ID, ROTOR_BENCH_SECRET_FILE (a file
-- holding the Genesys client secret, so it is never on a command line), ROTOR_BENCH_REQUESTS
-- (10000), ROTOR_BENCH_CONCURRENCY (32), ROTOR_BENCH_HTTP2 ("1" | "0").
-- Does that many token-authenticated GETs through rotor.parallel, each task asking rotor.oauth
-- for the token as a client would (cache hit after the first), then prints one line:
--   ok=N failed=N vmhwm_kb=N vmrss_kb=N
-- VmHWM is read from /proc/self/status after the last request: the peak resident set.
local rotor = require "rotor"
local http = require "rotor.http"
local oauth = require "rotor.oauth"

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default ~= nil then return default end
    io.stderr:write("rss_worker: ", name, " is not set\n")
    os.exit(2)
  end
  return v
end

local base = env("ROTOR_SIM_URL")
local ca = env("ROTOR_SIM_CA")
local n = tonumber(env("ROTOR_BENCH_REQUESTS", "10000"))
local conc = tonumber(env("ROTOR_BENCH_CONCURRENCY", "32"))
local h2 = env("ROTOR_BENCH_HTTP2", "1") == "1"

local f = assert(io.open(env("ROTOR_BENCH_SECRET_FILE"), "rb"))
local secret = rotor.secret((f:read("a"):gsub("%s+$", "")))
f:close()

local spec = {
  url = base .. "/genesys/login/oauth/token", style = "basic", provider = "genesys",
  client_id = env("ROTOR_BENCH_CLIENT_ID"), client_secret = secret, cainfo = ca,
}
local url = base .. "/genesys/api/v2/tokens/me"

local items = {}
for i = 1, n do items[i] = i end

local ok, failed = 0, 0
rotor.parallel(items, function()
  local token, err = oauth.token(spec)
  if not token then
    failed = failed + 1
    return nil, err
  end
  local res = http.request({
    url = url, cainfo = ca, http2 = h2,
    headers = { { "Authorization", token, prefix = "Bearer " } },
  }, { provider = "genesys", op = "bench" })
  if res and res.status == 200 then ok = ok + 1 else failed = failed + 1 end
  return true
end, { concurrency = conc })

local function status_kb(field)
  local sf = io.open("/proc/self/status", "r")
  if not sf then return -1 end
  local s = sf:read("a")
  sf:close()
  return tonumber(s:match(field .. ":%s*(%d+)%s*kB")) or -1
end

io.write(string.format("ok=%d failed=%d vmhwm_kb=%d vmrss_kb=%d\n", ok, failed,
  status_kb("VmHWM"), status_kb("VmRSS")))
