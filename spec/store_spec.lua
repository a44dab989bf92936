-- The file store, the dotenv and exec deploy sinks, and the fs primitives under them.
local core = require "rotor.core"
local file_store = require "rotor.store.file"
local stores = require "rotor.store"

local function tmpdir() return require("spec.helpers.sim").tmpdir("store") end

local function mode(path)
  local _, _, m = core.fs_exists(path)
  return m
end

describe("rotor.store.file", function()
  local dir, store
  before_each(function()
    dir = tmpdir() .. "/secrets"
    store = assert(stores.file(dir))
  end)

  it("creates a 0700 directory and 0600 files; slot names map to safe file names", function()
    assert.equal(448, mode(dir))
    assert(store:put("genesys/reporting", { versions = { current = { client_id = "a", secret = core.secret("s1") } },
                                            journal = {} }))
    assert.equal(dir .. "/genesys%2Freporting.json", store:path("genesys/reporting"))
    assert.equal(384, mode(store:path("genesys/reporting")))
    assert.equal("%2E.%2Fx", file_store.encode("../x"))
    assert.equal("../x", file_store.decode(file_store.encode("../x")))
    assert.error_matches(function() store:get("") end, "a slot name (1-200 printable bytes) expected", nil, true)
    assert.error_matches(function() store:get("a\nb") end, "a slot name (1-200 printable bytes) expected", nil, true)
  end)

  it("round-trips versions; secrets come back as rotor.secret; absent slots are false", function()
    assert.is_false(store:get("nope"))
    local rec = { provider = "genesys", journal = { { step = "create", outcome = "ok" } }, versions = {
      current = { client_id = "c1", secret = core.secret("cur"), created = "2024-01-01T00:00:00Z",
                  expires = "2025-01-01T00:00:00Z", meta = { k = "v" } },
      pending = { client_id = "c2", secret = "pend" },
      previous = { client_id = "c0" },
    } }
    assert(store:put("x", rec))
    local back = assert(store:get("x"))
    assert.is_true(core.is_secret(back.versions.current.secret))
    assert.equal("cur", back.versions.current.secret:reveal())
    assert.equal("pend", back.versions.pending.secret:reveal())
    assert.equal("v", back.versions.current.meta.k)
    assert.equal("ok", back.journal[1].outcome)
    assert.is_nil(back.versions.previous.secret)
    assert.same({ "x" }, store:list())
    -- no temporary files are left behind
    for _, n in ipairs(core.fs_list(dir)) do assert.is_nil(n:find(".tmp.", 1, true)) end
  end)

  it("keeps the journal bounded", function()
    local s2 = assert(file_store.new(dir, { journal_max = 20 }))
    local j = {}
    for i = 1, 32 do j[i] = { step = "s" .. i } end
    assert(s2:put("j", { versions = {}, journal = j }))
    local back = assert(s2:get("j"))
    assert.equal(20, #back.journal)
    assert.equal("s32", back.journal[20].step)
  end)

  -- an option misspelt or of the wrong kind was ignored or failed late: a journal_max given as text
  -- ended the first rotation in "unexpected error", a misspelt key_file left secrets unsealed, a
  -- misspelt dotenv or exec option deployed the new secret where (or as) the application does not
  -- read it, and retire then took the old one away
  it("refuses an option it does not know, or of the wrong kind, naming it", function()
    local cases = {
      { function() return file_store.new(dir, { jornal_max = 50 }) end,
        "rotor.store.file: jornal_max: unknown option; did you mean journal_max?" },
      { function() return file_store.new(dir, { key_fle = "seal.key" }) end,
        "rotor.store.file: key_fle: unknown option; did you mean key_file?" },
      { function() return file_store.new(dir, { journal_max = "50" }) end,
        "rotor.store.file: journal_max: a whole number of entries from 20 to 100000 expected, got 50" },
      { function() return file_store.new(dir, { journal_max = 5 }) end, "journal_max: a whole number" },
      { function() return file_store.new(dir, { journal_max = 0 / 0 }) end, "journal_max: a whole number" },
      { function() return file_store.new(dir, { read_only = "yes" }) end, "read_only: true or false expected" },
      { function() return stores.dotenv(dir .. "/app.env", { secrte = "APP_SECRET" }) end,
        "rotor.store.dotenv: secrte: unknown option; did you mean secret?" },
      { function() return stores.exec { command = "cat", imput = "json" } end,
        "rotor.store.exec: imput: unknown option; did you mean input?" },
      { function() return stores.exec { command = "cat", name = 5 } end, "rotor.store.exec: name must be" },
    }
    for _, c in ipairs(cases) do assert.error_matches(c[1], c[2], nil, true) end
    local etcd = require "rotor.store.etcd"
    local problems = table.concat(etcd.check { endpoints = { "https://127.0.0.1:2379" }, key_file = "k",
      journal_max = "50" }, "\n")
    assert.truthy(problems:find("journal_max: a whole number", 1, true), problems)
  end)

  it("locks a slot: a second lock fails with kind locked until released", function()
    local l1 = assert(store:lock("a/b"))
    local l2, err = store:lock("a/b")
    assert.is_nil(l2)
    assert.equal("locked", err.kind)
    assert.matches("pid " .. core.getpid(), tostring(err))
    assert.truthy(store:lock("other"))
    l1:unlock()
    l1:close() -- idempotent
    assert.truthy(store:lock("a/b"))
  end)

  it("locks a client: each holder gets the slot the last one named; a slot's lock and listing ignore it", function()
    local key = "genesys client 0a/b c"
    local l1, last = store:lock_client(key)
    assert.truthy(l1)
    assert.is_nil(last)
    local l2, err = store:lock_client(key)
    assert.is_nil(l2)
    assert.equal("locked", err.kind)
    assert.truthy(tostring(err.message):find(key .. " is being claimed by another rotor (pid " .. core.getpid(), 1,
      true))
    assert.error_matches(function() l1:set_note("two\nlines") end, "a note of one line", nil, true)
    assert.is_true(l1:set_note("slot/one"))
    l1:unlock()
    local l3
    l3, last = store:lock_client(key)
    assert.equal("slot/one", last)
    -- a shorter note replaces the longer one whole
    assert.is_true(l3:set_note("s2"))
    l3:unlock()
    -- a holder that names nothing (its claim was refused) leaves the note as it was
    l3, last = store:lock_client(key)
    assert.equal("s2", last)
    l3:unlock()
    l3, last = store:lock_client(key)
    assert.equal("s2", last)
    l3:unlock()
    local names = assert(store:list())
    for _, n in ipairs(names) do assert.is_nil(n:find("client", 1, true), n) end
    -- the pid line stays the first line, the note after it
    local text = assert(core.fs_read(store.dir .. "/.client-genesys%20client%200a%2Fb%20c.lock"))
    assert.equal(core.getpid(), tonumber(text:match("^(%d+) *\n")))
    assert.equal("s2\n", text:sub(17))
    -- a key too long for a file name gets a fingerprint in its place
    local long = assert(store:lock_client("spapi client " .. ("x"):rep(300)))
    long:unlock()
  end)

  it("keeps a 0600 audit key, made once", function()
    local k = assert(store:audit_key())
    assert.equal(64, #k)
    assert.equal(384, mode(dir .. "/.audit-key"))
    assert.equal(k, assert(file_store.new(dir)):audit_key())
  end)

  it("reports a corrupt slot file as a store error", function()
    assert(core.fs_write_atomic(store:path("bad"), "{not json", 384))
    local rec, err = store:get("bad")
    assert.is_nil(rec)
    assert.equal("store", err.kind)
  end)
end)

describe("rotor.store.dotenv", function()
  it("replaces its keys, keeps other lines, writes atomically keeping the mode less others' access", function()
    local path = tmpdir() .. "/app.env"
    assert(core.fs_write_atomic(path, "# app\nOTHER=1\nAPP_SECRET=old\n", 420))
    local sink = stores.dotenv(path, { client_id = "APP_ID", secret = "APP_SECRET" })
    assert(sink { client_id = "id-1", secret = core.secret("p+q/r= s\"x") })
    local text = assert(core.fs_read(path))
    assert.matches("# app\nOTHER=1\n", text, 1, true)
    assert.equal(1, select(2, text:gsub("APP_SECRET=", "")))
    local v = assert(sink:read())
    assert.equal("p+q/r= s\"x", v.APP_SECRET:reveal())
    assert.equal("id-1", v.APP_ID)
    assert.equal(416, mode(path)) -- 0644 -> 0640
    local fresh = tmpdir() .. "/new.env"
    assert(stores.dotenv(fresh, {})({ secret = "s" }))
    assert.equal(384, mode(fresh))
  end)
end)

describe("rotor.store.exec", function()
  it("pipes the secret to the command's stdin, never its arguments or environment", function()
    local d = tmpdir()
    local out = d .. "/got"
    local sink = stores.exec { command = "cat > " .. out .. "; echo {client_id} > " .. d .. "/id; env > "
                                         .. d .. "/env" }
    assert(sink:deploy { client_id = "cid", secret = core.secret("TOPSECRET") })
    assert.equal("TOPSECRET", core.fs_read(out))
    assert.equal("cid\n", core.fs_read(d .. "/id"))
    assert.is_nil(core.fs_read(d .. "/env"):find("TOPSECRET", 1, true))
    local bad = stores.exec { command = "cat >/dev/null; exit 3" }
    local ok, err = bad:deploy { client_id = "c", secret = "x" }
    assert.is_nil(ok)
    assert.matches("failed", tostring(err))
  end)
end)

describe("rotor.store.exec, a command that never ends", function()
  -- the sink told a timeout from an interrupt by the first words of core.spawn's message
  it("core.spawn says why it stopped a command: the reason, beside the message", function()
    local code, msg, reason = core.spawn { argv = { "/bin/sleep", "30" }, env = {}, timeout = 0.2 }
    assert.is_nil(code)
    assert.equal("timeout", reason)
    assert.truthy(msg:find("timed out after", 1, true), msg)
    code, msg, reason = core.spawn { argv = { "/bin/sh", "-c", "exit 3" }, env = {} }
    assert.same({ 3, true }, { code, msg })
    assert.is_nil(reason)
  end)

  -- a deploy command that hung (a prompt, a network wait) held the rotation and its lock for ever
  -- the input was written before the wait began, blocking: past 64 kB (a pipe's room), a command
  -- that read nothing held rotor until it ended, its timeout never checked
  it("that reads nothing of a large input is still stopped after its timeout", function()
    local sink = stores.exec { command = "sleep 30", timeout = 0.5 }
    local t0 = core.now()
    local ok, err = sink:deploy { client_id = "c", secret = core.secret(("s"):rep(200000)) }
    assert.is_nil(ok)
    assert.truthy(err.message:find("deploy command sleep did not finish within 0.5 s and was stopped", 1, true),
      err.message)
    assert.truthy(core.now() - t0 < 20)
  end)

  it("is stopped after its timeout, with everything it started, and the deploy fails", function()
    local d = tmpdir()
    local sink = stores.exec { command = "sleep 60 & echo $! > " .. d .. "/pid; wait", timeout = 0.5 }
    local t0 = core.now()
    local ok, err = sink:deploy { client_id = "c", secret = core.secret("not-a-real-secret-12") }
    local took = core.now() - t0
    assert.is_nil(ok)
    assert.equal("store", err.kind)
    assert.truthy(err.message:find("deploy command sleep did not finish within 0.5 s and was stopped", 1, true),
      err.message)
    assert.truthy(took < 20, took) -- 0.5 s and a SIGTERM; the command alone would take 60
    local pid = assert(tonumber(core.fs_read(d .. "/pid"):match("%d+")))
    -- the background sleep got the signal too (it may take a moment to be reaped by init)
    local alive
    for _ = 1, 50 do
      local p = io.popen(("if kill -0 %d 2>/dev/null && ! grep -q '^State:.*Z' /proc/%d/status; then echo alive; fi")
        :format(pid, pid))
      alive = p:read("*a"):find("alive", 1, true)
      p:close()
      if not alive then break end
      os.execute("sleep 0.1")
    end
    assert.falsy(alive, "the background sleep survived")
    assert.error_matches(function() stores.exec { command = "cat", timeout = 0 } end,
      "timeout: a number of seconds above 0, at most 86400 expected, got 0")
    assert.equal(3600, stores.exec { command = "cat" }.timeout)
    assert(stores.exec { command = "cat >/dev/null", timeout = 5 }:deploy { client_id = "c", secret = "x" })
  end)
end)

describe("core fs primitives", function()
  it("fs_write_atomic accepts a secret and leaves mode 0600", function()
    local p = tmpdir() .. "/f"
    assert(core.fs_write_atomic(p, core.secret("abc")))
    assert.equal("abc", core.fs_read(p))
    assert.equal(384, mode(p))
    local none, msg = core.fs_read(p .. ".missing")
    assert.is_nil(none)
    assert.matches("No such file", msg)
  end)

  it("fs_append appends with fsync", function()
    local p = tmpdir() .. "/log"
    assert(core.fs_append(p, "a\n"))
    assert(core.fs_append(p, "b\n"))
    assert.equal("a\nb\n", core.fs_read(p))
    assert.equal(384, mode(p))
  end)
end)
