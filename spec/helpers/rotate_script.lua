-- A rotation run as a separate process (./build/rotor spec/helpers/rotate_script.lua), configured by
-- ROTOR_T_* variables (spec.helpers.rotor_fixtures.env). Used by the crash and lock specs.
-- ROTOR_T_ETCD: a JSON file of rotor.store.etcd fields: the slot is in that etcd store instead.
-- Exit: 0 rotated, 75 slot locked, 1 failed (the error on stderr). ROTOR_T_DEPLOY_SLEEP makes the
-- deploy hook take that many seconds (so a second rotor meets the lock); ROTOR_T_DEPLOY_SIGNAL
-- makes it send that signal to its own process; ROTOR_T_DEPLOY_GATE makes it wait (up to 60 s) until
-- that file exists (so a spec decides when the first rotor lets go). Exit 130: stopped on a signal.
local rotor = require "rotor"
local env = os.getenv
local kind = assert(env("ROTOR_T_KIND"))
local opts = { base_url = env("ROTOR_T_BASE_URL"), token_url = env("ROTOR_T_TOKEN_URL"), cainfo = env("ROTOR_CAINFO"),
               client_id = env("ROTOR_T_CLIENT_ID"), client_secret = env("ROTOR_T_CLIENT_SECRET"), timeout = 5 }
if env("ROTOR_T_SQS_QUEUE_URL") then
  opts.sqs = { queue_url = env("ROTOR_T_SQS_QUEUE_URL"), access_key = env("ROTOR_T_SQS_ACCESS_KEY"),
               secret_key = env("ROTOR_T_SQS_SECRET_KEY"), endpoint = env("ROTOR_T_SQS_ENDPOINT"),
               region = env("ROTOR_T_SQS_REGION") }
end
local p = assert(rotor[kind](opts))
local store
if env("ROTOR_T_ETCD") then
  -- the etcd store (rotor.store.etcd fields as JSON in that file); the sink stays by ROTOR_T_STORE
  local f = assert(io.open(env("ROTOR_T_ETCD")))
  store = assert(rotor.store.etcd(rotor.json.decode(f:read("a"))))
  f:close()
else
  store = assert(rotor.store.file(assert(env("ROTOR_T_STORE"))))
end
local sink = rotor.store.dotenv(env("ROTOR_T_STORE") .. "/../app.env")
local res, err = rotor.rotate {
  slot = assert(env("ROTOR_T_SLOT")), provider = p, store = store,
  target = { client_id = env("ROTOR_T_TARGET_CLIENT_ID"), code = env("ROTOR_T_CODE") },
  strategy = env("ROTOR_T_STRATEGY"), force_mint = env("ROTOR_T_FORCE_MINT") == "1",
  wait = tonumber(env("ROTOR_T_WAIT") or "5"), verify_delay = 0.2,
  visibility = tonumber(env("ROTOR_T_VISIBILITY") or ""),
  deploy = function(new)
    local pause = tonumber(env("ROTOR_T_DEPLOY_SLEEP") or "")
    if pause then rotor.sleep(pause) end
    local gate = env("ROTOR_T_DEPLOY_GATE")
    if gate then
      local core = require "rotor.core"
      for _ = 1, 1200 do
        if core.fs_exists(gate) then break end
        rotor.sleep(0.05)
      end
    end
    if env("ROTOR_T_DEPLOY_SIGNAL") then
      -- as if an operator pressed ^C (or cron sent SIGTERM) while the deploy hook ran
      -- (io.popen, not os.execute: system() ignores SIGINT in the caller while the child runs)
      local k = io.popen("kill -" .. env("ROTOR_T_DEPLOY_SIGNAL") .. " " .. require("rotor.core").getpid())
      k:close()
    end
    return sink:deploy(new)
  end,
}
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(err.kind == "locked" and 75 or err.kind == "interrupted" and 130 or 1)
end
print("rotated " .. res.slot)
