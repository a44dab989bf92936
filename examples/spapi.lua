-- Rotate the Amazon SP-API (LWA) client secret: request the rotation, await the new secret on the
-- SQS queue (stored before the message is deleted), verify it. The old one lasts about 7 days.
local rotor = require "rotor"
local env = os.getenv
local sp = assert(rotor.spapi { region = env("ROTOR_SPAPI_REGION") or "na", base_url = env("ROTOR_SPAPI_BASE_URL"),
  token_url = env("ROTOR_SPAPI_TOKEN_URL"), cainfo = env("ROTOR_CAINFO"),
  client_id = env("ROTOR_SPAPI_CLIENT_ID"), client_secret = env("ROTOR_SPAPI_CLIENT_SECRET"),
  sqs = { queue_url = env("ROTOR_SQS_QUEUE_URL"), access_key = env("ROTOR_SQS_ACCESS_KEY"),
          secret_key = env("ROTOR_SQS_SECRET_KEY"), endpoint = env("ROTOR_SQS_ENDPOINT"),
          region = env("ROTOR_SQS_REGION") } })
local store = assert(rotor.store.file(env("ROTOR_STORE") or "./secrets"))
local res, err = rotor.rotate { slot = "spapi/app", provider = sp, store = store,
  wait = tonumber(env("ROTOR_SPAPI_WAIT") or "300"), dry_run = arg[1] == "--dry-run" }
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(err.kind == "locked" and 75 or 1)
end
print(("%s: new secret expires %s; the old one works until %s"):format(res.slot, tostring(res.expires),
  tostring(res.old_expires)))
