-- spec.helpers.etcd_cluster: a real 3-member etcd cluster on 127.0.0.1 (random ports) for specs.
--
--   local etcd = require "spec.helpers.etcd_cluster"
--   local c = etcd.start{ dir = tmpdir }   -- TLS everywhere, client certificates required, auth on
--   c.endpoints        { "https://127.0.0.1:PORT", ... } (the client URLs of the members)
--   c.ca, c.cert, c.key  the CA and rotor's client certificate (no CommonName: see below)
--   c.user, c.password, c.prefix   the `rotor` user, allowed readwrite on c.prefix only
--   c:store_spec(extra)  the fields of rotor.store.etcd{...} for this cluster (plus extra)
--   c:etcdctl(args)    -> output, exit code (as root, through the root client certificate)
--   c:leader()         -> index of the member that leads now (nil when none answers)
--   c:kill(i[, sig])   stop member i (SIGKILL by default); c:restart(i) starts it again
--   c:stop()           stop every member (the data directories stay in dir for the leak scan)
--   etcd_cluster.write_rotor_config(base, fixtures, { store = <store fields>, provider = {...} }, env)
--
-- Certificates are made with the openssl CLI in dir. etcd 3.4 takes the CommonName of a client
-- certificate as the user name when client-certificate auth is on, and its JSON gateway then
-- answers 400 to such a client: rotor's certificate has a subject without CN (O=rotor); the
-- root certificate (CN=root) is for etcdctl, which speaks gRPC.
local sim = require "spec.helpers.sim"

local _M = {}

local q = sim.shell_quote
local run = sim.run

local function must(cmd, what)
  local out, rc = run(cmd .. " 2>&1")
  if rc ~= 0 then error(what .. " failed (exit " .. rc .. "): " .. out, 2) end
  return out
end

local function random_port()
  local f = assert(io.open("/dev/urandom", "rb"))
  local a, b = f:read(2):byte(1, 2)
  f:close()
  -- below Linux's ephemeral range (32768 and up): a member that is down for a while must not find
  -- its port taken as the source port of some outgoing connection when it starts again
  return 20000 + (a * 256 + b) % 12000
end

local function make_certs(dir)
  local d = q(dir)
  local ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  must(("cd %s && openssl req -x509 -new %s -keyout ca.key -out ca.pem -days 2 -subj '/CN=rotor spec etcd CA'")
    :format(d, ec), "openssl (CA)")
  -- one certificate for every member: server and peer (client) use, SAN 127.0.0.1
  must(("cd %s && printf '%%s\\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' "
    .. "'extendedKeyUsage=serverAuth,clientAuth' > server.ext && "
    .. "openssl req -new %s -keyout server.key -out server.csr -subj '/CN=etcd member' && "
    .. "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
    .. "-extfile server.ext -out server.pem"):format(d, ec), "openssl (member certificate)")
  must(("cd %s && printf '%%s\\n' 'extendedKeyUsage=clientAuth' > client.ext && "
    .. "openssl req -new %s -keyout root.key -out root.csr -subj '/CN=root' && "
    .. "openssl x509 -req -in root.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
    .. "-extfile client.ext -out root.pem && "
    -- rotor's client certificate: no CommonName (the gateway refuses one that has it)
    .. "openssl req -new %s -keyout rotor.key -out rotor.csr -subj '/O=rotor' && "
    .. "openssl x509 -req -in rotor.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
    .. "-extfile client.ext -out rotor.pem && chmod 600 *.key"):format(d, ec, ec), "openssl (client certificates)")
end

local Cluster = {}
Cluster.__index = Cluster

function Cluster:member_cmd(i, state)
  local m = self.members[i]
  local d = self.dir
  local args = {
    "--name", m.name, "--data-dir", m.data,
    "--listen-client-urls", m.client, "--advertise-client-urls", m.client,
    "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
    "--initial-cluster", self.initial, "--initial-cluster-state", state or "new",
    "--initial-cluster-token", self.token,
    "--cert-file", d .. "/server.pem", "--key-file", d .. "/server.key",
    "--client-cert-auth", "--trusted-ca-file", d .. "/ca.pem",
    "--peer-cert-file", d .. "/server.pem", "--peer-key-file", d .. "/server.key",
    "--peer-client-cert-auth", "--peer-trusted-ca-file", d .. "/ca.pem",
    -- snapshots early, so that the leak scan reads real snapshot files too
    "--snapshot-count", "500",
    "--heartbeat-interval", "100", "--election-timeout", "1000",
    "--logger", "zap", "--log-outputs", m.log,
  }
  for i2, a in ipairs(args) do args[i2] = q(a) end
  return "ETCD_UNSUPPORTED_ARCH= exec etcd " .. table.concat(args, " ")
end

function Cluster:spawn(i, state)
  local m = self.members[i]
  local out = must(("setsid sh -c %s > %s 2>&1 < /dev/null & echo $!"):format(
    q(self:member_cmd(i, state)), q(m.log .. ".out")), "starting etcd member " .. m.name)
  m.pid = tonumber(out:match("(%d+)"))
end

function Cluster:etcdctl(args, endpoints)
  local d = self.dir
  return run(("ETCDCTL_API=3 etcdctl --endpoints=%s --cacert=%s --cert=%s --key=%s "
    .. "--dial-timeout=2s --command-timeout=5s %s 2>&1"):format(
    q(endpoints or table.concat(self.endpoints, ",")), q(d .. "/ca.pem"), q(d .. "/root.pem"),
    q(d .. "/root.key"), args))
end

local function alive(pid)
  local _, rc = run("kill -0 " .. tostring(pid) .. " 2>/dev/null")
  return rc == 0
end

function Cluster:healthy()
  local _, rc = self:etcdctl("endpoint health")
  return rc == 0
end

function Cluster:wait_healthy(seconds, what)
  for _ = 1, seconds * 5 do
    if self:healthy() then return true end
    for _, m in ipairs(self.members) do
      if m.pid and not m.stopped and not alive(m.pid) then
        error(("etcd member %s died (%s); the end of its log:\n%s"):format(m.name, tostring(what),
          run("tail -n 15 " .. q(m.log) .. " " .. q(m.log .. ".out") .. " 2>&1")), 2)
      end
    end
    run("sleep 0.2")
  end
  error("etcd cluster did not become healthy (" .. tostring(what) .. "); logs in " .. self.dir, 2)
end

--- The index of the member leading now, nil if none answers.
function Cluster:leader()
  for i, m in ipairs(self.members) do
    if not m.stopped then
      local out, rc = self:etcdctl("endpoint status -w json", m.client)
      if rc == 0 then
        local cjson = require "cjson.safe"
        local st = cjson.decode(out)
        local s = type(st) == "table" and st[1] and st[1].Status
        if s and s.leader and s.header and s.leader == s.header.member_id then return i end
      end
    end
  end
  return nil
end

function Cluster:kill(i, sig)
  local m = self.members[i]
  run(("kill -%s %d 2>/dev/null"):format(sig or "KILL", m.pid))
  if (sig or "KILL") == "KILL" or sig == "TERM" then
    for _ = 1, 50 do
      if not alive(m.pid) then break end
      run("sleep 0.1")
    end
    m.stopped = true
  end
end

function Cluster:restart(i)
  self.members[i].stopped = false
  self:spawn(i, "existing")
end

function Cluster:stop()
  for i, m in ipairs(self.members) do
    if m.pid and not m.stopped then self:kill(i, "TERM") end
  end
end

function Cluster:store_spec(extra)
  local t = {
    endpoints = self.endpoints, prefix = self.prefix, cainfo = self.ca, cert = self.cert, key = self.key,
    username = self.user, password = self.password,
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

--- A config file for `rotor rotate --config` over fixtures (spec.helpers.rotor_fixtures.seed):
-- base/manifest.json (no secret), base/env (the bootstrap secrets and env_extra, 0600, for the
-- shell to source), base/rotor.conf.lua (reads both; store = { kind = "etcd", <o.store: the fields
-- of rotor.store.etcd> }). o.provider: options added to every provider. Returns base.
function _M.write_rotor_config(base, fxs, o, env_extra)
  local core = require "rotor.core"
  local json = require "rotor.json"
  local fixtures = require "spec.helpers.rotor_fixtures"
  local manifest = { store = o.store, slots = {} }
  local env = {}
  for k, v in pairs(env_extra or {}) do env[k] = v end
  for i, fx in ipairs(fxs) do
    local opts = {}
    for k, v in pairs(fx.opts) do opts[k] = v end
    env["T_SECRET_" .. i] = opts.client_secret
    opts.client_secret = nil
    if opts.sqs then
      local sqs = {}
      for k, v in pairs(opts.sqs) do sqs[k] = v end
      env["T_SQS_" .. i] = sqs.secret_key
      sqs.secret_key = nil
      opts.sqs = sqs
    end
    for k, v in pairs(o.provider or {}) do opts[k] = v end
    manifest.slots[i] = { slot = fx.slot, kind = fx.kind, opts = opts, target = fx.target, wait = fx.wait,
                          strategy = fx.strategy }
  end
  assert(core.fs_mkdir(base, 448))
  assert(core.fs_write_atomic(base .. "/manifest.json", json.encode(manifest), 384))
  fixtures.write_env(base .. "/env", env)
  assert(core.fs_write_atomic(base .. "/rotor.conf.lua", ([[
local json = require "rotor.json"
local f = assert(io.open(%q))
local m = json.decode(f:read("a"))
f:close()
local slots = {}
for i, e in ipairs(m.slots) do
  e.opts.client_secret = os.getenv("T_SECRET_" .. i)
  if e.opts.sqs then e.opts.sqs.secret_key = os.getenv("T_SQS_" .. i) end
  slots[i] = { slot = e.slot, provider = { kind = e.kind, options = e.opts }, target = e.target,
               wait = e.wait, strategy = e.strategy, consumers = "none" }
end
m.store.kind = "etcd"
return { store = m.store, slots = slots, concurrency = 4 }
]]):format(base .. "/manifest.json"), 384))
  return base
end

--- start{ dir = DIR, members = 3, prefix = "/rotor/" } -> cluster
function _M.start(o)
  o = o or {}
  local dir = assert(o.dir, "etcd_cluster.start: dir expected")
  must("mkdir -p " .. q(dir) .. " && chmod 700 " .. q(dir), "mkdir")
  make_certs(dir)
  local password = "pw-" .. sim.run("od -An -N12 -tx1 /dev/urandom"):gsub("%s", "")
  local last_err
  for _ = 1, 4 do
    local c = setmetatable({
      dir = dir, members = {}, endpoints = {}, token = "rotor-spec-" .. tostring(os.time()),
      ca = dir .. "/ca.pem", cert = dir .. "/rotor.pem", key = dir .. "/rotor.key",
      user = "rotor", password = password, prefix = o.prefix or "/rotor/",
    }, Cluster)
    local init = {}
    for i = 1, o.members or 3 do
      local m = { name = "m" .. i, client = "https://127.0.0.1:" .. random_port(),
                  peer = "https://127.0.0.1:" .. random_port(),
                  data = dir .. "/m" .. i .. ".etcd", log = dir .. "/m" .. i .. ".log" }
      c.members[i] = m
      c.endpoints[i] = m.client
      init[i] = m.name .. "=" .. m.peer
    end
    c.initial = table.concat(init, ",")
    must("rm -rf " .. q(dir) .. "/m*.etcd", "rm")
    for i = 1, #c.members do c:spawn(i, "new") end
    local ok, dead = pcall(c.wait_healthy, c, 30, "start")
    if ok and dead == true then
      -- the rotor user may only touch its prefix; auth on
      local steps = {
        "user add root:" .. password, "user add rotor:" .. password, "role add rotor",
        "role grant-permission rotor readwrite " .. q(c.prefix) .. " --prefix=true",
        "user grant-role rotor rotor", "auth enable",
      }
      for _, s in ipairs(steps) do
        local out, rc = c:etcdctl(s)
        if rc ~= 0 then error("etcdctl " .. s:gsub(password, "***") .. ": " .. out) end
      end
      return c
    end
    last_err = ok and ("member " .. tostring(dead and dead.name) .. " exited (a port in use?)") or dead
    for _, m in ipairs(c.members) do
      if m.pid then run(("kill -KILL %d 2>/dev/null"):format(m.pid)) end
    end
  end
  error("etcd_cluster: could not start a cluster: " .. tostring(last_err))
end

return _M
