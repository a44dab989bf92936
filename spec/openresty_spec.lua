-- rotor.ngx in real nginx (Debian nginx + libnginx-mod-http-lua), 2 workers, against the
-- simulator: examples/openresty/nginx.conf, templated into a temporary prefix. This spec only
-- drives processes (nginx, curl): tagged #proc, it runs in the Lua 5.4 pass only.
local sim = require "spec.helpers.sim"
local cjson = require "cjson.safe"
local store_file = require "rotor.store.file"
local core = require "rotor.core"

local run, shq = sim.run, sim.shell_quote

local read, write = sim.read_file, sim.write_file

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local ROOT = trim(run("pwd"))
local TOKEN_PATH = "/genesys/login/oauth/token"
local SLOT, ADMIN_SLOT = "genesys/gateway", "genesys/admin"

-- checked before any of nginx's API is touched: these run in plain Lua
describe("rotor.ngx's options", function()
  -- a misspelt option was ignored: store_dr left the gateway without its slot, margn kept the
  -- default margin, a job's forse rotated a slot that was not due
  it("names an option or a job field it does not know, with the closest", function()
    local rngx = require "rotor.ngx"
    local gw, err = rngx.new { provider = "genesys", store_dr = "/srv/secrets", slot = "genesys/gw" }
    assert.is_nil(gw)
    assert.equal("config", err.kind)
    assert.matches("store_dr: unknown option; did you mean store_dir?", err.message, 1, true)
    local res
    res, err = rngx.rotate { provider = "genesys", slot = "genesys/gw", store_dir = "/srv/secrets", forse = true }
    assert.is_nil(res)
    assert.matches("forse: unknown job field; did you mean force?", err.message, 1, true)
  end)

  -- a timing option beyond any sensible value was taken: check_interval = 1e9 kept the gateway on
  -- a secret rotated away (it never read the slot again), poll = 0 spun the waiting workers,
  -- fail_hold = 1e9 let one failed token request answer for everyone for ever
  it("names a timing option out of its bounds, with them", function()
    local rngx = require "rotor.ngx"
    -- past its checks, new() looks its dict up in ngx.shared: outside nginx, a table stands for it
    -- (the nginx spec below runs the rest)
    local had = rawget(_G, "ngx")
    _G.ngx = had or { shared = { rotor_tokens = {} } }
    finally(function() _G.ngx = had end)
    local base = { provider = "genesys", store_dir = "/srv/secrets", slot = "genesys/gw" }
    local cases = {
      { "check_interval", 1e9, "option check_interval: a number of seconds from 0 to 60 expected, got 1000000000" },
      { "poll", 0, "option poll: a number of seconds from 0.001 to 1 expected, got 0" },
      { "fail_hold", 1e9, "option fail_hold: a number of seconds from 0 to 60 expected" },
      { "margin", 86400, "option margin: a number of seconds from 0 to 600 expected, got 86400" },
      { "lock_timeout", 0, "option lock_timeout: a number of seconds from 1 to 3600 expected, got 0" },
      { "margin", 0 / 0, "option margin: a number of seconds from 0 to 600 expected" },
      { "poll", "0.01", "option poll: a number of seconds from 0.001 to 1 expected, got string" },
    }
    for _, c in ipairs(cases) do
      local o = {}
      for k, v in pairs(base) do o[k] = v end
      o[c[1]] = c[2]
      local gw, err = rngx.new(o)
      assert.is_nil(gw, c[3])
      assert.equal("config", err.kind)
      assert.truthy(err.message:find(c[3], 1, true), err.message)
    end
    -- within bounds (and the defaults): taken as given
    local o = { check_interval = 0, poll = 0.001, fail_hold = 60, margin = 600, lock_timeout = 1 }
    for k, v in pairs(base) do o[k] = v end
    local gw, err = rngx.new(o)
    local default = assert(rngx.new(base))
    assert(gw, err and err.message)
    assert.same({ 0, 0.001, 60, 600, 1 }, { gw.check_interval, gw.poll, gw.fail_hold, gw.margin, gw.lock_timeout })
    assert.same({ 1, 0.01, 1, 60, 35 }, { default.check_interval, default.poll, default.fail_hold, default.margin,
                                          default.lock_timeout })
  end)
end)

describe("rotor.ngx in nginx #openresty #proc", function()
  local s, dir, port, url, store, client, admin

  local function token_requests()
    return (s:counters() or {})[TOKEN_PATH] or 0
  end

  local function put_slot(slot, id, secret)
    assert(store:put(slot, { provider = "genesys", journal = {},
      versions = { current = { client_id = id, secret = core.secret(secret),
                               created = os.date("!%Y-%m-%dT%H:%M:%SZ") } } }))
  end

  -- curl from a config file (URLs and options), one line per transfer via -w
  local function curl_many(cfg_lines, extra)
    local cfg = dir .. "/curl-" .. tostring(math.random(1e9)) .. ".cfg"
    write(cfg, table.concat(cfg_lines, "\n") .. "\n")
    local out, rc = run("curl -K " .. shq(cfg) .. " " .. (extra or "") .. " 2>&1")
    os.remove(cfg)
    return out, rc
  end

  local function get(path)
    local out = curl_many({ "silent", "url = \"" .. url .. path .. "\"", "max-time = 20" },
      "-w '\\n%{http_code} %header{x-worker}'")
    local body, code, worker = out:match("^(.*)\n(%d+) (%S*)%s*$")
    return tonumber(code), body, worker
  end

  -- the simulator's own view: a token for these credentials, and Genesys' regenerate
  local function sim_token(id, secret)
    local res = s:request { method = "POST", path = TOKEN_PATH, basic = { id, secret },
                            form = { grant_type = "client_credentials" } }
    return res and res.status, res and res.json and res.json.access_token
  end

  local function regenerate(id)
    local _, admin_token = sim_token(admin.client_id, admin.client_secret)
    local res = assert(s:request { method = "POST", bearer = admin_token,
                                   path = "/genesys/api/v2/oauth/clients/" .. id .. "/secret" })
    assert.equal(200, res.status)
    return res.json.secret
  end

  local function rotate_by_hand()
    local new_secret = regenerate(client.client_id)
    put_slot(SLOT, client.client_id, new_secret)
    local old = client.client_secret
    client.client_secret = new_secret
    return old, new_secret
  end

  local function start_nginx()
    local conf = assert(read(ROOT .. "/examples/openresty/nginx.conf"))
    conf = conf:gsub("@ROOT@", ROOT):gsub("@PORT@", tostring(port))
    if trim(run("id -u")) == "0" then
      conf = conf:gsub("\nworker_processes", "\nuser " .. trim(run("id -un")) .. " " .. trim(run("id -gn"))
        .. ";\nworker_processes", 1)
    end
    -- a location of the spec's own: token() where it cannot yield (set, header_filter)
    conf = conf:gsub("(\n%s*location = /ping {)", [[

        location = /_test/phases {
            set_by_lua_block $rotor_set_err {
                local _, err = require("gateway").object():token()
                return require("cjson.safe").encode { set_kind = err and err.kind,
                                                      set_message = err and err.message }
            }
            content_by_lua_block { ngx.say(ngx.var.rotor_set_err) }
            header_filter_by_lua_block {
                local _, err = require("gateway").object():token()
                ngx.header["X-Header-Filter"] = err and err.kind or "none"
            }
        }
%1]], 1)
    write(dir .. "/nginx.conf", conf)
    local env = {
      ROTOR_STORE = dir .. "/secrets", ROTOR_SLOT = SLOT, ROTOR_ADMIN_SLOT = ADMIN_SLOT,
      ROTOR_GENESYS_URL = s.url .. "/genesys", ROTOR_GENESYS_TOKEN_URL = s.url .. TOKEN_PATH,
      ROTOR_CA = s.ca, ROTOR_CHECK_INTERVAL = "0",
    }
    local prefix = ""
    for k, v in pairs(env) do prefix = prefix .. k .. "=" .. shq(v) .. " " end
    local out, rc = run(prefix .. "nginx -p " .. shq(dir) .. " -c " .. shq(dir .. "/nginx.conf")
      .. " -e " .. shq(dir .. "/logs/error.log") .. " 2>&1")
    return rc == 0, out
  end

  setup(function()
    s = sim.start { settings = { genesys_rate = 0 } }
    dir = sim.tmpdir("ngx")
    run("mkdir -p " .. shq(dir .. "/logs") .. " " .. shq(dir .. "/temp"))
    store = assert(store_file.new(dir .. "/secrets"))
    admin = assert(s:seed { provider = "genesys", admin = true })
    client = assert(s:seed { provider = "genesys", name = "gateway" })
    put_slot(ADMIN_SLOT, admin.client_id, admin.client_secret)
    put_slot(SLOT, client.client_id, client.client_secret)
    local started, out
    for _ = 1, 5 do
      port = 20000 + math.random(0, 30000)
      started, out = start_nginx()
      if started then break end
    end
    assert(started, "nginx did not start: " .. tostring(out) .. (read(dir .. "/logs/error.log") or ""))
    url = "http://127.0.0.1:" .. port
    for _ = 1, 100 do
      if get("/ping") == 200 then break end
      run("sleep 0.05")
    end
  end)

  teardown(function()
    local pid = dir and read(dir .. "/nginx.pid")
    if pid and tonumber(trim(pid)) then
      pid = trim(pid)
      run("kill -QUIT " .. pid .. "; for i in $(seq 100); do kill -0 " .. pid
        .. " 2>/dev/null || break; sleep 0.05; done; kill -KILL " .. pid .. " 2>/dev/null")
    end
    -- kept under $TMPDIR for the leak scan of `make test` (ROTOR_SIM_KEEP), nginx's error.log too
    if dir and os.getenv("ROTOR_NGX_KEEP") == nil and os.getenv("ROTOR_SIM_KEEP") == nil then
      run("rm -rf " .. shq(dir))
    end
    if s then s:stop() end
  end)

  it("spreads 1,000 requests over both workers with exactly one token request", function()
    rotate_by_hand() -- a credential no worker has a token for yet
    local before = token_requests()
    -- no-progress-meter: in parallel mode curl draws a meter even when silent, and a line of it
    -- could land inside a line of the write-out
    local lines = { "silent", "no-progress-meter", "parallel", "parallel-max = 16", "max-time = 30",
                    "write-out = \"%{http_code} %header{x-worker}\\n\"", "output = /dev/null" }
    for _ = 1, 1000 do
      lines[#lines + 1] = "url = \"" .. url .. "/genesys/me\""
      lines[#lines + 1] = "output = /dev/null"
    end
    local t0 = core.now()
    local out = curl_many(lines)
    local took = core.now() - t0
    local codes, workers, n, other = {}, {}, 0, {}
    for line in out:gmatch("[^\n]+") do
      local code, worker = line:match("^(%d%d%d) (%d+/%d+)$")
      if code then
        n = n + 1
        codes[code] = (codes[code] or 0) + 1
        local id = worker:match("^(%d+)/")
        if id then workers[id] = (workers[id] or 0) + 1 end
      else
        other[#other + 1] = line
      end
    end
    assert.same({}, other) -- what curl said for a request that got no answer
    print(("\n  openresty: 1000 requests in %.2f s; status %s; worker split %s; token requests %d")
      :format(took, cjson.encode(codes), cjson.encode(workers), token_requests() - before))
    assert.equal(1000, n)
    assert.equal(1000, codes["200"])
    assert.truthy((workers["0"] or 0) > 0 and (workers["1"] or 0) > 0, "both workers served")
    assert.equal(1, token_requests() - before)
  end)

  it("keeps serving on both workers while a token request is slowed down by 2 s", function()
    rotate_by_hand() -- a new credential: the cached token no longer applies
    local before = token_requests()
    s:fault { path = TOKEN_PATH, count = 1, delay = 2 }
    -- 4 requests that need the (delayed) token, on their own connections, in the background
    local slow = dir .. "/slow.out"
    local cfg = { "silent", "no-progress-meter", "parallel", "parallel-immediate", "parallel-max = 4", "max-time = 20",
                  "write-out = \"%{http_code} %{time_total} %header{x-worker}\\n\"" }
    for _ = 1, 4 do
      cfg[#cfg + 1] = "url = \"" .. url .. "/genesys/me\""
      cfg[#cfg + 1] = "output = /dev/null"
    end
    write(dir .. "/slow.cfg", table.concat(cfg, "\n") .. "\n")
    run("(curl -K " .. shq(dir .. "/slow.cfg") .. " > " .. shq(slow) .. " 2>&1; echo done >> "
      .. shq(slow) .. ") & true")
    run("sleep 0.2")
    -- meanwhile: one request per new connection to a cheap location, measuring latency
    local probe = run("for i in $(seq 20); do curl -s -o /dev/null --max-time 5 -w "
      .. "'%{http_code} %{time_total} %header{x-worker}\\n' " .. shq(url .. "/ping") .. "; sleep 0.05; done")
    local out
    for _ = 1, 200 do
      out = read(slow) or ""
      if out:find("done") then break end
      run("sleep 0.05")
    end
    local max_lat, n, by_worker = 0, 0, {}
    for code, t, worker in probe:gmatch("(%d+) ([%d.]+) (%S+)") do
      assert.equal("200", code)
      n = n + 1
      max_lat = math.max(max_lat, tonumber(t))
      local id = worker:match("^(%d+)/")
      by_worker[id] = (by_worker[id] or 0) + 1
    end
    local slow_times, slow_workers = {}, {}
    for code, t, worker in out:gmatch("(%d+) ([%d.]+) (%S+)") do
      assert.equal("200", code)
      slow_times[#slow_times + 1] = tonumber(t)
      slow_workers[worker:match("^(%d+)/") or "?"] = true
    end
    local sw = {}
    for k in pairs(slow_workers) do sw[#sw + 1] = k end
    table.sort(sw)
    print(("\n  openresty: during the 2 s token delay: %d pings, max latency %.3f s, by worker %s;"
      .. " token-needing requests took %s s (workers %s); token requests %d")
      :format(n, max_lat, cjson.encode(by_worker), table.concat(slow_times, ", "),
              table.concat(sw, ","), token_requests() - before))
    assert.equal(20, n)
    assert.truthy(max_lat < 0.5, "ping latency " .. max_lat)
    assert.truthy((by_worker["0"] or 0) > 0 and (by_worker["1"] or 0) > 0, "both workers served pings")
    assert.equal(4, #slow_times)
    for _, t in ipairs(slow_times) do assert.truthy(t >= 1.5, "the token delay was in effect") end
    assert.equal(1, token_requests() - before)
  end)

  it("uses a secret rotated into the store from the next request on, without a reload", function()
    assert.equal(200, (get("/genesys/me")))
    local old = rotate_by_hand()
    -- the simulator refuses the old secret (and the tokens it got) now
    assert.equal(401, (sim_token(client.client_id, old)))
    local before = token_requests()
    local code, body = get("/genesys/me")
    assert.equal(200, code, body)
    assert.equal(client.client_id, cjson.decode(body).client_id)
    -- exactly one new token request, made with the new secret (the old one is refused)
    assert.equal(1, token_requests() - before)
    assert.equal(200, (get("/genesys/me")))
    assert.equal(1, token_requests() - before)
  end)

  it("rotates through rotor.rotate in the thread pool (the timer's job)", function()
    local before_rec = assert(store:get(SLOT))
    local old = before_rec.versions.current.secret:reveal()
    local code, body = get("/_rotor/rotate")
    assert.equal(200, code, "rotation in nginx failed: " .. tostring(body))
    local rec = assert(store:get(SLOT))
    local new = rec.versions.current.secret:reveal()
    assert.are_not.equal(old, new)
    client.client_secret = new
    local before = token_requests()
    assert.equal(200, (get("/genesys/me")))
    assert.equal(1, token_requests() - before)
  end)

  -- A FIFO planted at the slot file's name blocked the worker that opened it (every request it
  -- served hung), and a link there was followed to whatever file it named. The slot file is now
  -- read in the thread pool as the store reads its files: neither is opened.
  it("refuses a FIFO or a link at the slot file at once, and keeps serving", function()
    local path = dir .. "/secrets/" .. require("rotor.store.naming").encode(SLOT) .. ".json"
    local keep = path .. ".keep"
    assert(os.rename(path, keep))
    local ok, err = pcall(function()
      assert.equal("", run("mkfifo " .. shq(path) .. " 2>&1"))
      for _ = 1, 4 do   -- both workers
        local t0 = core.now()
        local code, body = get("/genesys/me")
        assert.equal(500, code, body)
        assert.truthy(body:find("is not a regular file; remove it", 1, true), body)
        assert.truthy(core.now() - t0 < 5)
      end
      assert(os.remove(path))
      assert.equal("", run("ln -s " .. shq(keep) .. " " .. shq(path) .. " 2>&1"))
      local code, body = get("/genesys/me")
      assert.equal(500, code, body)
      assert.truthy(body:find("is a symbolic link", 1, true), body)
      assert.equal(200, (get("/ping")))
    end)
    os.remove(path)
    assert(os.rename(keep, path))
    assert(ok, err)
    assert.equal(200, (get("/genesys/me")))
  end)

  -- A slot file that was not a record, or whose secret is sealed (a file store with key_file),
  -- was reported as "holds no current secret": the operator looked for a missing secret.
  it("names a slot file that is not a record, and a sealed secret, and keeps serving", function()
    local path = dir .. "/secrets/" .. require("rotor.store.naming").encode(SLOT) .. ".json"
    local keep = assert(core.fs_read(path))
    local rec = assert(cjson.decode(keep))
    rec.versions.current.secret = { alg = "A256GCM", kid = "0123456789abcdef", data = "c2VhbGVk" }
    local ok, err = pcall(function()
      for _, case in ipairs {
        { text = "{ not json", says = "is not a slot record (not a JSON object): rotor doctor shows the slot" },
        { text = cjson.encode(rec), says = "holds its secret sealed (the file store has a key_file)" },
      } do
        assert(core.fs_write_atomic(path, case.text, 384)) -- read at every request (check_interval 0)
        for _ = 1, 4 do   -- both workers
          local code, body = get("/genesys/me")
          assert.equal(500, code, body)
          assert.truthy(body:find(case.says, 1, true), body)
        end
        assert.equal(200, (get("/ping")))
      end
    end)
    assert(core.fs_write_atomic(path, keep, 384))
    assert(ok, err)
    assert.equal(200, (get("/genesys/me")))
  end)

  it("refuses to run where it cannot yield, with a clear config error", function()
    local code, body = get("/_test/phases")
    assert.equal(200, code)
    local v = assert(cjson.decode(body))
    assert.equal("config", v.set_kind)
    assert.truthy(v.set_message:find("set phase", 1, true), v.set_message)
    local hdr = run("curl -s -D - -o /dev/null " .. shq(url .. "/_test/phases"))
    assert.truthy(hdr:lower():find("x-header-filter: config", 1, true), hdr)
  end)
end)
