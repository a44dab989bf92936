-- Rotate the Spreetail credential this script acts with: a new clientId+secret pair is created,
-- verified and stored, then the old pair is deleted. The store's current pair wins over the env.
local rotor = require "rotor"
local env = os.getenv
local st = assert(rotor.spreetail { base_url = env("ROTOR_SPREETAIL_BASE_URL"),
  token_url = env("ROTOR_SPREETAIL_TOKEN_URL"), cainfo = env("ROTOR_CAINFO"),
  client_id = env("ROTOR_SPREETAIL_CLIENT_ID"), client_secret = env("ROTOR_SPREETAIL_CLIENT_SECRET") })
local res, err = rotor.rotate {
  slot = "spreetail/main", provider = st, store = assert(rotor.store.file(env("ROTOR_STORE") or "./secrets")),
  target = { expires_days = tonumber(env("ROTOR_SPREETAIL_EXPIRES_DAYS") or "") },
  dry_run = arg[1] == "--dry-run",
}
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(err.kind == "locked" and 75 or 1)
end
print(("%s: now client %s (old pair %s deleted)"):format(res.slot, tostring(res.client_id),
  tostring(res.old_client_id)))
