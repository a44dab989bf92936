-- Hardening (issue 11): rotor run as root in a hostile directory, process and network.
-- The store-directory trust rule, read-only commands, the host process (core dumps,
-- dumpability), proxies and loopback, deploy children, dotenv through a link, numbers from outside.
local core = require "rotor.core"
local stores = require "rotor.store"
local sim = require "spec.helpers.sim"

local ROTOR = os.getenv("ROTOR_BIN") or "./build/rotor"
local ROTOR_ABS = ROTOR:sub(1, 1) == "/" and ROTOR or (os.getenv("PWD") .. "/" .. ROTOR)
local q = sim.shell_quote
local NOBODY = 65534
local is_root = sim.run("id -u") == "0\n"

local function sh(cmd)
  return sim.run(cmd .. " 2>&1")
end

-- a Lua chunk run by rotor under a time limit: an open that blocks on a FIFO ends the spec, not
-- the run (a first SIGTERM only asks rotor to stop between steps: SIGKILL 5 s later)
local function run_limited(script)
  return sh("timeout -k 5 20 " .. ROTOR .. " -e " .. q(script))
end

local function tmpdir(tag) return sim.tmpdir("hard-" .. tag) end

-- every entry under dir: name, type, mode, owner, group, mtime, size, link target, and a hash of
-- every regular file's bytes
local function snapshot(dir)
  local meta = assert(sim.run(("cd %s && find . -printf '%%p|%%y|%%m|%%U|%%G|%%T@|%%s|%%l\\n' | sort"):format(q(dir))))
  local sums = assert(sim.run(("cd %s && find . -type f -exec sha256sum {} + | sort"):format(q(dir))))
  return meta .. "\n" .. sums
end

local function put_rotor_config(path, store, slot)
  sim.write_file(path, ([[return { store = %q, slots = { { slot = %q, consumers = "none",
    target = { client_id = "app1" },
    provider = { kind = "genesys", client_id = "cid", client_secret = "not-a-real-secret-1",
                 base_url = "https://api.127.0.0.1.invalid" } } } }]]):format(store, slot))
end

-- plant a link at every name the file store opens for slot genesys/t1
local STORE_NAMES = { "genesys%2Ft1.json", "genesys%2Ft1.lock", "audit.log", ".audit-key",
                      ".client-genesys%20client%20c1.lock" }

describe("the store-directory trust rule #proc", function()
  local base, outside, before
  local victims = {}

  setup(function()
    if not is_root then return end
    base = tmpdir("trust")
    outside = base .. "/outside"
    assert(core.fs_mkdir(outside, 493))
    for i, n in ipairs(STORE_NAMES) do
      victims[n] = outside .. "/victim" .. i
      sim.write_file(victims[n], "precious " .. i .. "\n")
    end
    -- 1: a store directory owned by nobody, a link at every name
    local hostile = base .. "/hostile"
    assert(core.fs_mkdir(hostile, 493))
    for _, n in ipairs(STORE_NAMES) do
      assert(select(2, sim.run(("ln -s %s %s"):format(q(victims[n]), q(hostile .. "/" .. n)))) == 0)
    end
    assert(select(2, sim.run(("chown -hR %d:%d %s"):format(NOBODY, NOBODY, q(hostile)))) == 0)
    -- 2: the store path itself a link, owned by nobody, in a sticky world-writable directory,
    --    pointing at a directory of root's
    assert(core.fs_mkdir(base .. "/sticky", 448))
    assert(select(2, sim.run("chmod 1777 " .. q(base .. "/sticky"))) == 0)
    assert(core.fs_mkdir(outside .. "/rootdir", 493))
    assert(select(2, sim.run(("ln -s %s %s && chown -h %d %s"):format(q(outside .. "/rootdir"),
      q(base .. "/sticky/store"), NOBODY, q(base .. "/sticky/store")))) == 0)
    -- 3: a store directory of root's that others may write
    assert(core.fs_mkdir(base .. "/open", 448))
    assert(select(2, sim.run("chmod 0777 " .. q(base .. "/open"))) == 0)
    -- 4: a directory owned by nobody on the way to a store of root's
    assert(core.fs_mkdir(base .. "/nobodys/store", 448))
    assert(select(2, sim.run(("chown %d %s"):format(NOBODY, q(base .. "/nobodys")))) == 0)
    -- 5: a trusted store directory (root's, 0700) with a link planted at every name
    assert(core.fs_mkdir(base .. "/planted", 448))
    for _, n in ipairs(STORE_NAMES) do
      assert(select(2, sim.run(("ln -s %s %s"):format(q(victims[n]), q(base .. "/planted/" .. n)))) == 0)
    end
    before = snapshot(base)
  end)

  local function pending_unless_root()
    if not is_root then pending("needs root (chown to nobody)") return true end
  end

  local function refuses(dir, reason)
    local s, err = stores.file(dir)
    assert.is_nil(s)
    assert.equal("store", err.kind)
    assert.matches(reason, tostring(err))
    s, err = stores.file(dir, { read_only = true })
    assert.is_nil(s)
    assert.matches(reason, tostring(err))
    for _, cmd in ipairs { "status", "due" } do
      local out, rc = sh(ROTOR .. " " .. cmd .. " " .. q(dir))
      assert.equal(1, rc, out)
      assert.matches(reason, out)
    end
    local cfg = tmpdir("cfg") .. "/cfg.lua"
    put_rotor_config(cfg, dir, "genesys/t1")
    for _, extra in ipairs { "", " --dry-run" } do
      local out, rc = sh(ROTOR .. " rotate --config " .. q(cfg) .. extra)
      assert.equal(1, rc, out)
      assert.matches(reason, out)
      assert.is_nil(out:find("not-a-real-secret-1", 1, true))
    end
    os.remove(cfg)
  end

  it("refuses a store directory owned by another user, following none of its links", function()
    if pending_unless_root() then return end
    refuses(base .. "/hostile", "/hostile is owned by uid 65534, neither root nor the user rotor runs as")
  end)

  it("refuses a store path that is a link owned by another user in a sticky directory", function()
    if pending_unless_root() then return end
    refuses(base .. "/sticky/store", "/sticky/store is a symbolic link owned by uid 65534")
  end)

  it("refuses a store directory writable by group or others", function()
    if pending_unless_root() then return end
    refuses(base .. "/open", "/open is writable by group or others %(mode 0777%)")
  end)

  it("refuses a directory on the way owned by another user", function()
    if pending_unless_root() then return end
    refuses(base .. "/nobodys/store", "/nobodys is owned by uid 65534")
    -- unless the caller names it trusted
    local s = assert(stores.file(base .. "/nobodys/store", { read_only = true,
                                                             trusted = { base .. "/nobodys" } }))
    assert.same({}, s:list())
  end)

  it("in a trusted directory, follows no link planted at any name it opens", function()
    if pending_unless_root() then return end
    local s = assert(stores.file(base .. "/planted", { read_only = true }))
    local rec, err = s:get("genesys/t1")
    assert.is_nil(rec)
    assert.matches("genesys%%2Ft1.json is a symbolic link", tostring(err))
    rec, err = s:audit_key()
    assert.is_nil(rec)
    assert.matches("%.audit%-key is a symbolic link", tostring(err))
    -- the writes go through a process, so the read-only view above cannot be what stops them
    local out, rc = sh(ROTOR .. " -e " .. q(([[
      local s = assert(require("rotor.store").file(%q))
      local l, e1 = s:lock("genesys/t1")
      local k, e2 = s:audit_key()
      local a, e3 = s:audit_append("line\n")
      local c, e4 = s:lock_client("genesys client c1")
      print(l, e1) print(k, e2) print(a, e3) print(c, e4)
      assert(s:put("genesys/t1", { versions = {}, journal = {} }))
      print("put ok")]]):format(base .. "/planted")))
    assert.equal(0, rc, out)
    assert.matches("nil\t.-genesys%%2Ft1.lock is a symbolic link", out)
    assert.matches("nil\t.-%.audit%-key is a symbolic link", out)
    assert.matches("nil\t.-audit%.log is a symbolic link", out)
    assert.matches("nil\t.-%.client%-genesys%%20client%%20c1%.lock is a symbolic link", out)
    -- put replaces the link at the slot's name by a file (rename), never writing through it
    assert.matches("put ok", out)
    for _, n in ipairs(STORE_NAMES) do
      assert.equal("precious " .. (({ 1, 2, 3, 4, 5 })[({ ["genesys%2Ft1.json"] = 1, ["genesys%2Ft1.lock"] = 2,
        ["audit.log"] = 3, [".audit-key"] = 4, [".client-genesys%20client%20c1.lock"] = 5 })[n]]) .. "\n",
        sim.read_file(victims[n]))
    end
    -- put back the link the put replaced, for the checksum comparison
    os.remove(base .. "/planted/genesys%2Ft1.json")
    assert(select(2, sim.run(("ln -s %s %s"):format(q(victims["genesys%2Ft1.json"]),
      q(base .. "/planted/genesys%2Ft1.json")))) == 0)
  end)

  it("changed no file anywhere: checksums, modes, owners and times before and after", function()
    if pending_unless_root() then return end
    local after = snapshot(base)
    -- the planted store itself changed (the put above renamed a file over a link there, which
    -- was then put back); nothing else did
    local function drop_planted(s) return (s:gsub("%./planted[^\n]*\n", "")) end
    assert.equal(drop_planted(before), drop_planted(after))
  end)
end)

-- A config file is Lua that rotor runs with every secret of its store in reach, and so is a script
-- the host runs (from cron, as root). Both were read from wherever they were: a file others may
-- write, in a directory others may write, reached through a link in such a directory, or a FIFO
-- (the read waited for a writer) was run as rotor's own.
describe("a config file or a script another user could change #proc", function()
  it("is not run: named, with the fix, and nothing of it runs", function()
    local d = tmpdir("conf")
    local marker = d .. "/ran"
    local cfg = d .. "/rotor.conf.lua"
    put_rotor_config(cfg, d .. "/store", "genesys/t1")
    -- a config that runs leaves the marker behind
    sim.write_file(cfg, ("io.open(%q, 'w'):close()\n"):format(marker) .. sim.read_file(cfg))
    local function refused(path, reason)
      local out, rc = sh("timeout -k 5 20 " .. ROTOR .. " rotate --dry-run --config " .. q(path))
      assert.equal(2, rc, out)
      assert.matches("cannot read the config file " .. path:gsub("%p", "%%%0") .. ": ", out)
      assert.matches(reason, out)
      assert.is_false(core.fs_exists(marker))
    end
    sh("chmod 0666 " .. q(cfg))
    refused(cfg, "rotor%.conf%.lua is writable by group or others %(mode 0666%): another user could change what "
      .. "rotor runs; chmod go%-w ")
    sh("chmod 0620 " .. q(cfg))
    refused(cfg, "mode 0620")
    sh("chmod 0644 " .. q(cfg) .. " && chmod 0777 " .. q(d))
    refused(cfg, "rotor%-hard%-conf[^ ]* is writable by group or others %(mode 0777%): another user could plant "
      .. "files or links there; chmod go%-w ")
    sh("chmod 0700 " .. q(d))
    -- a link in a directory others may write to the good file: the link could be another one
    -- tomorrow (in a sticky directory, as /tmp, nobody else can replace it: followed, below)
    local open = tmpdir("conf-open")
    sh("chmod 0777 " .. q(open) .. " && ln -s " .. q(cfg) .. " " .. q(open .. "/rotor.conf.lua"))
    refused(open .. "/rotor.conf.lua", "conf%-open[^ ]* is writable by group or others %(mode 0777%)")
    local sticky = tmpdir("conf-sticky")
    sh("chmod 1777 " .. q(sticky) .. " && ln -s " .. q(cfg) .. " " .. q(sticky .. "/rotor.conf.lua"))
    -- a FIFO: refused at once, not waited on (timeout would end it with 124); a pipe too
    sh("mkfifo " .. q(d .. "/fifo.lua"))
    refused(d .. "/fifo.lua",
      "fifo%.lua is not a regular file %(a pipe or FIFO, a device or a directory%): name a regular file")
    local piped, prc = sh("echo 'return {}' | timeout -k 5 20 " .. ROTOR .. " rotate --dry-run --config /dev/stdin")
    assert.equal(2, prc, piped)
    assert.matches("cannot read the config file /dev/stdin: /dev/stdin is not a regular file %(a pipe or FIFO", piped)
    if is_root then
      -- a file of another user, and a link of another user in a good directory
      sh(("chown %d %s"):format(NOBODY, q(cfg)))
      refused(cfg, "is owned by uid 65534, neither root nor the user rotor runs as %(uid 0%): that user could change "
        .. "what rotor runs")
      sh("chown 0 " .. q(cfg) .. " && ln -s rotor.conf.lua " .. q(d .. "/link.lua")
        .. (" && chown -h %d "):format(NOBODY) .. q(d .. "/link.lua"))
      refused(d .. "/link.lua", "link%.lua is a symbolic link owned by uid 65534")
    end
    -- the same file, mode 0644 in a directory of its user's, through a link of its user's: run
    sh("rm -f " .. q(d .. "/link.lua") .. " && ln -s rotor.conf.lua " .. q(d .. "/link.lua"))
    for _, path in ipairs { cfg, d .. "/link.lua", sticky .. "/rotor.conf.lua" } do
      os.remove(marker)
      local out = sh("timeout -k 5 20 " .. ROTOR .. " rotate --dry-run --config " .. q(path))
      assert.is_nil(out:find("cannot read the config file", 1, true), out)
      assert.is_true(core.fs_exists(marker), out)
    end
    sh("rm -rf " .. q(d) .. " " .. q(sticky) .. " " .. q(open))
  end)

  -- a Kubernetes ConfigMap volume (examples/kubernetes/cronjob.yaml): its directory shows mode 0777,
  -- the file is reached through ..data links, and the mount is read-only, so nobody can write it
  it("runs a config from a read-only mount whose directory's mode says 0777 (a ConfigMap volume)", function()
    if not is_root or select(2, sim.run("unshare -m true 2>/dev/null")) ~= 0 then
      pending("needs root and a mount namespace (unshare -m)")
      return
    end
    local d = tmpdir("configmap")
    local marker = d .. "/ran"
    local cfg = d .. "/source.lua"
    put_rotor_config(cfg, d .. "/store", "genesys/t1")
    sim.write_file(cfg, ("io.open(%q, 'w'):close()\n"):format(marker) .. sim.read_file(cfg))
    local m = d .. "/cm"
    local run = ("timeout -k 5 20 %s rotate --dry-run --config %s/rotor.conf.lua"):format(ROTOR_ABS, m)
    local out, rc = sh("unshare -m sh -c " .. q(table.concat({
      "set -e", "mkdir -p " .. q(m), "mount -t tmpfs -o mode=0777 rotor-spec " .. q(m),
      "mkdir " .. q(m .. "/..2026_12_03_00_00_00.1"),
      "cp " .. q(cfg) .. " " .. q(m .. "/..2026_12_03_00_00_00.1/rotor.conf.lua"),
      "chmod 0644 " .. q(m .. "/..2026_12_03_00_00_00.1/rotor.conf.lua"),
      "ln -s ..2026_12_03_00_00_00.1 " .. q(m .. "/..data"),
      "ln -s ..data/rotor.conf.lua " .. q(m .. "/rotor.conf.lua"),
      "echo writable; " .. run .. " || true",
      "mount -o remount,ro,bind " .. q(m),
      "echo read-only; " .. run .. " || true" }, "\n")))
    assert.equal(0, rc, out)
    -- writable, its 0777 directory is refused; read-only, the same layout runs
    local writable, readonly = out:match("writable\n(.-)read%-only\n(.*)$")
    assert.truthy(writable, out)
    assert.matches("cm is writable by group or others %(mode 0777%)", writable)
    assert.is_nil(readonly:find("cannot read the config file", 1, true), readonly)
    assert.is_true(core.fs_exists(marker), out)
    sh("rm -rf " .. q(d))
  end)

  it("nor is a script: the host refuses it as it refuses such a config file, and runs a good one as lua would",
    function()
    local d = tmpdir("script")
    local marker = d .. "/ran"
    local script = d .. "/rotate.lua"
    -- a first line for the kernel, the arguments, and an error whose line is the file's
    sim.write_file(script, ("#!/usr/bin/env rotor\nio.open(%q, 'w'):close()\nprint('args', ...)\n"
      .. "error('on line four')\n"):format(marker))
    sh("chmod 0664 " .. q(script))
    local out, rc = sh("timeout -k 5 20 " .. ROTOR .. " " .. q(script) .. " a b")
    assert.equal(1, rc, out)
    assert.matches("rotor: cannot run " .. script:gsub("%p", "%%%0") .. ": [^\n]*rotate%.lua is writable by group "
      .. "or others %(mode 0664%): another user could change what rotor runs; chmod go%-w ", out)
    assert.is_false(core.fs_exists(marker))
    sh("mkfifo " .. q(d .. "/fifo.lua"))
    out, rc = sh("timeout -k 5 20 " .. ROTOR .. " " .. q(d .. "/fifo.lua"))
    assert.equal(1, rc, out)
    assert.matches("fifo%.lua is not a regular file %(a pipe or FIFO, a device or a directory%)", out)
    sh("chmod 0644 " .. q(script))
    out, rc = sh("timeout -k 5 20 " .. ROTOR .. " " .. q(script) .. " a b")
    assert.equal(1, rc, out)
    assert.is_true(core.fs_exists(marker))
    assert.matches("args\ta\tb\n", out)
    assert.matches("rotate%.lua:4: on line four", out)
    sh("rm -rf " .. q(d))
  end)
end)

describe("store files and modes", function()
  it("lists slots whose names contain .tmp.", function()
    local s = assert(stores.file(tmpdir("tmpname") .. "/s"))
    assert(s:put("a.tmp.b", { versions = {}, journal = {} }))
    assert(s:put("c", { versions = {}, journal = {} }))
    assert.same({ "a.tmp.b", "c" }, s:list())
  end)

  it("makes lock, audit and slot files 0600 and directories 0700 under umask 0277 #proc", function()
    local dir = tmpdir("umask") .. "/made/store"
    local out, rc = sh("umask 0277; " .. ROTOR .. " -e " .. q(([[
      local s = assert(require("rotor.store").file(%q))
      local l = assert(s:lock("x")) l:unlock()
      assert(s:put("x", { versions = {}, journal = {} }))
      assert(s:audit_key()) assert(s:audit_append("{}\n"))
      l = assert(s:lock("x")) print("relocked")]]):format(dir)))
    assert.equal(0, rc, out)
    assert.matches("relocked", out)
    for _, n in ipairs { "x.lock", "x.json", "audit.log", ".audit-key" } do
      assert.equal(384, select(3, core.fs_exists(dir .. "/" .. n)), n)
    end
    assert.equal(448, select(3, core.fs_exists(dir)))
    assert.equal(448, select(3, core.fs_exists(dir:match("^(.*)/store$"))))
  end)

  it("a read-only store creates nothing and refuses writes, saying so", function()
    local dir = tmpdir("ro") .. "/none"
    local s = assert(stores.file(dir, { read_only = true }))
    assert.same({}, s:list())
    assert.is_false(s:get("x"))
    local ok, err = s:put("x", { versions = {}, journal = {} })
    assert.is_nil(ok)
    assert.matches("opened read%-only", tostring(err))
    assert.is_nil(s:lock("x"))
    assert.is_false(core.fs_exists(dir))
  end)
end)

-- the sealing key opens every secret it sealed: it was read from wherever it was, whatever its
-- mode (a key file 0644, in a directory anyone may write, behind a link there), into a Lua string
describe("a sealing key file others could read or swap", function()
  it("is refused, naming the file and the fix; the same key mode 0600 or 0400 seals", function()
    local d = tmpdir("seal")
    local key = d .. "/seal.key"
    sh("head -c 32 /dev/urandom > " .. q(key))
    local function refused(path, reason)
      local st, err = stores.file(d .. "/store", { key_file = path })
      assert.is_nil(st, reason)
      assert.equal("config", err.kind)
      assert.matches("cannot use key_file " .. path:gsub("%p", "%%%0") .. ": ", err.message)
      assert.matches(reason, err.message)
      -- the etcd store reads its key under the same rule
      local est, eerr = require("rotor.store.etcd").new { endpoints = { "https://127.0.0.1:2379" }, key_file = path }
      assert.is_nil(est)
      assert.matches(reason, eerr.message)
    end
    sh("chmod 0644 " .. q(key))
    refused(key, "seal%.key is open to group or others %(mode 0644%): it holds a key that opens every secret "
      .. "it sealed; chmod 600 ")
    sh("chmod 0640 " .. q(key))
    refused(key, "mode 0640")
    sh("chmod 0604 " .. q(key))
    refused(key, "mode 0604")
    sh("chmod 0600 " .. q(key) .. " && chmod 0777 " .. q(d))
    refused(key, "rotor%-hard%-seal[^ ]* is writable by group or others %(mode 0777%)")
    sh("chmod 0700 " .. q(d))
    local open = tmpdir("seal-open")
    sh("chmod 0777 " .. q(open) .. " && ln -s " .. q(key) .. " " .. q(open .. "/seal.key"))
    refused(open .. "/seal.key", "seal%-open[^ ]* is writable by group or others %(mode 0777%)")
    sh("mkfifo -m 0600 " .. q(d .. "/fifo"))
    refused(d .. "/fifo", "fifo is not a regular file")
    if is_root then
      sh(("cp -p %s %s && chown %d %s"):format(q(key), q(d .. "/theirs.key"), NOBODY, q(d .. "/theirs.key")))
      refused(d .. "/theirs.key", "is owned by uid 65534, neither root nor the user rotor runs as")
    end
    for _, mode in ipairs { "0600", "0400" } do
      sh("chmod " .. mode .. " " .. q(key))
      local st = assert(stores.file(d .. "/store", { key_file = key }))
      assert(st:put("genesys/k", { versions = { current = { client_id = "c", secret = core.secret("s-" .. mode) } },
                                   journal = {} }))
      assert.equal("s-" .. mode, assert(st:get("genesys/k")).versions.current.secret:reveal())
      assert.is_nil(sim.read_file(d .. "/store/genesys%2Fk.json"):find("s-" .. mode, 1, true))
    end
    sh("rm -rf " .. q(d) .. " " .. q(open))
  end)
end)

describe("the audit trail's file #proc", function()
  it("a FIFO or a link planted as audit.log: the trail neither blocks on it nor reads through it", function()
    local dir = tmpdir("fifo")
    local outside = dir .. "-outside"
    sim.write_file(outside, "precious, no newline at the end")
    -- in a process under a time limit (run_limited)
    local script = [[
      local s = assert(require("rotor.store").file(%q))
      local trail = assert(require("rotor.audit").open(s))
      local ok, err = trail:write { slot = "x", step = "test", outcome = "ok" }
      print("write", ok, err)
      require("rotor").parallel({ 1 }, function()   -- a group commit, on the durable-write thread
        print("group", trail:write { slot = "x", step = "test", outcome = "ok" })
      end)
      local entries, eerr = trail:entries()
      print("entries", entries, eerr)]]
    assert.equal(0, select(2, sh("mkfifo " .. q(dir .. "/audit.log"))))
    local out, rc = run_limited(script:format(dir))
    assert.equal(0, rc, out)
    assert.matches("write\tnil\t[^\n]*audit%.log is not a regular file; remove it", out)
    assert.matches("group\tnil\t[^\n]*audit%.log is not a regular file; remove it", out)
    assert.matches("entries\tnil\t[^\n]*audit%.log is not a regular file; remove it", out)
    os.remove(dir .. "/audit.log")
    assert.equal(0, select(2, sh("ln -s " .. q(outside) .. " " .. q(dir .. "/audit.log"))))
    out, rc = run_limited(script:format(dir))
    assert.equal(0, rc, out)
    assert.matches("write\tnil\t[^\n]*audit%.log is a symbolic link", out)
    assert.matches("group\tnil\t[^\n]*audit%.log is a symbolic link", out)
    assert.matches("entries\tnil\t[^\n]*audit%.log is a symbolic link", out)
    assert.equal("precious, no newline at the end", sim.read_file(outside))
    os.remove(outside)
    sh("rm -rf " .. q(dir))
  end)
end)

describe("a slot file read by a process of another user #proc", function()
  -- rotor.ngx's workers read a slot file of a store rotor writes as another user: they cannot
  -- apply the store's ownership rule, but open the file itself as the store does
  it("core.fs_read(path, true) neither blocks on a FIFO nor reads through a link", function()
    local dir = tmpdir("strict")
    local outside = dir .. "-outside"
    sim.write_file(outside, "{}")
    sim.write_file(dir .. "/plain.json", '{"a":1}')
    assert.equal(0, select(2, sh("mkfifo " .. q(dir .. "/fifo.json"))))
    assert.equal(0, select(2, sh("ln -s " .. q(outside) .. " " .. q(dir .. "/link.json"))))
    local script = ([[
      local core = require "rotor.core"
      for _, n in ipairs { "plain", "fifo", "link", "none" } do
        print(n, core.fs_read(%q .. "/" .. n .. ".json", true))
      end]]):format(dir)
    local out, rc = run_limited(script)
    assert.equal(0, rc, out)
    assert.matches('plain\t{"a":1}\n', out, 1, true)
    assert.matches("fifo\tnil\t[^\n]*fifo%.json is not a regular file; remove it", out)
    assert.matches("link\tnil\t[^\n]*link%.json is a symbolic link", out)
    assert.matches("none\tnil\tcannot open [^\n]*none%.json: No such file or directory", out)
    -- without strict, a link is followed (files a user names: configurations, dotenv files)
    assert.equal("{}", core.fs_read(dir .. "/link.json"))
    os.remove(outside)
    sh("rm -rf " .. q(dir))
  end)
end)

describe("read-only commands #proc", function()
  it("status, due and rotate --dry-run leave the tree byte-for-byte unchanged", function()
    local root = tmpdir("readonly")
    local dir = root .. "/store"
    local s = assert(stores.file(dir))
    assert(s:put("genesys/t1", { provider = "genesys", versions = { current = { client_id = "app1",
      secret = core.secret("stored-secret-abc"), created = "2020-01-01T00:00:00Z" } }, journal = {} }))
    assert(s:audit_key())
    assert(s:lock("genesys/t1")):unlock()
    -- a mode rotor would tighten, and old times, so any write or chmod shows
    assert(select(2, sim.run(("chmod 0750 %s && touch -h -d '2020-01-02 03:04:05' %s %s/* %s/.audit-key")
      :format(q(dir), q(dir), q(dir), q(dir)))) == 0)
    local cfg = root .. "/cfg.lua"
    put_rotor_config(cfg, dir, "genesys/t1")
    local missing_cfg = root .. "/cfg-missing.lua"
    put_rotor_config(missing_cfg, root .. "/not-yet", "genesys/t1")
    local before = snapshot(root)
    for _, cmd in ipairs {
      "status " .. q(dir), "status " .. q(dir) .. " --json", "due " .. q(dir),
      "rotate --config " .. q(cfg) .. " --dry-run", "rotate --config " .. q(missing_cfg) .. " --dry-run",
    } do
      local out, rc = sh(ROTOR .. " " .. cmd)
      assert.equal(0, rc, cmd .. ": " .. out)
      assert.is_nil(out:find("stored-secret-abc", 1, true))
    end
    assert.equal(before, snapshot(root))
    assert.is_false(core.fs_exists(root .. "/not-yet"))
  end)
end)

describe("the rotor process #proc", function()
  it("is not dumpable and has no core limit: another process of its user cannot read it", function()
    if not is_root then pending("needs root (runs rotor as nobody)") return end
    -- rotor runs as nobody; a second process of nobody tries to read its environment
    local dir = tmpdir("dump")
    assert(select(2, sim.run("chmod 0755 " .. q(dir))) == 0)
    local as_nobody = ("setpriv --reuid=%d --regid=%d --clear-groups "):format(NOBODY, NOBODY)
    -- nobody must reach the host and its modules; when the checkout is private (a 0700 parent),
    -- a copy laid out as the host expects (BIN/rotor, BIN/5.4/rotor/core.so, BIN/../lua) is used
    local bin_dir = ROTOR_ABS:match("^(.*)/[^/]+$")
    local rotor_bin = ROTOR_ABS
    if select(2, sim.run(("%s sh -c %s"):format(as_nobody, q(("test -x %s && test -r %s/5.4/rotor/core.so")
        :format(q(ROTOR_ABS), q(bin_dir)))))) ~= 0 then
      local copy = (sim.run("mktemp -d /tmp/rotor-hard-bin.XXXXXX")):gsub("%s+$", "")
      finally(function() sim.run("rm -rf " .. q(copy)) end)
      assert(select(2, sim.run(("chmod 0755 %s && mkdir -p %s/b/5.4/rotor && cp %s %s/b/rotor && "
        .. "cp %s/5.4/rotor/core.so %s/b/5.4/rotor/ && cp -rL %s/../lua %s/lua && chmod -R a+rX %s")
        :format(q(copy), q(copy), q(ROTOR_ABS), q(copy), q(bin_dir), q(copy), q(bin_dir), q(copy), q(copy)))) == 0)
      rotor_bin = copy .. "/b/rotor"
    end
    -- the script says when it runs: the host's main() (which drops dumpability) is done by then;
    -- an instrumented host spends a while in its sanitizer's start-up before main()
    local ready = dir .. "/ready"
    assert(select(2, sim.run("mkdir -p " .. q(ready) .. " && chmod 0777 " .. q(ready))) == 0)
    local script = ("io.open(%q, 'w'):close() require('rotor.core').sleep(60)"):format(ready .. "/up")
    local out, rc = sim.run(("%s env ROTOR_HARDEN_MARK=visible %s -e %s >/dev/null 2>&1 & echo $!"):format(
      as_nobody, rotor_bin, q(script)))
    assert.equal(0, rc)
    local pid = assert(tonumber(out:match("%d+")))
    finally(function() sim.run("kill " .. pid .. " 2>/dev/null") end)
    for _ = 1, 1000 do
      if core.fs_exists(ready .. "/up") then break end
      sim.run("sleep 0.02")
    end
    assert.is_true(core.fs_exists(ready .. "/up"), "the rotor process never ran its script")
    local status = assert(sim.read_file("/proc/" .. pid .. "/status"))
    assert.matches("Uid:%s+" .. NOBODY, status)
    local peek, prc = sh(as_nobody .. "cat /proc/" .. pid .. "/environ")
    assert.is_not.equal(0, prc)
    assert.is_nil(peek:find("ROTOR_HARDEN_MARK", 1, true))
    assert.matches("Permission denied", peek)
    -- non-dumpable: its /proc files belong to root, not to nobody
    assert.equal("0\n", (sim.run("stat -c %u /proc/" .. pid .. "/environ")))
    assert.matches("Max core file size%s+0%s+0", sim.read_file("/proc/" .. pid .. "/limits"))
  end)

  it("keeps secrets in locked memory, apart from the heap, and reuses it for the next ones (best effort)", function()
    -- AddressSanitizer turns mlock into a no-op (it says so once on stderr)
    if ROTOR:find("/asan/", 1, true) then pending("mlock is a no-op under AddressSanitizer") return end
    local out, rc = sh(ROTOR .. " -e " .. q([[
      local core = require "rotor.core"
      local function locked() return tonumber(io.open("/proc/self/status"):read("a"):match("VmLck:%s*(%d+)")) end
      local before = locked()
      local function round(size)
        local t = {}
        for i = 1, 1000 do t[i] = core.secret(("x"):rep(size)) end
        local during = locked()
        for i = 1, 1000 do t[i]:close() end
        return during
      end
      local first = round(100)
      local after = locked()
      local second = round(100)
      -- a secret larger than the arena's blocks: its heap pages are locked, and unlocked after
      local big = core.secret(("y"):rep(64 * 1024))
      local with_big = locked()
      big:close()
      print(first > before + 50, second <= first, after == first, with_big >= after + 60, locked() == after)]]))
    assert.equal(0, rc, out)
    assert.equal("true\ttrue\ttrue\ttrue\ttrue\n", out)
  end)

  it("ignores SSLKEYLOGFILE", function()
    local dir = tmpdir("keylog")
    local s = sim.start()
    finally(function() s:stop() end)
    local out, rc = sh(("SSLKEYLOGFILE=%s/keys %s -e %s"):format(q(dir), ROTOR, q(([[
      local r = assert(require("rotor.http").request { url = %q, cainfo = %q })
      print(r.status, os.getenv("SSLKEYLOGFILE"))]]):format(s.url .. "/_sim/health", s.ca))))
    assert.equal(0, rc, out)
    assert.equal("200\tnil\n", out)
    assert.is_false(core.fs_exists(dir .. "/keys"))
  end)
end)

describe("deploy children #proc", function()
  it("see only the allowed environment and no inherited descriptor", function()
    local dir = tmpdir("child")
    local s = sim.start()
    finally(function() s:stop() end)
    local out, rc = sh(("ADMIN_SECRET=admin-secret-xyz KEEP_ME=1 %s -e %s"):format(ROTOR, q(([[
      local core = require "rotor.core"
      -- an open libcurl connection (kept alive in the multi's cache) and a store directory
      local m = core.multi()
      m:add { url = %q, cainfo = %q }
      local done repeat done = m:poll(100) until #done > 0
      local store = assert(require("rotor.store").file(%q))
      local sink = require("rotor.store").exec { command = "env > %s/env; ls -l /proc/self/fd > %s/fds; cat > %s/in",
                                                 env = { KEEP_ME = true, EXTRA = "given" } }
      assert(sink:deploy { client_id = "c", secret = core.secret("deploy-secret-1") })
      print(#store:list())]]):format(s.url .. "/_sim/health", s.ca, dir .. "/store", dir, dir, dir))))
    assert.equal(0, rc, out)
    local env = sim.read_file(dir .. "/env")
    assert.is_nil(env:find("ADMIN_SECRET", 1, true))
    assert.matches("\nKEEP_ME=1\n", "\n" .. env)
    assert.matches("\nEXTRA=given\n", "\n" .. env)
    assert.matches("\nPATH=", "\n" .. env)
    assert.equal("deploy-secret-1", sim.read_file(dir .. "/in"))
    -- ls's own descriptors: 0 (the pipe), 1 (the file), 2, and the one ls opens for the listing
    local fds = sim.read_file(dir .. "/fds")
    assert.is_nil(fds:find("socket:", 1, true), fds)
    assert.is_nil(fds:find(dir .. "/store", 1, true), fds)
    local n = 0
    for _ in fds:gmatch("\n[^\n]- (%d+) %-> ") do n = n + 1 end
    assert.is_true(n <= 4, fds)
  end)
end)

describe("the dotenv sink through a link", function()
  it("updates the real file atomically, keeping the link, its owner, group and mode", function()
    local dir = tmpdir("dotenv")
    local real = dir .. "/.env"
    sim.write_file(real, "A=1\nAPP_SECRET=old-one\n")
    local owner = is_root and ("%d:%d"):format(NOBODY, NOBODY) or nil
    local chown = owner and (" && chown " .. owner .. " " .. q(real)) or ""
    assert(select(2, sim.run("chmod 0640 " .. q(real) .. chown)) == 0)
    assert(select(2, sim.run(("ln -s .env %s"):format(q(dir .. "/current.env")))) == 0)
    local sink = stores.dotenv(dir .. "/current.env", { client_id = false, secret = "APP_SECRET" })
    assert(sink { secret = core.secret("new-one") })
    assert.equal("A=1\nAPP_SECRET=new-one\n", sim.read_file(real))
    assert.equal(".env\n", (sim.run("readlink " .. q(dir .. "/current.env"))))
    assert.equal("640", (sim.run("stat -c %a " .. q(real)):gsub("%s+$", "")))
    if owner then assert.equal(owner .. "\n", (sim.run("stat -c %u:%g " .. q(real)))) end
  end)

  -- The sink read the file before writing it with a plain open(): a FIFO at the path (or at the
  -- end of a link) blocked the deploy step, and the rotation with it, for ever. The files a user
  -- names (dotenv files, key_file, an audit trail read back) are now opened without blocking and
  -- must be regular files.
  it("neither blocks on a FIFO at the path or behind a link, nor writes anything #proc", function()
    local dir = tmpdir("dotenv-fifo")
    assert.equal(0, select(2, sh("mkfifo " .. q(dir .. "/fifo.env") .. " && ln -s fifo.env " .. q(dir .. "/link.env"))))
    local script = ([[
      local rotor = require "rotor"
      local core = require "rotor.core"
      for _, n in ipairs { "fifo", "link" } do
        local ok, err = rotor.store.dotenv(%q .. "/" .. n .. ".env", { secret = "S" }) { secret = rotor.secret("x") }
        print(n, ok, err and err.message)
        print(n .. " read", core.fs_read(%q .. "/" .. n .. ".env"))
      end
      print("key", rotor.store.file(%q .. "/store", { key_file = %q .. "/fifo.env" }))]]):format(dir, dir, dir, dir)
    local out, rc = run_limited(script)
    assert.equal(0, rc, out)
    assert.matches("fifo	nil	cannot read [^\n]*fifo%.env[^\n]*is not a regular file", out)
    assert.matches("link	nil	cannot read [^\n]*link%.env[^\n]*is not a regular file", out)
    assert.matches("fifo read	nil	[^\n]*fifo%.env is not a regular file", out)
    assert.matches("key	nil	[^\n]*key_file[^\n]*is not a regular file", out)
    -- the path is the user's: never advice to remove what is there (it may be /dev/null)
    assert.is_nil(out:find("remove it", 1, true), out)
    assert.equal("fifo\n", (sim.run("stat -c %F " .. q(dir .. "/fifo.env"))))
    sh("rm -rf " .. q(dir))
  end)

  it("refuses a link owned by another user to a file it does not own #proc", function()
    if not is_root then pending("needs root (chown)") return end
    local dir = tmpdir("dotenv2")
    sim.write_file(dir .. "/target", "K=v\n")
    assert(select(2, sim.run(("ln -s target %s && chown -h %d %s"):format(q(dir .. "/link"), NOBODY,
      q(dir .. "/link")))) == 0)
    local ok, err = stores.dotenv(dir .. "/link", {})({ secret = "s" })
    assert.is_nil(ok)
    assert.matches("link owned by uid 65534", tostring(err))
    assert.equal("K=v\n", sim.read_file(dir .. "/target"))
  end)
end)

describe("numbers from outside", function()
  it("clamps token lifetimes to [120, 86400] seconds", function()
    core.token_clear()
    local nan = 0 / 0
    for _, c in ipairs { { nan, 120 }, { -5, 120 }, { 0, 120 }, { 1e400, 86400 }, { 3600, 3600 } } do
      assert.equal(c[2], core.token_put("k", "tok", c[1]))
      local t, left = core.token_get("k", 60)
      assert.is_truthy(t, tostring(c[1]))
      assert.is_true(left <= c[2] and left > c[2] - 5)
    end
    core.token_clear()
  end)

  it("refuses bad timeouts and caps with a clear error before sending", function()
    local m = core.multi()
    finally(function() m:close() end)
    local bad = {
      { "timeout", 0 / 0 }, { "timeout", -1 }, { "timeout", 1e300 }, { "timeout", "10" },
      { "connect_timeout", 0 }, { "low_speed_time", 1e20 }, { "max_body", -1 }, { "max_body", 2 ^ 40 },
      { "max_body", 1.5 }, { "max_headers", 0 }, { "max_headers", 1e6 },
    }
    for _, c in ipairs(bad) do
      local ok, err = pcall(m.add, m, { url = "http://127.0.0.1:1/", [c[1]] = c[2] })
      assert.is_false(ok)
      assert.matches("request: " .. c[1] .. " must be", tostring(err))
    end
    assert.equal(0, m:pending())
  end)
end)

describe("proxies #proc", function()
  local s, dir, proxy_port, origin_port

  local function start_tinyproxy(name)
    for _ = 1, 10 do
      local port = 20000 + tonumber(core.random_hex(2), 16) % 30000
      sim.write_file(dir .. "/" .. name .. ".conf", table.concat({
        "Port " .. port, "Listen 127.0.0.1", "Timeout 30", "MaxClients 20", "Allow 127.0.0.1",
        ('LogFile "%s/%s.log"'):format(dir, name), "LogLevel Info",
        ('PidFile "%s/%s.pid"'):format(dir, name), "" }, "\n"))
      sim.run(("tinyproxy -c %s"):format(q(dir .. "/" .. name .. ".conf")))
      for _ = 1, 20 do
        local _, rc = sim.run(("curl -s -o /dev/null --max-time 2 http://127.0.0.1:%d/"):format(port))
        if rc == 0 then return port end
        sim.run("sleep 0.05")
      end
      sim.run(("kill $(cat %s) 2>/dev/null"):format(q(dir .. "/" .. name .. ".pid")))
    end
    error("tinyproxy did not start")
  end

  local function connections(name)
    local n = 0
    for _ in (sim.read_file(dir .. "/" .. name .. ".log") or ""):gmatch("Connect %(file descriptor") do n = n + 1 end
    return n
  end

  setup(function()
    s = sim.start()
    dir = s.dir .. "/hardening-proxy"
    assert(core.fs_mkdir(dir, 448))
    proxy_port = start_tinyproxy("proxy")
    origin_port = start_tinyproxy("origin") -- a plain-http server on loopback (it answers 4xx)
  end)

  teardown(function()
    for _, n in ipairs { "proxy", "origin" } do
      sim.run(("kill $(cat %s) 2>/dev/null"):format(q(dir .. "/" .. n .. ".pid")))
    end
    if s then s:stop() end
  end)

  it("sends no loopback request through http_proxy, https_proxy or the proxy option", function()
    local before, origin_before = connections("proxy"), connections("origin")
    local proxy = "http://127.0.0.1:" .. proxy_port
    local out, rc = sh(("http_proxy=%s HTTP_PROXY=%s https_proxy=%s ALL_PROXY=%s %s -e %s"):format(
      proxy, proxy, proxy, proxy, ROTOR, q(([[
      local http = require "rotor.http"
      local a = assert(http.request { url = %q, userpwd = "user:basic-pass-1" })
      local b = assert(http.request { url = %q, proxy = %q })
      local c = assert(http.request { url = %q, cainfo = %q, proxy = %q })
      print(a.status > 0, b.status > 0, c.status)]]):format(
        "http://127.0.0.1:" .. origin_port .. "/x", "http://localhost:" .. origin_port .. "/y", proxy,
        s.url .. "/_sim/health", s.ca, proxy))))
    assert.equal(0, rc, out)
    assert.equal("true\ttrue\t200\n", out)
    assert.equal(before, connections("proxy"))
    -- both plain-http requests reached the origin directly (a 4xx may be retried)
    assert.is_true(connections("origin") >= origin_before + 2)
  end)
end)
