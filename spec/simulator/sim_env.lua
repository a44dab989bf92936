-- `make sim`: start the provider simulator in DIR (arg[1]), seed one credential per provider and
-- print the environment a newcomer's script reads, as `export` lines (also written to DIR/exports.env,
-- 0600). `make sim-stop` stops it. Run by the rotor host: ./build/rotor spec/simulator/sim_env.lua DIR
package.path = "./?.lua;./lua/?.lua;./lua/?/init.lua;" .. package.path
local core = require "rotor.core"
local sim = require "spec.helpers.sim"

local dir = assert(arg[1], "usage: sim_env.lua DIR")
local s = sim.start { dir = dir }
local function seed(t)
  local r, status = s:control("POST", "/seed", t)
  assert(type(r) == "table" and (status == nil or status < 300), "seeding " .. t.provider .. " failed")
  return r
end
local function secret() return core.random_hex(24) end
local admin = seed { provider = "genesys", admin = true, name = "rotor admin", client_secret = secret() }
local app = seed { provider = "genesys", name = "reporting", client_secret = secret(),
                   roleDivisions = { { roleId = "reporting-role", divisionId = "home" } } }
local st = seed { provider = "spreetail", name = "shop", client_secret = secret() }
local env = {
  ROTOR_SIM_URL = s.url, ROTOR_SIM_DIR = s.dir, ROTOR_CAINFO = s.ca,
  GENESYS_BASE_URL = s.url .. "/genesys", GENESYS_TOKEN_URL = s.url .. "/genesys/login/oauth/token",
  GENESYS_ADMIN_ID = admin.client_id, GENESYS_ADMIN_SECRET = admin.client_secret,
  GENESYS_CLIENT_ID = app.client_id,
  SPREETAIL_BASE_URL = s.url .. "/spreetail", SPREETAIL_TOKEN_URL = s.url .. "/spreetail/api/v0/oauth/token",
  SPREETAIL_CLIENT_ID = st.client_id or st.clientId, SPREETAIL_CLIENT_SECRET = st.client_secret or st.secret,
}
local lines = {}
for k, v in pairs(env) do lines[#lines + 1] = ("export %s=%s"):format(k, sim.shell_quote(v)) end
table.sort(lines)
local text = table.concat(lines, "\n") .. "\n"
assert(core.fs_write_atomic(s.dir .. "/exports.env", text, 384))
io.stdout:write(text)
