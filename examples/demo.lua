-- The demo behind `make demo` (make demo runs it with ./build/rotor): starts the provider
-- simulator, seeds one credential per provider, writes the ROTOR_* environment the examples read
-- (into a 0600 file, never onto a command line), runs every example, prints `rotor status` and
-- stops the simulator. The examples are the very scripts one runs against production.
package.path = "./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path
local core = require "rotor.core"
local sim = require "spec.helpers.sim"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local s = sim.start()
local ok, err = pcall(function()
  local function seed(t)
    local r, status = s:control("POST", "/seed", t)
    assert(type(r) == "table" and (status == nil or status < 300), "seeding " .. t.provider .. " failed")
    return r
  end
  local secret = function() return core.random_hex(24) end
  local gadmin = seed { provider = "genesys", admin = true, name = "rotor admin", client_secret = secret() }
  local greport = seed { provider = "genesys", name = "reporting", client_secret = secret(),
                         roleDivisions = { { roleId = "reporting-role", divisionId = "home" } } }
  for i = 1, 3 do seed { provider = "genesys", name = "batch-" .. i, client_secret = secret() } end
  local st = seed { provider = "spreetail", name = "demo", client_secret = secret() }
  local pl = seed { provider = "paylocity", client_secret = secret(), code = "DEMO-CODE-1" }
  local sp = seed { provider = "spapi", client_secret = secret() }
  -- the embedded default store, ./secrets; a store left by an earlier demo is replaced, any other
  -- ./secrets is left alone
  local store = os.getenv("ROTOR_STORE") or "./secrets"
  if core.fs_exists(store) then
    assert(core.fs_exists(store .. "/.rotor-demo"), store .. " exists and was not made by the demo: "
      .. "move it away or set ROTOR_STORE to another directory")
    os.execute("rm -rf " .. sim.shell_quote(store))
  end
  assert(core.fs_mkdir(store, 448))
  assert(core.fs_write_atomic(store .. "/.rotor-demo", "made by make demo; removed by the next one\n", 384))
  local env = {
    ROTOR_CAINFO = s.ca, ROTOR_STORE = store,
    ROTOR_GENESYS_BASE_URL = s.url .. "/genesys", ROTOR_GENESYS_TOKEN_URL = s.url .. "/genesys/login/oauth/token",
    ROTOR_GENESYS_CLIENT_ID = gadmin.client_id, ROTOR_GENESYS_CLIENT_SECRET = gadmin.client_secret,
    ROTOR_GENESYS_TARGET = greport.client_id, ROTOR_GENESYS_PATTERN = "^batch%-",
    ROTOR_SPREETAIL_BASE_URL = s.url .. "/spreetail",
    ROTOR_SPREETAIL_TOKEN_URL = s.url .. "/spreetail/api/v0/oauth/token",
    ROTOR_SPREETAIL_CLIENT_ID = st.client_id or st.clientId,
    ROTOR_SPREETAIL_CLIENT_SECRET = st.client_secret or st.secret,
    ROTOR_PAYLOCITY_BASE_URL = s.url .. "/paylocity",
    ROTOR_PAYLOCITY_TOKEN_URL = s.url .. "/paylocity/IdentityServer/connect/token",
    ROTOR_PAYLOCITY_CLIENT_ID = pl.client_id, ROTOR_PAYLOCITY_CLIENT_SECRET = pl.client_secret,
    ROTOR_PAYLOCITY_CODE = "DEMO-CODE-1",
    ROTOR_SPAPI_BASE_URL = s.url .. "/spapi", ROTOR_SPAPI_TOKEN_URL = s.url .. "/lwa/auth/o2/token",
    ROTOR_SPAPI_CLIENT_ID = sp.client_id, ROTOR_SPAPI_CLIENT_SECRET = sp.client_secret,
    ROTOR_SQS_QUEUE_URL = sp.queue_url, ROTOR_SQS_ACCESS_KEY = sp.sqs.access_key,
    ROTOR_SQS_SECRET_KEY = sp.sqs.secret_key, ROTOR_SQS_ENDPOINT = sp.sqs.endpoint, ROTOR_SQS_REGION = sp.sqs.region,
    ROTOR_SPAPI_WAIT = "30",
  }
  local lines = {}
  for k, v in pairs(env) do lines[#lines + 1] = ("export %s=%s"):format(k, sim.shell_quote(v)) end
  table.sort(lines)
  local envfile = s.dir .. "/demo.env"
  assert(core.fs_write_atomic(envfile, table.concat(lines, "\n") .. "\n", 384))
  print("simulator: " .. s.url .. "   store: " .. store .. "   environment: " .. envfile
    .. " (gone when the demo stops the simulator; `make sim` starts one that keeps running)")
  local failures = 0
  for _, ex in ipairs { "genesys", "genesys_batch", "spreetail", "paylocity", "spapi" } do
    print(("\n== examples/%s.lua"):format(ex))
    local rc = os.execute((". %s && %s examples/%s.lua"):format(sim.shell_quote(envfile), ROTOR, ex))
    if rc ~= true and rc ~= 0 then failures = failures + 1 end
  end
  print("\n== rotor status " .. store)
  os.execute(ROTOR .. " status " .. sim.shell_quote(store))
  assert(failures == 0, failures .. " example(s) failed")
end)
s:stop()
if not ok then
  io.stderr:write("demo: ", tostring(err), "\n")
  os.exit(1)
end
