-- Renew the Paylocity WebLink secret with the code from the "Credentials Expiring Soon" email
-- (ROTOR_PAYLOCITY_CODE). The old secret keeps working until its own expiry date.
local rotor = require "rotor"
local env = os.getenv
local pl = assert(rotor.paylocity { sandbox = env("ROTOR_PAYLOCITY_SANDBOX") == "1",
  base_url = env("ROTOR_PAYLOCITY_BASE_URL"), token_url = env("ROTOR_PAYLOCITY_TOKEN_URL"),
  cainfo = env("ROTOR_CAINFO"),
  client_id = env("ROTOR_PAYLOCITY_CLIENT_ID"), client_secret = env("ROTOR_PAYLOCITY_CLIENT_SECRET") })
local res, err = rotor.rotate {
  slot = "paylocity/weblink", provider = pl, store = assert(rotor.store.file(env("ROTOR_STORE") or "./secrets")),
  target = { code = env("ROTOR_PAYLOCITY_CODE") }, dry_run = arg[1] == "--dry-run",
}
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(err.kind == "locked" and 75 or 1)
end
print(("%s: new secret expires %s; the old one works until %s"):format(res.slot, tostring(res.expires),
  tostring(res.old_expires or "its own expiry date")))
