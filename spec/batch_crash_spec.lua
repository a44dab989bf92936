-- Crash safety of a batch: eight Genesys rotations in one rotor process share group commits of
-- the file store (sched.durable). The process is killed (SIGKILL) when one slot reaches a kill
-- point, with the other seven anywhere in their own rotations and their writes possibly half way
-- through a group commit on the writer thread. Every slot file must still hold a whole record, and
-- after a rerun every slot's stored current secret must be the one that works at the simulator
-- (regenerating there kills the old secret: a minted secret the store lost means access lost).
local sim = require "spec.helpers.sim"
local file_store = require "rotor.store.file"

local POINTS = { "create:before", "create:after", "verify:after", "promote:before", "promote:after",
                 "retire:after" }
local N = 8

describe("a batch of rotations killed in the middle", function()
  local s, admin, ids, secret_file, ids_file

  setup(function()
    s = sim.start()
    s:settings { genesys_rate = 0 }
    admin = s:seed { provider = "genesys", admin = true }
    local batch = {}
    for i = 1, N do batch[i] = { provider = "genesys", name = "batch-" .. i } end
    ids = {}
    for i, c in ipairs(s:seed(batch)) do ids[i] = c.client_id end
    secret_file, ids_file = s.dir .. "/batch-admin-secret", s.dir .. "/batch-ids"
    local f = assert(io.open(secret_file, "wb"))
    f:write(admin.client_secret)
    f:close()
    f = assert(io.open(ids_file, "wb"))
    f:write(table.concat(ids, "\n"), "\n")
    f:close()
  end)
  teardown(function()
    os.remove(secret_file)   -- the admin secret handed to the batch processes
    os.remove(ids_file)
    s:stop()
  end)

  local function run(store_dir, extra)
    local vars = { ROTOR_B_URL = s.url, ROTOR_CAINFO = s.ca, ROTOR_B_ADMIN_ID = admin.client_id,
                   ROTOR_B_SECRET_FILE = secret_file, ROTOR_B_IDS_FILE = ids_file, ROTOR_B_STORE = store_dir }
    for k, v in pairs(extra or {}) do vars[k] = v end
    local parts = {}
    for k, v in pairs(vars) do parts[#parts + 1] = k .. "=" .. sim.shell_quote(v) end
    local out, rc = sim.run(table.concat(parts, " ") .. " ./build/rotor spec/helpers/rotate_batch.lua 2>&1")
    return rc, out
  end

  local function works(id, secret)
    local res = s:request { method = "POST", path = "/genesys/login/oauth/token", basic = { id, secret },
                            form = { grant_type = "client_credentials" } }
    return res ~= nil and res.status == 200
  end

  for _, point in ipairs(POINTS) do
    it("at " .. point .. " of one slot: whole records, and every slot's secret works after a rerun", function()
      local dir = s.dir .. "/store-" .. point:gsub(":", "-")
      local rc, out = run(dir, { ROTOR_CRASH_AT = point, ROTOR_CRASH_SLOT = "b3" })
      assert.are_not.equal(0, rc, "the batch was to be killed: " .. out)
      local store = assert(file_store.new(dir))
      for i = 1, N do
        local rec, err = store:get("b" .. i)
        assert.is_not_nil(rec, "slot b" .. i .. " unreadable after the kill: " .. tostring(err))
      end
      rc, out = run(dir)
      assert.equal(0, rc, "the rerun failed: " .. out)
      for i = 1, N do
        local rec = assert(store:get("b" .. i))
        local cur = rec.versions.current
        assert.is_nil(rec.rotation, "b" .. i .. " has an unfinished rotation")
        assert.equal(ids[i], cur.client_id)
        assert.is_true(works(ids[i], cur.secret:reveal()), "b" .. i .. ": the stored secret does not work")
      end
    end)
  end
end)
