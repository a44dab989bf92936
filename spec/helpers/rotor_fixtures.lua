-- spec.helpers.rotor_fixtures: one seeded credential per provider in a running simulator, plus the
-- checks the rotation, crash and lock specs share (does a secret work, what is orphaned or lost).
--
--   local fx = fixtures.seed(sim_instance, "genesys")   -- fx.slot, fx.opts, fx.target, fx.mint_path
--   fixtures.provider(fx)               -- a provider object acting with the bootstrap credential
--   fixtures.works(fx, id, secret)      -- a fresh token with exactly that credential?
--   fixtures.orphans(fx, record)        -- live credentials at the provider named by rotor, not stored
--   fixtures.lost(sim, fx, record)      -- issued secrets not in the store that still work
--   fixtures.env(sim, fx, store_dir)    -- ROTOR_* variables for spec/helpers/rotate_script.lua
-- and what the provider specs share (the simulator itself is spec.helpers.sim):
--   fixtures.start() / stop(s)          -- a simulator for a spec file
--   fixtures.reset(s, settings)         -- the simulator and rotor's token cache and pacing, cleared
--   fixtures.ctl / fault / advance / counter / log -- the simulator's control API
--   fixtures.assert_no_secret(s, err, ...)         -- no secret in an error (message, detail)
--   fixtures.merge(base, extra), fixtures.NIL, fixtures.timed(fn)
local core = require "rotor.core"
local http = require "rotor.http"
local sim = require "spec.helpers.sim"

local _M = {}

_M.KINDS = { "genesys", "spreetail", "paylocity", "spapi" }

local function secret() return "s-" .. core.random_hex(20) end

local function control(s, method, path, body)
  local r, status = s:control(method, path, body)
  assert(type(r) == "table", method .. " " .. path .. " failed")
  assert(status == nil or status < 300, method .. " " .. path .. " returned " .. tostring(status))
  return r
end
_M.control = control

--- A simulator for a spec file; its control API.
function _M.start() return sim.start() end
function _M.stop(s) if s then s:stop() end end
function _M.ctl(s, method, path, body) return s:control(method, path, body) end
function _M.fault(s, f) return s:fault(f) end
function _M.advance(s, seconds) return s:advance(seconds) end
function _M.log(s) return s:log() end

--- Reset the simulator and rotor's process-wide token cache and pacing buckets.
function _M.reset(s, settings)
  s:reset()
  if settings then s:settings(settings) end
  core.token_clear()
  http.reset_pacing()
end

--- Requests the simulator counted for a path (or "METHOD path").
function _M.counter(s, path)
  local c = control(s, "GET", "/counters")
  return math.floor((c.counters or c)[path] or 0)
end

function _M.seed(s, kind, n)
  if kind == "genesys_new" or kind == "genesys_own" then
    -- Genesys with strategy new_client: a second client is minted, the old one retired;
    -- genesys_own: the client rotated is the one the provider object authenticates with
    local fx = _M.seed(s, "genesys", n)
    fx.strategy, fx.label = "new_client", kind
    fx.mint_path, fx.mint_method = "/genesys/api/v2/oauth/clients", "POST"
    if kind == "genesys_own" then
      fx.own = true
      fx.target = { client_id = fx.opts.client_id }
      fx.slot = "genesys/" .. fx.opts.client_id
      fx.app_name = fx.admin_name
      fx.bootstrap = { client_id = fx.opts.client_id, secret = fx.opts.client_secret }
    end
    return fx
  end
  if kind == "spreetail_shared" then
    -- two slots on one Spreetail account, one named as the other's prefix: the sibling ("<slot>:eu")
    -- is rotated first; the fixture's slot must never touch the sibling's pair
    local fx = _M.seed(s, "spreetail", n)
    fx.label = kind
    local sec = secret()
    local sib = control(s, "POST", "/seed", { provider = "spreetail", name = "boot sibling", client_secret = sec,
                                              account = fx.account })
    local o = {}
    for k, v in pairs(fx.opts) do o[k] = v end
    o.client_id, o.client_secret = sib.client_id or sib.clientId, sec
    fx.sibling = { slot = fx.slot .. ":eu", opts = o }
    return fx
  end
  n = n or core.random_hex(3)
  local fx = { kind = kind, sim = s }
  local base = { cainfo = s.ca, timeout = 5 }
  if kind == "genesys" then
    fx.admin_name = "admin " .. n
    local admin = control(s, "POST", "/seed", { provider = "genesys", admin = true, name = fx.admin_name,
                                                client_secret = secret() })
    fx.app_name = "app " .. n
    local tgt = control(s, "POST", "/seed", { provider = "genesys", name = fx.app_name, client_secret = secret(),
      roleDivisions = { { roleId = "app-role", divisionId = "home" } } })
    base.base_url, base.token_url = s.url .. "/genesys", s.url .. "/genesys/login/oauth/token"
    base.client_id, base.client_secret = admin.client_id, admin.client_secret
    fx.target = { client_id = tgt.client_id }
    fx.slot = "genesys/" .. tgt.client_id
    fx.mint_path, fx.mint_method = "/genesys/api/v2/oauth/clients/" .. tgt.client_id .. "/secret", "POST"
    fx.bootstrap = { client_id = tgt.client_id, secret = tgt.client_secret }
  elseif kind == "spreetail" then
    local sec = secret()
    fx.account = "acct-" .. n
    local st = control(s, "POST", "/seed", { provider = "spreetail", name = "boot " .. n, client_secret = sec,
                                             account = fx.account })
    base.base_url, base.token_url = s.url .. "/spreetail", s.url .. "/spreetail/api/v0/oauth/token"
    base.client_id, base.client_secret = st.client_id or st.clientId, sec
    fx.slot = "spreetail/" .. n
    fx.mint_path, fx.mint_method = "/spreetail/api/v0/client-credentials", "POST"
    fx.bootstrap = { client_id = base.client_id, secret = sec }
  elseif kind == "paylocity" then
    local sec = secret()
    fx.code = "CODE-" .. n
    local pl = control(s, "POST", "/seed", { provider = "paylocity", client_secret = sec,
                                             code = { fx.code, fx.code .. "-2", fx.code .. "-3" } })
    base.base_url = s.url .. "/paylocity"
    base.token_url = s.url .. "/paylocity/IdentityServer/connect/token"
    base.client_id, base.client_secret = pl.client_id, sec
    fx.target = { code = fx.code }
    fx.slot = "paylocity/" .. n
    fx.mint_path, fx.mint_method = "/paylocity/api/v2/credentials/secrets", "POST"
    fx.bootstrap = { client_id = pl.client_id, secret = sec }
  elseif kind == "spapi" then
    local sec = secret()
    local sp = control(s, "POST", "/seed", { provider = "spapi", client_secret = sec, queue = "q-" .. n })
    base.base_url, base.token_url = s.url .. "/spapi", s.url .. "/lwa/auth/o2/token"
    base.client_id, base.client_secret = sp.client_id, sec
    base.sqs = { queue_url = sp.queue_url, access_key = sp.sqs.access_key, secret_key = sp.sqs.secret_key,
                 endpoint = sp.sqs.endpoint, region = sp.sqs.region }
    fx.slot = "spapi/" .. n
    fx.mint_path, fx.mint_method = "/spapi/applications/2023-11-30/clientSecret", "POST"
    fx.bootstrap = { client_id = sp.client_id, secret = sec }
    fx.wait = 5
    -- Amazon allows one rotation a minute per application: the simulator and rotor's pacing both
    -- shrink that to one every 2 s here, so a second rotation of one fixture waits 2 s, not 60
    control(s, "POST", "/settings", { spapi_rotate_interval = 2 })
    base.rate_limits = { rotate_application_client_secret = { rate = 1, per = 2 } }
  else
    error("unknown kind " .. tostring(kind))
  end
  fx.opts = base
  fx.target = fx.target or {}
  return fx
end

function _M.provider(fx, opts_in)
  local rotor = require "rotor"
  local opts = {}
  for k, v in pairs(opts_in or fx.opts) do opts[k] = v end
  return assert(rotor[fx.kind](opts))
end

-- a provider object acting with the stored current credential where the rotation replaced the
-- one the fixture started with (Spreetail's pair, the Genesys admin client rotated with new_client)
local function acting(fx, rec)
  local p = _M.provider(fx)
  local cur = rec and rec.versions and rec.versions.current
  if (fx.kind == "spreetail" or fx.own) and cur and cur.secret then p:set_credentials(cur.client_id, cur.secret) end
  return p
end
_M.acting = acting

local function plain(v)
  if core.is_secret(v) then return v:reveal() end
  return v
end

function _M.works(fx, client_id, sec)
  local p = _M.provider(fx)
  local ok = p:verify { client_id = client_id, client_secret = plain(sec) }
  return ok == true
end

local function stored(rec)
  local ids, secrets = {}, {}
  for _, label in ipairs { "current", "pending", "previous" } do
    local v = rec and rec.versions and rec.versions[label]
    if v then
      if v.client_id then ids[v.client_id] = true end
      if v.secret then secrets[plain(v.secret)] = label end
    end
  end
  return ids, secrets
end

--- Credentials alive at the provider, minted by rotor for this fixture, that no stored version holds.
function _M.orphans(fx, rec)
  local ids = stored(rec)
  local out = {}
  local p = acting(fx, rec)
  if fx.kind == "genesys" then
    local list = assert(p:get_oauth_clients())
    for _, c in ipairs(list.entities) do
      -- clients rotor minted for this fixture: its app name, tagged with a rotation id
      local mine = tostring(c.name):find(fx.app_name .. " [rotor ", 1, true) == 1
      if mine and not ids[c.id] then out[#out + 1] = c.id end
      -- new_client: once the rotation is done, the client it replaced must be gone
      if fx.strategy == "new_client" and c.id == fx.target.client_id and not ids[c.id]
        and not (rec and rec.rotation) then
        out[#out + 1] = c.id .. " (the replaced client, not retired)"
      end
    end
  elseif fx.kind == "spreetail" then
    local list = assert(p:list_client_credentials())
    for _, c in ipairs(list) do
      -- a sibling slot on the same account holds its own pairs
      local sibling = fx.sibling and tostring(c.name):find("rotor:" .. fx.sibling.slot .. ":", 1, true) == 1
      if not ids[c.clientId] and not sibling and c.clientId ~= (fx.sibling and fx.sibling.boot_id) then
        out[#out + 1] = c.clientId
      end
    end
  end
  return out
end

--- Secrets the simulator issued for this fixture (not seeds) that no stored version (current, pending,
-- previous) holds and that still obtain a token: live credentials nobody holds. (Spreetail: live pairs
-- that the store does not hold.)
function _M.lost(s, fx, rec)
  if fx.kind == "spreetail" then return #_M.orphans(fx, rec) end
  local _, secrets = stored(rec)
  local ids = { [fx.kind == "genesys" and fx.target.client_id or fx.bootstrap.client_id] = true }
  if fx.strategy == "new_client" then
    -- the clients minted for this fixture carry its app name
    for _, c in ipairs(assert(acting(fx, rec):get_oauth_clients()).entities) do
      if tostring(c.name):find(fx.app_name, 1, true) == 1 then ids[c.id] = true end
    end
  end
  local n = 0
  for _, e in ipairs(control(s, "GET", "/secrets").details or {}) do
    if e.provider == fx.kind and ids[e.client_id] and e.source ~= "seed" then
      local label = secrets[e.secret]
      if not label and _M.works(fx, e.client_id, e.secret) then n = n + 1 end
    end
  end
  return n
end

--- Assert that none of the secrets (strings or rotor.secret values), nor any secret the
-- simulator knows, appears in err (its tostring, message and detail).
function _M.assert_no_secret(s, err, ...)
  assert(err ~= nil, "an error expected")
  local texts = { tostring(err) }
  if type(err) == "table" then
    for _, k in ipairs({ "message", "detail" }) do
      if type(err[k]) == "string" then texts[#texts + 1] = err[k] end
    end
  end
  local all = { ... }
  if s then for _, x in ipairs(s:secrets()) do all[#all + 1] = x end end
  for _, sec in ipairs(all) do
    sec = plain(sec)
    if type(sec) == "string" and #sec >= 6 then
      for _, t in ipairs(texts) do
        assert(not t:find(sec, 1, true), "a secret leaked into an error: " .. texts[1]:gsub(sec, "<LEAK>"))
        -- and no long piece of it (a truncated body must not leak half a secret either)
        local half = sec:sub(1, math.floor(#sec / 2))
        if #half >= 8 then
          assert(not t:find(half, 1, true), "part of a secret leaked into an error")
        end
      end
    end
  end
end

--- Options merging: base plus extra (extra wins; _M.NIL removes a key).
_M.NIL = setmetatable({}, { __tostring = function() return "NIL" end })
function _M.merge(base, extra)
  local o = {}
  for k, v in pairs(base) do o[k] = v end
  for k, v in pairs(extra or {}) do
    if v == _M.NIL then o[k] = nil else o[k] = v end
  end
  return o
end

--- Elapsed seconds of fn(), and what it returned.
function _M.timed(fn)
  local t0 = core.now()
  local a, b, c = fn()
  return core.now() - t0, a, b, c
end

--- The environment for spec/helpers/rotate_script.lua (a 0600 file the shell sources).
function _M.env(s, fx, store_dir)
  local e = {
    ROTOR_T_KIND = fx.kind, ROTOR_T_SLOT = fx.slot, ROTOR_T_STORE = store_dir, ROTOR_CAINFO = s.ca,
    ROTOR_T_BASE_URL = fx.opts.base_url, ROTOR_T_TOKEN_URL = fx.opts.token_url,
    ROTOR_T_CLIENT_ID = fx.opts.client_id, ROTOR_T_CLIENT_SECRET = fx.opts.client_secret,
    ROTOR_T_TARGET_CLIENT_ID = fx.target.client_id, ROTOR_T_CODE = fx.target.code,
    ROTOR_T_WAIT = fx.wait and tostring(fx.wait) or nil, ROTOR_T_STRATEGY = fx.strategy,
    -- a message received by a killed run is seen again after this many seconds
    ROTOR_T_VISIBILITY = fx.kind == "spapi" and "2" or nil,
  }
  if fx.opts.sqs then
    e.ROTOR_T_SQS_QUEUE_URL, e.ROTOR_T_SQS_ACCESS_KEY = fx.opts.sqs.queue_url, fx.opts.sqs.access_key
    e.ROTOR_T_SQS_SECRET_KEY, e.ROTOR_T_SQS_ENDPOINT = fx.opts.sqs.secret_key, fx.opts.sqs.endpoint
    e.ROTOR_T_SQS_REGION = fx.opts.sqs.region
  end
  return e
end

function _M.write_env(path, env)
  local lines = {}
  for k, v in pairs(env) do lines[#lines + 1] = ("export %s=%s"):format(k, sim.shell_quote(v)) end
  table.sort(lines)
  assert(core.fs_write_atomic(path, table.concat(lines, "\n") .. "\n", 384))
end

return _M
