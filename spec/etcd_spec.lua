-- A fleet of rotors on a real 3-member etcd cluster (TLS, client certificates, auth on, a `rotor`
-- user allowed only its prefix; spec/helpers/etcd_cluster.lua), and secrets sealed at rest.
local core = require "rotor.core"
local json = require "rotor.json"
local sim = require "spec.helpers.sim"
local fixtures = require "spec.helpers.rotor_fixtures"
local etcd_cluster = require "spec.helpers.etcd_cluster"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local q = sim.shell_quote

local function mktemp() return sim.tmpdir("etcd") end

-- every form a secret could take at rest: raw, and base64 at each of the three alignments
-- (the chars that depend on neighbouring bytes are cut off)
local function forms(secret)
  local out = { secret }
  for k = 0, 2 do
    local enc = core.b64encode(("\0"):rep(k) .. secret)
    local cut = ({ 0, 2, 3 })[k + 1]
    out[#out + 1] = enc:sub(cut + 1, -5)
  end
  return out
end

-- count the secrets found (raw or base64) in a blob; names the form, never the secret
local function scan(blob, secrets)
  local hits = 0
  for _, s in ipairs(secrets) do
    for i, f in ipairs(forms(s)) do
      if #f >= 8 and blob:find(f, 1, true) then
        hits = hits + 1
        io.stderr:write("etcd_spec leak scan: a secret found (" .. (i == 1 and "raw" or "base64") .. ")\n")
      end
    end
  end
  return hits
end

-- every file under dir, but the env files that hand the bootstrap credentials to the rotors
local function read_tree(dir)
  local parts = {}
  local p = io.popen("find " .. q(dir) .. " -type f ! -name env 2>/dev/null")
  for path in p:lines() do parts[#parts + 1] = sim.read_file(path) or "" end
  p:close()
  return table.concat(parts, "\n")
end

local function issued(s)
  local out = {}
  for _, e in ipairs(fixtures.control(s, "GET", "/secrets").details or {}) do out[#out + 1] = e.secret end
  return out
end

local function mints(s, fx)
  return fixtures.counter(s, fx.mint_path)
end

describe("secrets sealed at rest", function()
  it("seals with AES-256-GCM under a key id, bound to the slot", function()
    local key = core.secret(("k"):rep(32))
    local other = core.secret(("o"):rep(32))
    local sealed = core.seal(key, core.secret("planted-secret-42"), "rotor/v1:a")
    assert.equal(16, #core.seal_key_id(key))
    assert.are_not.equal(core.seal_key_id(key), core.seal_key_id(other))
    assert.equal("planted-secret-42", assert(core.unseal(key, sealed, "rotor/v1:a")):reveal())
    assert.is_nil(core.unseal(other, sealed, "rotor/v1:a"))
    assert.is_nil(core.unseal(key, sealed, "rotor/v1:b"))
    assert.is_nil((core.unseal(key, "not base64!", "rotor/v1:a")))
    assert.has_error(function() core.seal(core.secret("short"), "x") end)
    -- two seals of one value differ (fresh nonce)
    assert.are_not.equal(sealed, core.seal(key, "planted-secret-42", "rotor/v1:a"))
  end)

  it("the file store with key_file keeps no secret on disk and reads it back; old keys still open", function()
    local rotor = require "rotor"
    local dir = mktemp()
    sim.run("head -c 32 /dev/urandom > " .. q(dir .. "/k1") .. " && head -c 32 /dev/urandom > " .. q(dir .. "/k2")
      .. " && chmod 600 " .. q(dir .. "/k1") .. " " .. q(dir .. "/k2"))
    local st = assert(rotor.store.file(dir .. "/store", { key_file = dir .. "/k1" }))
    local planted = "planted-" .. core.random_hex(16)
    assert(st:put("genesys/x", { versions = { current = { client_id = "c", secret = rotor.secret(planted) } },
                                  journal = {} }))
    assert.equal(0, scan(read_tree(dir .. "/store"), { planted }))
    -- the scan itself finds what it looks for (raw and base64 at every alignment)
    for k = 0, 2 do
      local blob = ("x"):rep(k) .. core.b64encode(("y"):rep(k) .. planted) .. "zz"
      assert.truthy(scan(blob, { planted }) >= 1)
    end
    assert.truthy(scan("..." .. planted .. "...", { planted }) >= 1)
    assert.equal(planted, assert(st:get("genesys/x")).versions.current.secret:reveal())
    -- without the key: a clear error naming the fix; with only the new key: the key id is named
    local nokey = assert(rotor.store.file(dir .. "/store"))
    local rec, err = nokey:get("genesys/x")
    assert.is_nil(rec)
    assert.equal("config", err.kind)
    assert.matches("no key is configured", err.message)
    local newkey = assert(rotor.store.file(dir .. "/store", { key_file = dir .. "/k2" }))
    rec, err = newkey:get("genesys/x")
    assert.is_nil(rec)
    assert.matches("old_key_files", err.message)
    -- key rotation: k2 seals, k1 still opens
    local both = assert(rotor.store.file(dir .. "/store",
                                         { key_file = dir .. "/k2", old_key_files = { dir .. "/k1" } }))
    rec = assert(both:get("genesys/x"))
    assert(both:put("genesys/x", rec))
    assert.equal(planted, assert(newkey:get("genesys/x")).versions.current.secret:reveal())
    -- the same from a config file's store = { kind = "file", path =, key_file = } (relative paths)
    local cst = assert(require("rotor.store").open({ kind = "file", path = "cstore", key_file = "k1" }, dir))
    assert(cst:put("genesys/y", { versions = { current = { client_id = "c", secret = rotor.secret(planted) } },
                                   journal = {} }))
    assert.equal(0, scan(read_tree(dir .. "/cstore"), { planted }))
    assert.equal(planted, assert(cst:get("genesys/y")).versions.current.secret:reveal())
    -- a bad key file is refused with the fix
    sim.run("printf short > " .. q(dir .. "/bad") .. " && chmod 600 " .. q(dir .. "/bad"))
    local bad, berr = rotor.store.file(dir .. "/s2", { key_file = dir .. "/bad" })
    assert.is_nil(bad)
    assert.matches("exactly 32 raw bytes", berr.message)
    sim.run("rm -rf " .. q(dir))
  end)

  it("lists every problem of an etcd store spec", function()
    local etcd = require "rotor.store.etcd"
    local problems = etcd.check { endpoints = { "http://example.com:2379" }, cert = "c.pem", lease_ttl = 2,
                                  username = "rotor", colour = "blue" }
    local text = table.concat(problems, "\n")
    assert.matches("endpoints%[1%]", text)
    assert.matches("cert and key", text)
    assert.matches("lease_ttl", text)
    assert.matches("no encryption key", text)
    assert.truthy(text:find("colour: unknown field", 1, true), text)
    assert.matches("neither password nor password_env", text)
    assert.same({}, etcd.check { endpoints = { "https://127.0.0.1:2379" }, key_file = "k", lease_ttl = 5 })
    -- a journal the file store keeps (up to 100,000 entries) makes a record no etcd request holds:
    -- the slot could no longer be written, then not read
    assert.same({ "journal_max: a whole number of entries from 20 to 1000 expected (a slot's record must fit in "
      .. "one etcd request: 1.5 MiB by default), got 100000" },
      etcd.check { endpoints = { "https://127.0.0.1:2379" }, key_file = "k", journal_max = 100000 })
    assert.same({}, etcd.check { endpoints = { "https://127.0.0.1:2379" }, key_file = "k", journal_max = 1000 })
  end)

  -- the TLS files were first opened by libcurl, at the first request: a FIFO at cainfo, cert or key
  -- held that connection (and the run) for ever; a wrong file surfaced as a TLS failure
  it("names a TLS file that cannot serve when the store is opened, never waiting on it", function()
    local etcd = require "rotor.store.etcd"
    local dir = mktemp()
    sim.run("mkfifo " .. q(dir .. "/fifo") .. " && head -c 32 /dev/urandom > " .. q(dir .. "/seal.key")
      .. " && chmod 600 " .. q(dir .. "/seal.key") .. " && printf 'not a certificate' > " .. q(dir .. "/plain")
      .. " && chmod 644 " .. q(dir .. "/plain") .. " && cp -p " .. q(dir .. "/plain") .. " " .. q(dir .. "/pkey")
      .. " && chmod 600 " .. q(dir .. "/pkey") .. " && mkdir " .. q(dir .. "/d"))
    local base = { endpoints = { "https://127.0.0.1:2379" }, key_file = dir .. "/seal.key" }
    local cases = {
      { { cainfo = dir .. "/fifo" },
        "etcd store: cainfo: cannot read the CA bundle: " .. dir .. "/fifo is not a regular file" },
      { { cainfo = dir .. "/plain" }, "etcd store: cainfo: " .. dir .. "/plain holds no PEM certificate" },
      { { cert = dir .. "/fifo", key = dir .. "/plain" },
        "etcd store: cert: " .. dir .. "/fifo is not a regular file" },
      { { cert = dir .. "/plain", key = dir .. "/d" }, "etcd store: key: " .. dir .. "/d is not a regular file" },
      -- a private key others can read is refused (the same bytes mode 0600 pass: below)
      { { cert = dir .. "/plain", key = dir .. "/plain" },
        "etcd store: key: " .. dir .. "/plain is open to group or others (mode 0644): it holds a private key; "
          .. "chmod 600 " .. dir .. "/plain" },
      { { cert = dir .. "/plain", key = dir .. "/none" },
        "etcd store: key: cannot read " .. dir .. "/none: no such file" },
    }
    for _, c in ipairs(cases) do
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      for k, v in pairs(c[1]) do t[k] = v end
      local st, err = etcd.new(t)
      assert.is_nil(st, c[2])
      assert.equal("config", err.kind)
      assert.truthy(err.message:find(c[2], 1, true), err.message)
    end
    assert.truthy(etcd.new(base))
    local with_key = { cert = dir .. "/plain", key = dir .. "/pkey" }
    for k, v in pairs(base) do with_key[k] = v end
    assert.truthy(etcd.new(with_key))
    sim.run("rm -rf " .. q(dir))
  end)
end)

describe("a fleet of rotors on etcd #proc #etcd", function()
  local s, cluster, dir, seal_key

  setup(function()
    s = sim.start { settings = { genesys_rate = 0 } }
    dir = mktemp()
    cluster = etcd_cluster.start { dir = dir .. "/etcd" }
    seal_key = dir .. "/seal.key"
    sim.run("head -c 32 /dev/urandom > " .. q(seal_key) .. " && chmod 600 " .. q(seal_key))
  end)
  teardown(function()
    if cluster then cluster:stop() end
    if s then s:stop() end
    if dir and not os.getenv("ROTOR_SIM_KEEP") then sim.run("rm -rf " .. q(dir)) end
  end)

  local function store_spec(extra)
    local t = cluster:store_spec { key_file = seal_key, password_env = "ROTOR_T_ETCD_PASSWORD" }
    t.password = nil
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  local function open_store(extra)
    local t = store_spec(extra)
    t.password_env, t.password = nil, cluster.password
    return assert(require("rotor.store.etcd").new(t))
  end

  local function write_config(name, fxs, extra)
    local e = { provider = extra and extra.provider, store = store_spec(extra and extra.store) }
    return etcd_cluster.write_rotor_config(dir .. "/" .. name, fxs, e, { ROTOR_T_ETCD_PASSWORD = cluster.password })
  end

  -- start a rotor process in the background: returns its pid (output in base/out.N, exit in base/rc.N)
  local function spawn(base, n, args)
    local pidfile = base .. "/pid." .. n
    sim.run(("(. %s && sh -c 'echo $$ > \"$0\"; exec \"$@\"' %s %s rotate --config %s %s > %s 2> %s; "
      .. "echo $? > %s) > /dev/null 2>&1 & :"):format(q(base .. "/env"), q(pidfile), ROTOR,
      q(base .. "/rotor.conf.lua"),
      args or "", q(base .. "/out." .. n), q(base .. "/err." .. n), q(base .. "/rc." .. n)))
    for _ = 1, 100 do
      local pid = core.fs_exists(pidfile) and tonumber((core.fs_read(pidfile) or ""):match("%d+"))
      if pid then return pid end
      sim.run("sleep 0.02")
    end
    error("rotor " .. n .. " did not start")
  end

  local function wait_rc(base, n, seconds)
    for _ = 1, (seconds or 120) * 10 do
      local rc = core.fs_exists(base .. "/rc." .. n) and core.fs_read(base .. "/rc." .. n)
      if rc and rc:find("%d") then return tonumber(rc:match("%d+")) end
      sim.run("sleep 0.1")
    end
    error("rotor " .. n .. " did not finish")
  end

  -- the slots of a `rotor rotate --json` report (doc/CLI.md)
  local function report_slots(base, n)
    local report = json.decode(core.fs_read(base .. "/out." .. n) or "") or {}
    return type(report.slots) == "table" and report.slots or {}
  end

  local function check_slot(st, fx)
    local rec = assert(st:get(fx.slot))
    assert.is_nil(rec.rotation, fx.slot)
    assert.is_true(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret), fx.slot)
    assert.same({}, fixtures.orphans(fx, rec))
    assert.equal(0, fixtures.lost(s, fx, rec))
    return rec
  end

  it("three rotors --only-due over 30 Genesys slots and one of each other provider: each rotated once", function()
    local fxs = {}
    for i = 1, 30 do fxs[i] = fixtures.seed(s, "genesys", "g" .. i .. core.random_hex(2)) end
    for _, kind in ipairs { "spreetail", "paylocity", "spapi" } do fxs[#fxs + 1] = fixtures.seed(s, kind) end
    local base = write_config("fleet", fxs)
    local t0 = core.now()
    for n = 1, 3 do spawn(base, n, "--only-due --json") end
    local rcs, rotated, skipped, locked = {}, 0, 0, 0
    for n = 1, 3 do
      rcs[n] = wait_rc(base, n)
      for _, r in ipairs(report_slots(base, n)) do
        if r.state == "skipped" then skipped = skipped + 1
        elseif r.state == "rotated" then rotated = rotated + 1
        elseif r.state == "locked" then locked = locked + 1
        else error("rotor " .. n .. ": " .. tostring(r.slot) .. ": " .. tostring(r.error and r.error.message)) end
      end
      assert.truthy(rcs[n] == 0 or rcs[n] == 75, "rotor " .. n .. " exit " .. rcs[n] .. ": "
        .. tostring(core.fs_read(base .. "/err." .. n)))
    end
    local elapsed = core.now() - t0
    assert.equal(#fxs, rotated)
    assert.equal(3 * #fxs, rotated + skipped + locked)
    print(("\n  fleet: %d slots over 3 rotors in %.1f s (%d skipped as done, %d met a held lock)")
      :format(#fxs, elapsed, skipped, locked))
    local st = open_store()
    for _, fx in ipairs(fxs) do
      assert.equal(1, mints(s, fx), fx.slot .. " minted more or less than once")
      check_slot(st, fx)
    end
    -- the audit trail is in the cluster, with fingerprints only
    local trail = assert(st:audit_trail():entries())
    assert.truthy(#trail >= #fxs * 5)
    -- no secret in the cluster's keys (etcdctl dump), its data directories, or the config dirs
    local secrets = issued(s)
    assert.truthy(#secrets > #fxs)
    local dump, rc = cluster:etcdctl("get --prefix " .. q(cluster.prefix) .. " -w json")
    assert.equal(0, rc, dump)
    local plain_dump = cluster:etcdctl("get --prefix " .. q(cluster.prefix))
    assert.truthy(#plain_dump > 1000)
    assert.equal(0, scan(dump .. plain_dump, secrets))
    -- a planted secret in the cluster is found by the same scan (so the scan can fail); not an
    -- issued one, so that the leak scan of `make test` over the data directories stays clean
    local planted = "planted-" .. core.random_hex(16)
    local pst = open_store { prefix = cluster.prefix .. "plant/" }
    assert(pst.call(pst, "/v3/kv/put", { key = core.b64encode(cluster.prefix .. "plant/x"),
                                        value = core.b64encode("{\"s\":\"" .. planted .. "\"}") }))
    local dump2 = cluster:etcdctl("get --prefix " .. q(cluster.prefix) .. " -w json")
    assert.truthy(scan(dump2, { planted }) >= 1)
    assert(pst.call(pst, "/v3/kv/deleterange", { key = core.b64encode(cluster.prefix .. "plant/x") }))
    -- etcd's write-ahead logs and snapshots: the planted value is there (so is what rotor wrote),
    -- and no secret rotor stored is
    local data = ""
    for i = 1, #cluster.members do data = data .. read_tree(cluster.members[i].data) end
    assert.truthy(scan(data, { planted }) >= 1)
    assert.equal(0, scan(data, secrets))
    assert.equal(0, scan(read_tree(base), secrets))
  end)

  it("the leader killed during a forced batch: the batch completes, nothing minted twice, nothing lost", function()
    local fxs = {}
    for i = 1, 16 do fxs[i] = fixtures.seed(s, "genesys", "l" .. i .. core.random_hex(2)) end
    -- the rotor talks to the leader first: killing it cuts its connection and forces an election
    local leader = assert(cluster:leader())
    local eps = { cluster.endpoints[leader] }
    for i, e in ipairs(cluster.endpoints) do if i ~= leader then eps[#eps + 1] = e end end
    local base = write_config("leader", fxs, { store = { endpoints = eps } })
    -- every token answer a little late (0.15 s): the batch lasts long enough for the kill to land
    -- in it (at full speed it could be over before the first slot was seen done)
    assert(s:fault { path = "/genesys/login/oauth/token", count = 100, delay = 0.15 })
    finally(function() s:control("DELETE", "/faults") end)
    local probe = open_store()
    spawn(base, 1, "--json")
    -- once the first slot is done, kill the member that leads
    local started = false
    for _ = 1, 300 do
      for _, fx in ipairs(fxs) do
        local rec = probe:get(fx.slot)
        if rec and rec.last then started = true break end
      end
      if started then break end
      sim.run("sleep 0.05")
    end
    assert.is_true(started)
    assert.equal(leader, cluster:leader())
    cluster:kill(leader)
    local done_at_kill = 0
    for _, fx in ipairs(fxs) do
      local rec = probe:get(fx.slot)
      if rec and rec.last then done_at_kill = done_at_kill + 1 end
    end
    assert.truthy(done_at_kill < #fxs, "the batch was over before the leader was killed")
    local rc = wait_rc(base, 1)
    local failed = {}
    for _, r in ipairs(report_slots(base, 1)) do
      if r.state ~= "rotated" then failed[#failed + 1] = "--slot " .. q(r.slot) end
    end
    print(("\n  leader m%d killed mid-batch (%d of %d slots done): exit %d, %d slots failed and were rerun")
      :format(leader, done_at_kill, #fxs, rc, #failed))
    if #failed > 0 then
      spawn(base, 2, table.concat(failed, " ") .. " --json")
      assert.equal(0, wait_rc(base, 2), core.fs_read(base .. "/err.2"))
    else
      assert.equal(0, rc, core.fs_read(base .. "/err.1"))
    end
    for _, fx in ipairs(fxs) do
      assert.equal(1, mints(s, fx), fx.slot .. " minted more or less than once")
      check_slot(probe, fx)
    end
    cluster:restart(leader)
    cluster:wait_healthy(30, "restart of m" .. leader)
  end)

  it("rotates in-process on etcd and on a sealed file store alike (the time per rotation is printed)", function()
    local rotor = require "rotor"
    local fdir = mktemp()
    local stores = {
      { "etcd", open_store() },
      { "file (sealed)", assert(rotor.store.file(fdir .. "/store", { key_file = seal_key })) },
    }
    local figures = {}
    for _, entry in ipairs(stores) do
      local name, st = entry[1], entry[2]
      local fxs = {}
      for i = 1, 8 do fxs[i] = fixtures.seed(s, "genesys", "t" .. i .. core.random_hex(2)) end
      local t0 = core.now()
      for _, fx in ipairs(fxs) do
        assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target })
      end
      figures[#figures + 1] = ("%s %.1f ms"):format(name, (core.now() - t0) * 1000 / #fxs)
      for _, fx in ipairs(fxs) do
        assert.equal(1, mints(s, fx))
        check_slot(st, fx)
      end
      -- a rotor that found the slot due before another finished it decides again under the lock
      local res = assert(rotor.rotate { slot = fxs[1].slot, provider = fixtures.provider(fxs[1]), store = st,
        target = fxs[1].target, only_if_due = function(rec) return rotor.due(rec) end })
      assert.is_true(res.skipped)
      assert.equal(1, mints(s, fxs[1]))
    end
    print("\n  time per rotation (Genesys regenerate, simulator on loopback): " .. table.concat(figures, ", "))
    assert.equal(0, scan(read_tree(fdir), issued(s)))
    sim.run("rm -rf " .. q(fdir))
  end)

  it("one credential, one slot across rotors: two new slots for one client at once, and one written since", function()
    local rotor = require "rotor"
    -- two store objects on one prefix: two rotors, neither has seen the other's slot
    local fx = fixtures.seed(s, "genesys", "claim" .. core.random_hex(2))
    local slots = { fx.slot, "other/" .. fx.target.client_id }
    local results, errs = rotor.parallel(slots, function(slot)
      return rotor.rotate { slot = slot, provider = fixtures.provider(fx), store = open_store(), target = fx.target }
    end, { concurrency = 2 })
    assert.equal(1, mints(s, fx))
    -- which one takes the lock first is etcd's to say
    local won = results[1] and 1 or 2
    assert.truthy(results[won], tostring(errs[won] and errs[won].message))
    assert.is_nil(results[3 - won])
    -- refused while the other holds the client's lock, or after it stored its record
    local lost = errs[3 - won]
    assert.truthy(lost.kind == "locked" and lost.message:find(("genesys client %s is being claimed by another rotor "
      .. "(pid %d on "):format(fx.target.client_id, core.getpid()), 1, true)
      or lost.kind == "config" and lost.message:find("is also held by slot " .. slots[won], 1, true), lost.message)
    fx.slot = slots[won]
    check_slot(open_store(), fx)
    -- a rotor that listed the store before another wrote a slot for a client: refused at once
    local fy, fz = fixtures.seed(s, "genesys", "claim" .. core.random_hex(2)), fixtures.seed(s, "genesys")
    local mine = open_store()
    assert(rotor.rotate { slot = fz.slot, provider = fixtures.provider(fz), store = mine, target = fz.target })
    assert(rotor.rotate { slot = fy.slot, provider = fixtures.provider(fy), store = open_store(), target = fy.target })
    local res, err = rotor.rotate { slot = "other/" .. fy.target.client_id, provider = fixtures.provider(fy),
                                    store = mine, target = fy.target }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find(("is also held by slot %s"):format(fy.slot), 1, true), err.message)
    assert.equal(1, mints(s, fy))
    check_slot(open_store(), fy)
  end)

  it("one credential, one slot across rotors: a client's lock whose lease lapsed is taken again, or given up",
    function()
    local rotor = require "rotor"
    -- as if lease_ttl passed while the rotor waited: etcd forgot the lease, and this rotor knows it is due
    local function lapse(lock)
      assert(lock.store:call("/v3/lease/revoke", { ID = lock.lease }))
      lock.renewed_at = lock.renewed_at - lock.ttl - 1
    end
    -- a store whose client locks are handed to `taken` as they are taken
    local function watched(taken)
      local st = open_store()
      local real = st.lock_client
      st.lock_client = function(self, key)
        local lock, last = real(self, key)
        if lock then taken(lock) end
        return lock, last
      end
      return st
    end
    local function other_rotor(fx)
      return assert(rotor.rotate { slot = "other/" .. fx.target.client_id, provider = fixtures.provider(fx),
                                   store = open_store(), target = fx.target })
    end
    -- 1: the lease lapses before the claim is noted, and another rotor claims the client meanwhile
    local fx = fixtures.seed(s, "genesys", "lapse" .. core.random_hex(2))
    local done
    local res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), target = fx.target,
      store = watched(function(lock)
        if not done then lapse(lock); done = other_rotor(fx) end
      end) }
    assert.is_nil(res)
    assert.equal("fenced", err.kind, err.message)
    assert.equal(1, mints(s, fx))
    assert.is_false(open_store():get(fx.slot))
    fx.slot = "other/" .. fx.target.client_id
    check_slot(open_store(), fx)
    -- 2: it lapses after the claim was noted, while the token is fetched, and another rotor claims the
    --    client meanwhile: taken again before the record is written, the other's claim is found
    -- 3: the same with no other rotor: taken again, the rotation goes on
    for _, case in ipairs { "other", "alone" } do
      local fy = fixtures.seed(s, "genesys", "lapse" .. core.random_hex(2))
      local held, lapsed
      local p = fixtures.provider(fy)
      local token = p.token
      p.token = function(self, ...)
        if held and not lapsed then
          lapse(held)
          lapsed = case == "other" and other_rotor(fy) or true
        end
        return token(self, ...)
      end
      res, err = rotor.rotate { slot = fy.slot, provider = p, target = fy.target,
        store = watched(function(lock) held = held or lock end) }
      assert.truthy(lapsed)
      assert.equal(1, mints(s, fy))
      if case == "other" then
        assert.is_nil(res)
        assert.equal("config", err.kind, err.message)
        assert.truthy(err.message:find("is also held by slot other/" .. fy.target.client_id, 1, true), err.message)
        -- nothing of it was written: its slot holds no record (which would name the client too)
        assert.is_false(open_store():get(fy.slot))
        fy.slot = "other/" .. fy.target.client_id
      else
        assert.truthy(res, err and err.message)
      end
      check_slot(open_store(), fy)
    end
    -- 4: it lapses between the check of the lease and the first write (a pause this rotor cannot
    --    see: a fleet probe slept there past lease_ttl), and another rotor claims the client: the
    --    write itself finds the lock gone, the claim is taken again and the other's is found. The
    --    record was written, and two slots came to hold one client.
    local fz = fixtures.seed(s, "genesys", "lapse" .. core.random_hex(2))
    local held, paused
    local st = watched(function(lock) held = held or lock end)
    local put = st.put
    st.put = function(self, slot, rec, o)
      if held and not paused then
        assert(held.store:call("/v3/lease/revoke", { ID = held.lease }))   -- etcd forgets it; this rotor does not
        paused = other_rotor(fz)
      end
      return put(self, slot, rec, o)
    end
    res, err = rotor.rotate { slot = fz.slot, provider = fixtures.provider(fz), target = fz.target, store = st }
    assert.truthy(paused)
    assert.is_nil(res)
    assert.equal("config", err.kind, err.message)
    assert.truthy(err.message:find("is also held by slot other/" .. fz.target.client_id, 1, true), err.message)
    assert.is_false(open_store():get(fz.slot))
    assert.equal(1, mints(s, fz))
    fz.slot = "other/" .. fz.target.client_id
    check_slot(open_store(), fz)
  end)

  it("one credential, one slot across rotors: a client's lock held elsewhere is named, with when it lapses", function()
    local key = "genesys:held" .. core.random_hex(4)
    local lock = assert(open_store { lease_ttl = 7 }:lock_client(key))
    local none, err = open_store { lease_ttl = 7 }:lock_client(key)
    lock:unlock()
    assert.is_nil(none)
    assert.equal("locked", err.kind)
    assert.truthy(err.message:find(("%s is being claimed by another rotor (pid %d on "):format(key, core.getpid()), 1,
      true), err.message)
    assert.truthy(err.message:find("a lock whose holder died lapses after its lease, 7 s at most", 1, true),
      err.message)
    -- given back: the next rotor takes it
    assert(open_store():lock_client(key)):unlock()
  end)

  it("one credential, one slot across rotors: a client's lock won on a retried transaction still reads its note",
    function()
    local rotor = require "rotor"
    local b64d = core.b64decode
    -- a rotor that listed the store before another wrote a slot for the client (as above), whose
    -- transaction taking the client's lock reaches etcd but whose answer is lost (the connection
    -- dies after the request went out): its retry finds the lock already its own
    local fy, fz = fixtures.seed(s, "genesys", "retry" .. core.random_hex(2)), fixtures.seed(s, "genesys")
    local mine = open_store()
    assert(rotor.rotate { slot = fz.slot, provider = fixtures.provider(fz), store = mine, target = fz.target })
    assert(rotor.rotate { slot = fy.slot, provider = fixtures.provider(fy), store = open_store(), target = fy.target })
    local lost, lock_key = 0, nil
    local real = mine._request
    mine._request = function(self, path, body, auth)
      local res, ep = real(self, path, body, auth)
      local t = path == "/v3/kv/txn" and json.decode(tostring(body)) or nil
      local key = t and t.compare and t.compare[1] and b64d(t.compare[1].key)
      if key and key:find("/client-locks/", 1, true) and lost == 0 and res and res.status == 200 then
        lost, lock_key = lost + 1, key
        return { error = { kind = "network", message = "connection reset by peer (the spec lost the answer)" },
                 sent = true }, ep
      end
      return res, ep
    end
    local res, err = rotor.rotate { slot = "other/" .. fy.target.client_id, provider = fixtures.provider(fy),
                                    store = mine, target = fy.target }
    assert.equal(1, lost)
    assert.is_nil(res)
    assert.equal("config", err.kind, err.message)
    assert.truthy(err.message:find(("is also held by slot %s"):format(fy.slot), 1, true), err.message)
    assert.equal(1, mints(s, fy))
    check_slot(open_store(), fy)
    -- and the lock it won so was given back
    local r = assert(open_store():call("/v3/kv/range", { key = core.b64encode(lock_key) }))
    assert.is_nil(r.kvs)
  end)

  it("a deploy hook that outlasts the lease: the lock is taken again, since nobody wrote the slot meanwhile", function()
    local rotor = require "rotor"
    local fx = fixtures.seed(s, "genesys", "longhook" .. core.random_hex(2))
    local st = open_store { lease_ttl = 5 }
    local deployed = 0
    local opts = {}
    for k, v in pairs(fx.opts) do opts[k] = v end
    opts.timeout, opts.connect_timeout = 2, 1 -- a minting budget the 5 s lease can outlive
    -- 7 s in the hook: the 5 s lease lapses and etcd deletes the lock key
    local res, err = rotor.rotate { slot = fx.slot, provider = assert(rotor.genesys(opts)), store = st,
      target = fx.target, deploy = function() deployed = deployed + 1; core.sleep(7); return true end }
    assert.truthy(res, tostring(err))
    assert.equal(1, deployed)
    assert.equal(1, mints(s, fx))
    assert.equal(1, st.relocks)
    local rec = check_slot(st, fx)
    assert.equal("ok", rec.last.outcome)
    assert.truthy(fixtures.works(fx, rec.versions.current.client_id, rec.versions.current.secret))
    -- the lock was released at the end: another rotation takes it at once
    local res2, err2 = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = open_store(),
      target = fx.target }
    assert.truthy(res2, tostring(err2))
  end)

  it("sends no minting request its lease cannot outlive; authenticates again when the token is refused", function()
    local rotor = require "rotor"
    local fx = fixtures.seed(s, "genesys", "budget" .. core.random_hex(2))
    local st = open_store { lease_ttl = 5 }
    local opts = {}
    for k, v in pairs(fx.opts) do opts[k] = v end
    opts.timeout, opts.connect_timeout = 10, 2
    local res, err = rotor.rotate { slot = fx.slot, provider = assert(rotor.genesys(opts)), store = st,
                                    target = fx.target }
    assert.is_nil(res)
    assert.equal("config", err.kind)
    assert.matches("lease_ttl 5 s", err.message)
    assert.matches("raise lease_ttl", err.message)
    assert.equal(0, mints(s, fx))
    -- a token etcd does not know (expired, or a restarted member): a new one is fetched
    st = open_store { audit_file = dir .. "/budget-audit.log" }
    assert(st:list())
    st.token = core.secret("not-a-token.1")
    res, err = rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target }
    assert.truthy(res, tostring(err))
    assert.equal(1, mints(s, fx))
    local rec = check_slot(st, fx)
    -- the audit trail went to the configured file, fingerprinted with the key derived from the seal key
    local entries = assert(st:audit_trail():entries())
    local fp
    for _, e in ipairs(entries) do if e.step == "create" and e.outcome == "ok" then fp = e.fingerprint end end
    assert.equal(core.hmac_sha256_hex(st:audit_key(), rec.versions.current.secret), fp)
    assert.equal(0, scan(sim.read_file(dir .. "/budget-audit.log"), issued(s)))
  end)

  it("opens from a config file's spec, paths relative to its directory", function()
    local etcd = require "rotor.store.etcd"
    local st, err = etcd.open({ kind = "etcd", endpoints = cluster.endpoints, key_file = "no-such.key" }, dir)
    assert.is_nil(st)
    assert.matches(dir .. "/no-such.key does not exist", err.message, 1, true)
    local spec = store_spec()
    spec.password_env, spec.password, spec.kind = nil, cluster.password, "etcd"
    spec.key_file = seal_key:match("[^/]+$")
    st = assert(etcd.open(spec, dir))
    assert.is_table(assert(st:list()))
    -- a CA that is not the cluster's: every member refuses the handshake, and the error says what to check;
    -- a member that is down meanwhile does not turn that into "no member answered"
    spec.cainfo = s.ca
    local down = cluster:leader() % #cluster.members + 1
    cluster:kill(down)
    local rec
    rec, err = assert(etcd.open(spec, dir)):get("genesys/x")
    cluster:restart(down)
    assert.is_nil(rec)
    assert.equal("tls", err.kind, err.message)
    assert.matches("check endpoints, cainfo, cert and key", err.message, 1, true)
    cluster:wait_healthy(30, "restart of m" .. down)
  end)

  it("a malformed record in etcd: every reader refuses it, naming its key and what to do; nothing crashes", function()
    -- the records a damaged value, a hand edit or an old writer could leave: each field the
    -- readers walk (the journal, the rotation, a version) of the wrong type
    local fx = fixtures.seed(s, "genesys", "bad" .. core.random_hex(2))
    local base = write_config("malformed", { fx })
    local st = open_store()
    local key = st:slot_key(fx.slot)
    local bad = {
      { why = "journal[1]: an object expected", record = { journal = { 1, 2 } } },
      { why = "rotation: an object expected", record = { rotation = 5 } },
      { why = "versions.current.secret", record = { versions = { current = { client_id = "c", secret = 7 } } } },
    }
    for _, b in ipairs(bad) do
      local record = { slot = fx.slot, provider = "genesys", versions = {}, journal = {} }
      for k, v in pairs(b.record) do record[k] = v end
      assert(st:call("/v3/kv/put", { key = core.b64encode(key),
        value = core.b64encode(json.encode { v = 1, w = "planted", record = record }) }))
      local rec, err = st:get(fx.slot)
      assert.is_nil(rec, b.why)
      assert.equal("store", err.kind)
      assert.matches("holds no valid record: " .. b.why, err.message, 1, true)
      assert.matches(key, err.message, 1, true)
      assert.matches("rotor doctor", err.message, 1, true)
      for _, cmd in ipairs { "status", "doctor" } do
        local out, rc = sim.run((". %s && %s %s --config %s 2>&1"):format(q(base .. "/env"), ROTOR, cmd,
          q(base .. "/rotor.conf.lua")))
        assert.equal(1, rc, cmd .. ": " .. out)
        assert.matches(b.why, out, 1, true)
        assert.is_nil(out:find("traceback", 1, true), out)
      end
      -- a rotation refuses it before sending anything
      local out, rc = sim.run((". %s && %s rotate --config %s 2>&1"):format(q(base .. "/env"), ROTOR,
        q(base .. "/rotor.conf.lua")))
      assert.equal(1, rc, out)
      assert.matches(b.why, out, 1, true)
      assert.equal(0, mints(s, fx))
    end
    -- doctor's command, run as it is printed, the password typed once (it asked for it once per
    -- etcdctl run, twice): the value is kept in a file, the key deleted, and the slot then rotates
    -- anew
    local out = sim.run((". %s && %s doctor --config %s --json"):format(q(base .. "/env"), ROTOR,
      q(base .. "/rotor.conf.lua")))
    local command = json.decode(out).findings[1].command
    local aside, rerun = command:match("^(.*) && (%S*rotor rotate %-%-config .*)$")
    assert.truthy(aside, command)
    assert.matches("--user=rotor get --print-value-only " .. key, aside, 1, true)
    local rc
    out, rc = sim.run(("cd %s && . ./env && printf '%%s\\n' \"$ROTOR_T_ETCD_PASSWORD\" | env -u ETCDCTL_PASSWORD "
      .. "setsid -w sh -c %s 2>&1"):format(q(base), q(aside)))
    assert.equal(0, rc, out)
    assert.equal(1, select(2, out:gsub("etcd password for rotor: ", "")), out)
    assert.matches('"slot":"' .. fx.slot .. '"', core.fs_read(base .. "/" .. require("rotor.store.file").encode(fx.slot)
      .. ".corrupt.json"), 1, true)
    assert.is_false(st:get(fx.slot))
    out, rc = sim.run((". %s && %s 2>&1"):format(q(base .. "/env"), rerun:gsub("^%S*rotor ", ROTOR .. " ")))
    assert.equal(0, rc, out)
    assert.equal(1, mints(s, fx))
    check_slot(st, fx)
  end)

  -- an audit trail grows with every rotation (some 4 KB each): read in one answer, it outgrew
  -- what a response may hold (1 MiB) after a few hundred rotations, and reading it failed
  it("dump and the audit trail read a prefix larger than one answer may hold, in pages", function()
    local st = open_store { prefix = cluster.prefix .. "big/" }
    local trail = st:audit_trail()
    local note = string.rep("n", 3000)
    for w = 1, 21 do
      local batch = {}
      for i = 1, 20 do batch[i] = { slot = ("big/%d"):format(w), step = "create", outcome = "ok", note = note .. i } end
      assert(trail:write(batch))
    end
    local entries = assert(trail:entries())
    assert.equal(420, #entries)
    assert.equal("big/1", entries[1].slot)
    assert.equal("big/21", entries[420].slot)
    assert.equal(420, #assert(st:dump()))
    -- a value as large as etcd takes (900 KiB: 1.2 MB in the answer) is read whole: it was
    -- refused as larger than an answer may be, retried on every member and reported as a cluster
    -- that does not answer
    local key = st:slot_key("big/huge")
    assert(st:call("/v3/kv/put", { key = core.b64encode(key), value = core.b64encode(string.rep("x", 900 * 1024)) }))
    local retries = st.retries
    local rec, err = st:get("big/huge")
    assert.is_nil(rec)
    assert.equal("store", err.kind)
    assert.matches("holds no valid record", err.message, 1, true)
    assert.is_nil(err.message:find("no member", 1, true), err.message)
    assert.equal(retries, st.retries)
  end)

  it("doctor: a slot whose lock a live rotor holds is being rotated, not stopped", function()
    local fx = fixtures.seed(s, "genesys", "run" .. core.random_hex(2))
    local base = write_config("running", { fx })
    local st = open_store()
    local now = os.date("!%Y-%m-%dT%H:%M:%SZ")
    assert(st:put(fx.slot, { slot = fx.slot, provider = "genesys", journal = {},
      rotation = { id = "r1", strategy = "regenerate", step = "create", started = now },
      versions = { current = { client_id = fx.target.client_id, secret = "not-a-real-secret-run", created = now } } }))
    local function doctor()
      local out, rc = sim.run((". %s && %s doctor --config %s --json 2>&1"):format(q(base .. "/env"), ROTOR,
        q(base .. "/rotor.conf.lua")))
      local kinds = {}
      for _, f in ipairs((json.decode(out) or { findings = {} }).findings) do kinds[f.problem] = f end
      return kinds, rc, out
    end
    local lock = assert(st:lock(fx.slot))
    local kinds, rc, out = doctor()
    lock:unlock()
    assert.equal(0, rc, out)
    assert.is_nil(kinds.unfinished_rotation, out)
    assert.truthy(kinds.locked, out)
    assert.matches("(pid " .. core.getpid() .. " on ", kinds.locked.message, 1, true)
    assert.matches("kill -TERM " .. core.getpid() .. "   # on ", kinds.locked.command, 1, true)
    -- its holder gone, the rotation is a stopped one, with the command that resumes it
    kinds, rc, out = doctor()
    assert.equal(1, rc, out)
    assert.is_nil(kinds.locked, out)
    assert.matches("--slot " .. fx.slot, kinds.unfinished_rotation.command, 1, true)
  end)

  -- nginx with the lua module, run in ndir with the configuration conf(port) returns, on a free
  -- loopback port: fn(port) runs, then nginx stops (whatever fn raised is raised after)
  local function with_nginx(ndir, conf, fn)
    sim.run("mkdir -p " .. q(ndir .. "/logs") .. " " .. q(ndir .. "/temp"))
    local user = sim.run("id -u"):match("^0") and ("-g 'user " .. sim.run("id -un"):gsub("%s", "") .. ";'") or ""
    local port
    for _ = 1, 5 do
      port = 20000 + tonumber(core.random_hex(2), 16) % 30000
      sim.write_file(ndir .. "/nginx.conf", conf(port))
      local out, rc = sim.run(("nginx -p %s -c %s -e %s %s 2>&1"):format(q(ndir), q(ndir .. "/nginx.conf"),
        q(ndir .. "/logs/error.log"), user))
      if rc == 0 then break end
      assert(out:find("in use", 1, true), out)
      port = nil
    end
    assert.truthy(port)
    local ok, err = pcall(fn, port)
    local pid = (sim.read_file(ndir .. "/nginx.pid") or ""):match("%d+")
    if pid then sim.run("kill -QUIT " .. pid .. "; sleep 0.3; kill -KILL " .. pid .. " 2>/dev/null") end
    assert(ok, err)
  end

  -- an answer larger than rotor reads (4 MiB) is the same from every member: it was tried on each
  -- and reported as "no member answered... check that the cluster is up". A default etcd cannot
  -- send one (its requests stop at 1.5 MiB), so a member that does is played by nginx on loopback.
  it("an etcd answer larger than rotor reads is named as such at once, not tried on every member", function()
    with_nginx(dir .. "/big", function(port) return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
pid nginx.pid;
error_log logs/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path temp/body; proxy_temp_path temp/proxy; fastcgi_temp_path temp/fastcgi;
  uwsgi_temp_path temp/uwsgi; scgi_temp_path temp/scgi;
  server {
    listen 127.0.0.1:%d;
    location / {
      content_by_lua_block {
        ngx.header["Content-Type"] = "application/json"
        ngx.print('{"header":{},"kvs":[{"key":"', string.rep("A", 5 * 1024 * 1024), '"}]}')
      }
    }
  }
}
]]):format(port) end, function(port)
      local ep = "http://127.0.0.1:" .. port
      local st = assert(require("rotor.store.etcd").new { endpoints = { ep, ep, ep }, prefix = "/big/",
                                                          key_file = seal_key })
      local v, gerr = st:get("genesys/x")
      assert.is_nil(v)
      assert.matches("larger than rotor reads", gerr.message, 1, true)
      assert.is_nil(gerr.message:find("no member answered", 1, true), gerr.message)
      assert.equal(0, st.retries) -- one answer, not rounds over the members
    end)
  end)

  it("rotor.ngx in nginx reads the slot from etcd and picks up a rotation without a reload", function()
    local rotor = require "rotor"
    local fx = fixtures.seed(s, "genesys", "ngx" .. core.random_hex(2))
    local st = open_store()
    local function rotate()
      assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = st, target = fx.target })
      return assert(st:get(fx.slot)).versions.current
    end
    local first = rotate()
    local ndir = dir .. "/ngx"
    local root = (sim.run("pwd"):gsub("%s+$", ""))
    sim.run("mkdir -p " .. q(ndir .. "/logs") .. " " .. q(ndir .. "/temp"))
    local espec = store_spec()
    espec.password_env, espec.password = nil, cluster.password
    assert(core.fs_write_atomic(ndir .. "/gw.json", json.encode {
      etcd = espec, slot = fx.slot,
      options = { base_url = fx.opts.base_url, token_url = fx.opts.token_url, cainfo = s.ca, timeout = 5 },
    }, 384))
    sim.write_file(ndir .. "/gw.lua", ([[
local cjson = require "cjson.safe"
local gw
return { object = function()
  if gw then return gw end
  local f = assert(io.open(%q))
  local c = cjson.decode(f:read("*a"))
  f:close()
  gw = assert(require("rotor.ngx").new { provider = "genesys", options = c.options, etcd = c.etcd,
    slot = c.slot, dict = "rotor_tokens", thread_pool = "rotor", check_interval = 0 })
  return gw
end }
]]):format(ndir .. "/gw.json"))
    with_nginx(ndir, function(port) return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 2;
pid nginx.pid;
error_log logs/error.log notice;
thread_pool rotor threads=2 max_queue=256;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path temp/body; proxy_temp_path temp/proxy; fastcgi_temp_path temp/fastcgi;
  uwsgi_temp_path temp/uwsgi; scgi_temp_path temp/scgi;
  lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;";
  lua_package_cpath "%s/build/jit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
  lua_shared_dict rotor_tokens 1m;
  server {
    listen 127.0.0.1:%d;
    location = /me {
      content_by_lua_block {
        local body, err = require("gw").object():request("GET", "/api/v2/tokens/me")
        if not body then ngx.status = 502 ngx.say(tostring(err)) return end
        ngx.say(require("cjson.safe").encode { client_id = type(body) == "table" and body.OAuthClient
                                                             and body.OAuthClient.id })
      }
    }
  }
}
]]):format(root, root, ndir, root, port) end, function(port)
      local function me()
        local out = sim.run(("curl -s -m 20 -w '\\n%%{http_code}' http://127.0.0.1:%d/me"):format(port))
        local body, code = out:match("^(.*)\n(%d+)%s*$")
        return tonumber(code), body
      end
      local code, body = me()
      assert.equal(200, code, body)
      assert.equal(fx.target.client_id, (json.decode(body) or {}).client_id)
      local second = rotate()
      assert.is_false(second.secret:equals(first.secret))
      -- the old secret is dead at Genesys: a 200 now means nginx read the new one from etcd
      assert.is_false(fixtures.works(fx, first.client_id, first.secret))
      code, body = me()
      assert.equal(200, code, body)
    end)
  end)

  -- a Genesys slot rotated once on etcd: its fixture, a store and a provider object of their own
  local function rotated_once(tag)
    local fx = fixtures.seed(s, "genesys", tag .. core.random_hex(2))
    assert(require("rotor").rotate { slot = fx.slot, provider = fixtures.provider(fx), store = open_store(),
                                     target = fx.target })
    return fx, open_store(), fixtures.provider(fx)
  end

  -- a rotor paused after its lease was checked and before its minting request left: another took
  -- the slot over, then the request went out and ended the secret the other had minted. The fenced
  -- rotor said "the rotor holding the slot now finishes the rotation" (it had) and retried its write
  -- five times: the slot held a dead secret and looked healthy (a fleet probe); then it said to
  -- rotate again, and the secret it held, the one that worked, was lost with it.
  -- p's minting call first runs `meanwhile` (the pause: the lease lapses, another rotor acts)
  local function paused_mint(st, fx, p, meanwhile)
    local mint_op = fx.strategy == "new_client" and "post_oauth_clients" or "post_oauth_client_secret"
    local mint = p[mint_op]
    local done
    p[mint_op] = function(self, ...)
      if not done then
        done = true
        local lock = assert(st.locks[fx.slot])
        assert(st:call("/v3/lease/revoke", { ID = lock.lease }))
        meanwhile()
      end
      return mint(self, ...)
    end
  end

  for _, case in ipairs {
    { what = "after the other finished", other = {} },
    -- the other stopped with its secret pending (a deploy that failed): the late mint ended that
    -- one, which then failed verify on every run, a slot wedged with no working secret
    { what = "while the other's secret was pending", other = { deploy = function() return nil, "consumers down" end } },
  } do
    it("a mint sent after another rotor took the slot over, " .. case.what .. ": the fenced rotor stores the "
       .. "secret it minted, the one that works", function()
      local rotor = require "rotor"
      local fx, st, p = rotated_once("late")
      local other_res, other_err
      paused_mint(st, fx, p, function()
        local o = { slot = fx.slot, provider = fixtures.provider(fx), store = open_store(), target = fx.target }
        for k, v in pairs(case.other) do o[k] = v end
        other_res, other_err = rotor.rotate(o)
      end)
      local puts = 0
      local put = st.put
      st.put = function(...) puts = puts + 1 return put(...) end
      -- due when it starts (--only-due), and not due once the other rotated the slot: the secret
      -- it minted is stored all the same
      local due_calls = 0
      local res, err = rotor.rotate { slot = fx.slot, provider = p, store = st, target = fx.target,
        only_if_due = function() due_calls = due_calls + 1 return due_calls == 1 end }
      if case.other.deploy then
        assert.is_nil(other_res)
        assert.matches("consumers down", other_err.message, 1, true)
      else
        assert(other_res, other_err)
      end
      assert(res, err)
      local lapsed = {}
      for _, w in ipairs(res.warnings) do
        if w:find("lock on the slot lapsed", 1, true) then lapsed[#lapsed + 1] = w end
      end
      assert.equal(1, #lapsed, table.concat(res.warnings, "\n"))
      local rec = check_slot(open_store(), fx)
      local adopted
      for _, e in ipairs(rec.journal) do if e.outcome == "adopted" then adopted = e.note end end
      assert.matches("stored as pending", adopted, 1, true)
      -- the fenced write was refused once, not retried; then one run stored the secret (start,
      -- adopted, then verify, promote, retire and the end, as a rotation writes them)
      assert.is_true(puts <= 8, puts)
    end)
  end

  -- the same pause, and the late request's answer is lost: the fenced rotor holds no secret. It
  -- said "the rotor holding the slot now finishes the rotation" while the slot held a secret its
  -- request may have ended (a probe finding)
  for _, case in ipairs {
    { what = "that ended the slot's secret", lands = true },
    { what = "that never reached the provider", lands = false },
  } do
    it("a mint of unknown outcome sent after another rotor took the slot over, " .. case.what, function()
      local rotor = require "rotor"
      local errors = require "rotor.errors"
      local fx, st, p = rotated_once("lost")
      local mint = p.post_oauth_client_secret
      local paused
      p.post_oauth_client_secret = function(self, ...)
        if paused then return mint(self, ...) end
        paused = true
        local lock = assert(st.locks[fx.slot])
        assert(st:call("/v3/lease/revoke", { ID = lock.lease }))
        assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = open_store(),
                              target = fx.target })
        if case.lands then mint(self, ...) end
        return nil, errors.new { kind = "ambiguous", provider = "genesys", op = "post_oauth_client_secret",
                                 message = "the minting request was sent but its outcome is unknown" }
      end
      local res, err = rotor.rotate { slot = fx.slot, provider = p, store = st, target = fx.target }
      if case.lands then
        assert(res, err)
        local said
        for _, w in ipairs(res.warnings) do
          if w:find("then nothing the slot held worked, so it was rotated again", 1, true) then said = true end
        end
        assert.is_true(said, table.concat(res.warnings, "\n"))
      else
        assert.is_nil(res)
        assert.equal("fenced", err.kind)
        assert.matches("the secret the slot holds still works, so nothing was lost", err.message, 1, true)
        -- nothing written after the other rotor's rotation ended
        local journal = assert(open_store():get(fx.slot)).journal
        assert.same({ "rotation", "done" }, { journal[#journal].step, journal[#journal].outcome })
      end
      check_slot(open_store(), fx)
    end)
  end

  -- the pause came after the mint's answer: the other rotor's recovery minted after it, and the
  -- secret the fenced rotor holds is dead. Taking the lock again, it finds the slot's secret
  -- working and stores nothing.
  it("a rotor fenced after its mint, whose secret a later mint ended, leaves the slot as it is", function()
    local rotor = require "rotor"
    local fx, st, p = rotated_once("early")
    local mint = p.post_oauth_client_secret
    p.post_oauth_client_secret = function(self, ...)
      local r, e = mint(self, ...)
      local lock = assert(st.locks[fx.slot])
      assert(st:call("/v3/lease/revoke", { ID = lock.lease }))
      assert(rotor.rotate { slot = fx.slot, provider = fixtures.provider(fx), store = open_store(),
                            target = fx.target })
      return r, e
    end
    local before = assert(open_store():get(fx.slot))
    local res, err = rotor.rotate { slot = fx.slot, provider = p, store = st, target = fx.target }
    assert.is_nil(res)
    assert.equal("fenced", err.kind)
    assert.matches("not needed: the slot's own secret works. Nothing was lost", err.message, 1, true)
    local rec = check_slot(open_store(), fx)
    assert.is_true(#rec.journal > #before.journal)
    for _, e in ipairs(rec.journal) do assert.are_not.equal("adopted", e.outcome) end
  end)

  -- new_client: the late request makes a client of its own, stored nowhere. The other rotor's
  -- recovery looked for it by name before it existed; the slot's next run finds it and deletes it.
  it("a client created after another rotor took the slot over is found by the slot's next run and deleted", function()
    local rotor = require "rotor"
    local fx = fixtures.seed(s, "genesys_new", "late" .. core.random_hex(2))
    local function rotate(st, p)
      return rotor.rotate { slot = fx.slot, provider = p or fixtures.provider(fx), store = st or open_store(),
                            target = fx.target, strategy = "new_client" }
    end
    local st = open_store()
    local p = fixtures.provider(fx)
    paused_mint(st, fx, p, function() assert(rotate()) end)
    local res, err = rotate(st, p)
    assert.is_nil(res)
    assert.equal("fenced", err.kind)
    assert.matches("no slot holds it. When rotor doctor lists its name as unconfirmed_orphan", err.message, 1, true)
    local rec = assert(open_store():get(fx.slot))
    assert.equal(1, #rec.unfound)
    assert.equal(1, #fixtures.orphans(fx, rec)) -- the late client
    assert(rotate())
    rec = check_slot(open_store(), fx)
    assert.is_nil(rec.unfound)
  end)

  it("a rotor SIGSTOPped past its lease is fenced: the other finishes, its stale write is refused", function()
    local fx = fixtures.seed(s, "genesys", "stop" .. core.random_hex(2))
    local extra = { store = { lease_ttl = 5 }, provider = { timeout = 2, connect_timeout = 1 } }
    local base = write_config("fence", { fx }, extra)
    -- the first rotor's minting call is slowed (1.5 s at the provider)
    fixtures.control(s, "POST", "/faults", { path = fx.mint_path, method = "POST", delay = 1.5, count = 1 })
    local pid1 = spawn(base, 1, "--json")
    -- stop it once its minting request is out: the intent is journalled just before it
    local stopped = false
    local probe = open_store()
    for _ = 1, 200 do
      local rec = probe:get(fx.slot)
      if rec and rec.rotation and rec.rotation.mint then stopped = true break end
      sim.run("sleep 0.05")
    end
    assert.is_true(stopped)
    sim.run("sleep 0.4")
    sim.run("kill -STOP " .. pid1)
    -- past the lease (5 s): the lock lapses; a second rotor takes the slot and completes
    sim.run("sleep 6.5")
    local pid2 = spawn(base, 2, "--json")
    assert.truthy(pid2)
    assert.equal(0, wait_rc(base, 2, 60), core.fs_read(base .. "/err.2"))
    local st = open_store()
    local rec2 = check_slot(st, fx)
    local minted_before_cont = mints(s, fx)
    sim.run("kill -CONT " .. pid1)
    local rc1 = wait_rc(base, 1, 60)
    assert.equal(1, rc1)
    local report = report_slots(base, 1)
    assert.equal("fenced", report[1] and report[1].error and report[1].error.kind,
      core.fs_read(base .. "/out.1") .. core.fs_read(base .. "/err.1"))
    print("\n  fenced rotor: " .. tostring(report[1].error.message))
    -- its stale write went to etcd and was refused by the fencing compare
    assert.matches("etcd refused this rotor's stale write (fenced writes in this process: 1)",
                   report[1].error.message, 1, true)
    -- it sent no minting request after learning it was fenced; the slot holds rotor 2's secret
    assert.equal(minted_before_cont, mints(s, fx))
    local rec = check_slot(st, fx)
    assert.is_true(rec.versions.current.secret:equals(rec2.versions.current.secret))
    assert.equal(rec2.last.rotation, rec.last.rotation)
  end)
end)
