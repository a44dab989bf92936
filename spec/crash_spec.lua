-- Crash safety: the rotor process (./build/rotor running spec/helpers/rotate_script.lua) is killed
-- with SIGKILL at every kill point (ROTOR_CRASH_AT, via core.kill_self; "mint:inside" by killing
-- it while the simulator holds the minting request open), for each provider and strategy. Per cell:
--   - the run died of SIGKILL at that point (exit 137 and its "crash point" line), unless the cell
--     is in NOT_ON_PATH below, where the run must complete instead;
--   - the rerun resumes where the journal says: "recover" for a kill while a mint was of unknown
--     outcome, "resume at step X" for a kill later on;
--   - mints counted at the simulator equal the expected number (EXPECTED_MINTS);
--   - the store ends with a finished rotation whose secret obtains a token, nothing minted by rotor
--     is left orphaned, no live secret is held by no store (Paylocity, which cannot revoke one,
--     counted apart), and a sibling slot on the same account keeps a working credential.
-- Where the design says a person must act, the rerun stops with that instruction, and the run after
-- it completes: Paylocity after a kill between journalling the intent and storing the secret (the
-- emailed code is of unknown state: a new code is needed) and SP-API killed before its rotation
-- request went out (nothing will arrive on the queue: force_mint after checking).
-- The matrix and every count of the report are computed from the cells.
local core = require "rotor.core"
local rotor = require "rotor"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"
local etcd_cluster = require "spec.helpers.etcd_cluster"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local SCRIPT = "spec/helpers/rotate_script.lua"

local POINTS = {
  "create:before", "mint:before", "mint:inside", "mint:after", "write:before", "write:torn", "create:after",
  "ack:before", "verify:before", "verify:after", "deploy:before", "deploy:after",
  "promote:before", "promote:after", "retire:before", "retire:after",
}

-- genesys: regenerate; genesys_new: new_client; genesys_own: new_client of the provider object's own
-- (admin) client; spreetail_shared: a slot whose account holds a sibling slot named "<slot>:eu"
local KINDS = { "genesys", "genesys_new", "genesys_own", "spreetail", "spreetail_shared", "paylocity", "spapi" }

-- the cells whose point is not on the provider's path: the run is expected to complete
local NOT_ON_PATH = {}
for _, k in ipairs(KINDS) do
  if k ~= "spapi" then NOT_ON_PATH[k .. " ack:before"] = "only SP-API acknowledges a queue message" end
end

-- the kills after which a mint's outcome is unknown to the rerun (it must recover)
local UNKNOWN = { ["mint:before"] = true, ["mint:inside"] = true, ["mint:after"] = true,
                  ["write:before"] = true, ["write:torn"] = true }

-- the kills after which the next run must stop and ask a person (see the header)
local NEEDS_PERSON = {
  paylocity = { ["mint:before"] = "code", ["mint:inside"] = "code", ["mint:after"] = "code",
                ["write:before"] = "code", ["write:torn"] = "code" },
  spapi = { ["mint:before"] = "force" },
}

-- mints the simulator must have seen for the whole cell: one, or two where the first one reached
-- the provider and its secret died with the process (recovery then mints again); SP-API's rerun
-- reads the queue instead
local function expected_mints(kind, point)
  local sent = point == "mint:inside" or point == "mint:after" or point == "write:before" or point == "write:torn"
  if sent and kind ~= "spapi" then return 2 end
  return 1
end

-- the journal steps a rerun may resume at after a kill at point (nil: it recovers instead). The
-- secret's arrival (create) is written before anything else happens, and so is promote when the
-- strategy's retire calls the provider (retire_sends); the lines of start, verify, deploy, retire
-- (and promote, for the others) go to disk with the next durable one (their work is idempotent).
-- So a rerun resumes no earlier than the last durable step that was done, and no later than the
-- step the kill interrupted.
local ORDER = { "create", "verify", "deploy", "promote", "retire", "done" }
-- the kinds whose retire revokes the old credential at the provider (Genesys new_client disables
-- and deletes the old client, Spreetail deletes the old pair): promote must be on disk before it
local PROMOTE_DURABLE = { genesys_new = true, genesys_own = true, spreetail = true, spreetail_shared = true }
local function resume_steps(point, fx)
  local durable_promote = PROMOTE_DURABLE[fx.kind]
  if UNKNOWN[point] then return nil end
  local step, when = point:match("^(%a+):(%a+)$")
  if step == "ack" or step == "write" then step, when = "create", "after" end
  local at, lo
  for i, st in ipairs(ORDER) do if st == step then at = i end end
  local hi = when == "before" and at or at + 1
  lo = durable_promote and (at > 4 or (at == 4 and when == "after")) and 4 or 1
  local ok = {}
  for i = lo, hi do ok[ORDER[i]] = true end
  return ok
end

local q = sim.shell_quote

local function run(envfile, extra, background)
  local prefix = ""
  for k, v in pairs(extra or {}) do prefix = prefix .. k .. "=" .. q(v) .. " " end
  if background then
    local p = assert(io.popen(("( . %s && %s exec %s %s >/dev/null 2>&1 ) & echo $!"):format(
      q(envfile), prefix ~= "" and ("export " .. prefix .. "&&") or "", ROTOR, SCRIPT)))
    local pid = tonumber(p:read("*l"))
    p:close()
    return pid
  end
  -- the outer subshell waits for the run and keeps the shell's "Killed" notice out of the output
  local out, rc = sim.run(("( ( . %s && %s %s %s ) 2>&1; exit $? ) 2>/dev/null"):format(q(envfile),
    prefix ~= "" and ("export " .. prefix .. "&&") or "", ROTOR, SCRIPT))
  return rc, out
end

local function mints(s, fx)
  local c = fixtures.control(s, "GET", "/counters")
  return math.floor((c.counters or c)[fx.mint_method .. " " .. fx.mint_path] or 0)
end

-- the matrix runs on the file store, then on an etcd store (a 3-member cluster, spec/helpers/etcd_cluster)
local etcd_spec -- set while the etcd matrix runs: the rotor.store.etcd fields
local function open_store(store_dir)
  if etcd_spec then return assert(rotor.store.etcd(etcd_spec)) end
  return assert(rotor.store.file(store_dir))
end

-- the journal entries a run appended after the first n
local function journal_since(store_dir, slot, n)
  local rec = open_store(store_dir):get(slot)
  local out = {}
  for i = n + 1, #(rec and rec.journal or {}) do out[#out + 1] = rec.journal[i] end
  return out, rec
end

local function journal_len(store_dir, slot)
  local rec = open_store(store_dir):get(slot)
  return rec and #rec.journal or 0
end

-- ROTOR_CRASH_STORES=file (or etcd) runs the matrix on one store only (make mutants: the mutations
-- are the engine's, whatever the store)
local STORES = {}
for k in (os.getenv("ROTOR_CRASH_STORES") or "file,etcd"):gmatch("%a+") do STORES[#STORES + 1] = k end
for _, store_kind in ipairs(STORES) do
describe("crash safety (SIGKILL at every kill point) on the " .. store_kind .. " store #proc", function()
  local s, cluster
  local matrix = {}
  local totals = { cells = 0, killed = 0, not_on_path = 0, failed = 0, lost = 0, unrevocable = 0, mints = 0,
                   expected = 0, access_lost = 0, sibling_revoked = 0, recovered = 0 }
  setup(function()
    s = sim.start()
    if store_kind == "etcd" then
      cluster = etcd_cluster.start { dir = s.dir .. "/etcd" }
      sim.run("head -c 32 /dev/urandom > " .. q(s.dir .. "/seal.key") .. " && chmod 600 " .. q(s.dir .. "/seal.key"))
      etcd_spec = cluster:store_spec { key_file = s.dir .. "/seal.key" }
      assert(core.fs_write_atomic(s.dir .. "/etcd.json", rotor.json.encode(etcd_spec), 384))
    end
  end)
  teardown(function()
    etcd_spec = nil
    if cluster then cluster:stop() end
    if s then s:stop() end
    print("\n" .. store_kind .. " store:")
    local lines = { ("%-15s"):format("kill point") }
    for _, k in ipairs(KINDS) do lines[1] = lines[1] .. ("%-17s"):format(k) end
    for _, point in ipairs(POINTS) do
      local row = ("%-15s"):format(point)
      for _, k in ipairs(KINDS) do row = row .. ("%-17s"):format((matrix[k] or {})[point] or "-") end
      lines[#lines + 1] = row
    end
    print("\n" .. table.concat(lines, "\n"))
    print("cell: outcome/mints at the simulator (expected in brackets when they differ); ok = killed there, rerun "
      .. "completed; ok+person = the rerun stopped with its instruction, then completed; n/a = not on the path "
      .. "(the run completed); FAIL = see the failures")
    print(("cells %d: killed at their point %d, not on the path %d, failed %d; mints %d (expected %d); reruns that "
      .. "recovered an unknown mint %d"):format(totals.cells, totals.killed, totals.not_on_path, totals.failed,
        totals.mints, totals.expected, totals.recovered))
    print(("access lost (no working secret stored after the reruns): %d cells; sibling slots' credentials revoked: "
      .. "%d; live secrets minted by rotor and held by no store: %d, of which Paylocity's (unrevocable, marked /Nu): "
      .. "%d"):format(totals.access_lost, totals.sibling_revoked, totals.lost, totals.unrevocable))
  end)

  for _, kind in ipairs(KINDS) do
    it(kind .. ": every kill point recovers", function()
      matrix[kind] = {}
      local failures = {}
      for _, point in ipairs(POINTS) do
        totals.cells = totals.cells + 1
        local fx = fixtures.seed(s, kind)
        local dir = ("%s/crash-%s-%s"):format(s.dir, kind, point:gsub(":", "-"))
        local store_dir = dir .. "/store"
        assert(core.fs_mkdir(store_dir, 448))
        local sibling
        if fx.sibling then
          -- the sibling slot, rotated in full first: its pair is named rotor:<slot>:eu:<rotation id>
          local sp = fixtures.provider(fx, fx.sibling.opts)
          local st = open_store(store_dir)
          assert(rotor.rotate { slot = fx.sibling.slot, provider = sp, store = st, verify_delay = 0.1 })
          sibling = assert(st:get(fx.sibling.slot)).versions.current
        end
        local envfile = dir .. "/env"
        local env = fixtures.env(s, fx, store_dir)
        if etcd_spec then env.ROTOR_T_ETCD = s.dir .. "/etcd.json" end
        fixtures.write_env(envfile, env)
        local before = mints(s, fx)
        local cell, why = "ok", nil
        local na = NOT_ON_PATH[kind .. " " .. point]
        if point == "mint:inside" then
          fixtures.control(s, "POST", "/faults",
                           { path = fx.mint_path, method = fx.mint_method, hang = true, count = 1 })
          local pid = run(envfile, nil, true)
          local deadline = core.now() + 10
          while mints(s, fx) == before and core.now() < deadline do os.execute("sleep 0.1") end
          if mints(s, fx) == before then why = "the minting request never arrived" end
          os.execute("sleep 0.2")
          local killed = os.execute("kill -9 " .. pid .. " 2>/dev/null")
          if not (killed == true or killed == 0) then why = "the hanging run could not be killed" end
          os.execute("sleep 0.1")
        else
          local rc, out = run(envfile, { ROTOR_CRASH_AT = point })
          if na then
            cell = "n/a"
            if rc ~= 0 then why = "not on the path, yet the run exited " .. tostring(rc) .. ": " .. out end
          elseif rc ~= 137 then
            why = "the run was to die of SIGKILL at " .. point .. " but exited " .. tostring(rc) .. ": " .. out
          elseif not out:find("rotor: crash point " .. point, 1, true) then
            why = "killed, but not at " .. point .. ": " .. out
          end
        end
        local n0 = journal_len(store_dir, fx.slot)
        if cell ~= "n/a" and not why then
          totals.killed = totals.killed + 1
          local rc, out = run(envfile)
          local need = NEEDS_PERSON[kind] and NEEDS_PERSON[kind][point]
          if need then
            if rc == 0 then
              why = "expected the rerun to stop for a person"
            elseif need == "code" and not out:find("rerun with target.code set to the NEW code", 1, true) then
              why = "no instruction: " .. out
            elseif need == "force" and not out:find("force_mint = true", 1, true) then
              why = "no instruction: " .. out
            else
              cell = "ok+person"
              local fix = need == "code" and { ROTOR_T_CODE = fx.code .. "-2" } or { ROTOR_T_FORCE_MINT = "1" }
              rc, out = run(envfile, fix)
            end
          end
          if not why and rc ~= 0 then why = "rerun exited " .. tostring(rc) .. ": " .. out end
          if not why then
            -- the journal shows where the rerun took over
            local entries = journal_since(store_dir, fx.slot, n0)
            local want = resume_steps(point, fx)
            local found = false
            for _, e in ipairs(entries) do
              if want == nil and e.outcome == "recover" then found = true end
              if want ~= nil and e.outcome == "resume" and want[tostring(e.note):match("^at step (%a+)$")] then
                found = true
              end
              -- killed before anything of the rotation was written: the rerun starts it afresh
              if point == "create:before" and e.outcome == "start" then found = true end
            end
            if not found then
              why = want and ("the rerun's journal does not resume next to " .. point)
                or "the rerun's journal shows no recovery of the unknown mint"
            elseif want == nil then
              totals.recovered = totals.recovered + 1
            end
          end
        elseif na then
          totals.not_on_path = totals.not_on_path + 1
        end
        local minted = mints(s, fx) - before
        local expect = expected_mints(kind, point)
        totals.mints, totals.expected = totals.mints + minted, totals.expected + expect
        if not why and minted ~= expect then
          why = ("%d mints at the simulator, expected %d"):format(minted, expect)
        end
        if not why then
          local rec = assert(open_store(store_dir):get(fx.slot))
          local cur = rec.versions.current
          if rec.rotation or not cur or not cur.secret then
            why = "the store holds no finished rotation"
            totals.access_lost = totals.access_lost + 1
          elseif not fixtures.works(fx, cur.client_id, cur.secret) then
            why = "the stored secret does not work"
            totals.access_lost = totals.access_lost + 1
          else
            local orphans = fixtures.orphans(fx, rec)
            if #orphans > 0 then why = "orphaned: " .. table.concat(orphans, ", ") end
            local lost = fixtures.lost(s, fx, rec)
            totals.lost = totals.lost + lost
            if lost > 0 then
              if kind == "paylocity" and UNKNOWN[point] and point ~= "mint:before" then
                -- the secret Paylocity minted lived only in the killed process; Paylocity has no
                -- call to revoke it (it expires on its own date): counted, and shown in the cell
                totals.unrevocable = totals.unrevocable + lost
                cell = cell .. "/" .. lost .. "u"
              else
                why = lost .. " live secret(s) minted in this rotation are not in the store"
              end
            end
          end
          if sibling and not fixtures.works(fx, sibling.client_id, sibling.secret) then
            totals.sibling_revoked = totals.sibling_revoked + 1
            why = "the sibling slot's pair was revoked"
          end
        end
        cell = cell .. "/" .. minted .. (minted ~= expect and ("(" .. expect .. ")") or "")
        if why then
          cell = "FAIL/" .. minted
          totals.failed = totals.failed + 1
          failures[#failures + 1] = point .. ": " .. why
        end
        matrix[kind][point] = cell
      end
      assert.same({}, failures)
    end)
  end
end)
end
