-- A batch of Genesys rotations in one process (./build/rotor spec/helpers/rotate_batch.lua):
-- rotor.parallel over the client ids in ROTOR_B_IDS_FILE (slots b1, b2, ...) at concurrency 8,
-- one file store, so the store's writes go out as group commits. Used by spec/batch_crash_spec.lua
-- with ROTOR_CRASH_AT / ROTOR_CRASH_SLOT. Environment: ROTOR_B_URL (the simulator), ROTOR_CAINFO,
-- ROTOR_B_ADMIN_ID, ROTOR_B_SECRET_FILE (the admin secret, never on a command line),
-- ROTOR_B_IDS_FILE (one client id a line), ROTOR_B_STORE. Exit 0 when every slot rotated, else 1.
local rotor = require "rotor"
local env = os.getenv

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local url = assert(env("ROTOR_B_URL"))
local gc = assert(rotor.genesys {
  base_url = url .. "/genesys", token_url = url .. "/genesys/login/oauth/token", cainfo = env("ROTOR_CAINFO"),
  client_id = assert(env("ROTOR_B_ADMIN_ID")), client_secret = read(assert(env("ROTOR_B_SECRET_FILE"))),
  timeout = 5, pacing = false,
})
local store = assert(rotor.store.file(assert(env("ROTOR_B_STORE"))))
local ids = {}
for id in read(assert(env("ROTOR_B_IDS_FILE"))):gmatch("%S+") do ids[#ids + 1] = id end
local failed = 0
rotor.parallel(ids, function(id, i)
  local res, err = rotor.rotate { slot = "b" .. i, provider = gc, store = store, target = { client_id = id },
                                  verify_delay = 0.2 }
  if not res then
    failed = failed + 1
    io.stderr:write(tostring(err), "\n")
  end
end, { concurrency = 8 })
os.exit(failed == 0 and 0 or 1)
