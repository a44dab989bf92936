-- Rotate one Genesys Cloud OAuth client's secret. Strategy "regenerate" (default): the old secret
-- dies at once; "new_client": a second client, the old one disabled then deleted (zero downtime).
local rotor = require "rotor"
local env = os.getenv
local gc = assert(rotor.genesys { region = env("ROTOR_GENESYS_REGION"), base_url = env("ROTOR_GENESYS_BASE_URL"),
  token_url = env("ROTOR_GENESYS_TOKEN_URL"), cainfo = env("ROTOR_CAINFO"),
  client_id = env("ROTOR_GENESYS_CLIENT_ID"), client_secret = env("ROTOR_GENESYS_CLIENT_SECRET") })
local target = assert(env("ROTOR_GENESYS_TARGET"), "set ROTOR_GENESYS_TARGET to the client id to rotate")
local res, err = rotor.rotate {
  slot = "genesys/" .. target, provider = gc, store = assert(rotor.store.file(env("ROTOR_STORE") or "./secrets")),
  target = { client_id = target }, strategy = env("ROTOR_GENESYS_STRATEGY"), dry_run = arg[1] == "--dry-run",
}
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(err.kind == "locked" and 75 or 1)
end
print(("%s: client %s rotated (%s)"):format(res.slot, tostring(res.client_id), res.strategy or "dry run"))
for _, w in ipairs(res.warnings or {}) do io.stderr:write("warning: ", w, "\n") end
