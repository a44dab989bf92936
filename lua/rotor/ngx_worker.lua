-- rotor.ngx_worker: what rotor.ngx runs in nginx's thread pool (ngx.run_worker_thread).
--
-- Each function runs in the Lua VM of a pool thread, where blocking is fine: the libcurl
-- transfer runs to completion here while the nginx worker keeps serving. Arguments and results
-- are plain data (strings, numbers, booleans, tables of those): no userdata crosses between the
-- VMs, so secrets arrive as strings, are wrapped into rotor.secret values at once, and errors
-- go back as plain tables that rotor.ngx turns into rotor.errors values again.
-- The VM of a pool thread lives on between tasks, so modules and provider objects are reused.
local core = require "rotor.core"
local errors = require "rotor.errors"
local json = require "rotor.json"
local oauth = require "rotor.oauth"

local _M = {}

local FIELDS = { "kind", "message", "status", "provider", "op", "retry_after", "request_id", "detail" }

-- a plain copy of an error (strings and numbers only)
local function plain_error(err)
  if type(err) ~= "table" then
    return { kind = "protocol", message = core.redact and core.redact(tostring(err)) or "failed" }
  end
  local out = {}
  for _, k in ipairs(FIELDS) do
    local v = err[k]
    if type(v) == "string" or type(v) == "number" then out[k] = v end
  end
  out.kind = errors.KINDS[out.kind] and out.kind or "protocol"
  return out
end
_M.plain_error = plain_error

-- provider objects by the cache key rotor.ngx computes (options without the secret)
local objects, n_objects = {}, 0
local MAX_OBJECTS = 64

local function provider(name, opts, secret)
  local mod = require("rotor.providers." .. name)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if secret ~= nil then o.client_secret = core.secret(secret) end
  return mod.new(o)
end

--- read_file(path) -> the text of a store's slot file | nil, plain error (kind "store"). The
-- file itself is opened as the store opens it: a link or a FIFO planted at its name is refused
-- (never followed, never waited on); the nginx worker's user cannot apply the store's ownership
-- rule, the directory's owner being the user rotor runs as.
function _M.read_file(path)
  local text, msg = core.fs_read(path, true)
  if not text then
    return nil, { kind = "store", message = "cannot read the store slot file: " .. core.redact(tostring(msg)) }
  end
  return text
end

--- token(name, opts, secret) -> access token (string), ttl (s) | nil, plain error.
-- Always a fresh token request: rotor.ngx keeps the cache (in a shared dict, for all workers).
function _M.token(name, opts, secret)
  local p, err = provider(name, opts, secret)
  if not p then return nil, plain_error(err) end
  local spec = p:_token_spec(p.client_id, p._secret)
  spec.fresh = true
  local tok, ttl = oauth.token(spec)
  if p._secret and p._secret.close then p._secret:close() end
  if not tok then return nil, plain_error(ttl) end
  local s = tok:reveal()
  tok:close()
  return s, tonumber(ttl) or oauth.DEFAULT_TTL
end

--- request(name, opts, key, token, method, path, ropts) -> JSON text of the decoded body, or
-- true for an empty 2xx | nil, plain error. The call is made with exactly `token` (the one
-- rotor.ngx holds): a 401 comes back as kind "auth" for rotor.ngx to refresh and retry once.
-- ropts: op (the operation name for errors and pacing), body (table or JSON text), headers
-- ({ {name, value}, ... }), url (absolute, instead of base_url .. path).
function _M.request(name, opts, key, token, method, path, ropts)
  ropts = ropts or {}
  local p = key and objects[key]
  if not p then
    local err
    p, err = provider(name, opts, nil)
    if not p then return nil, plain_error(err) end
    if key then
      if n_objects >= MAX_OBJECTS then objects, n_objects = {}, 0 end
      objects[key], n_objects = p, n_objects + 1
    end
  end
  -- this object acts with the token it is given, and leaves a refused token to rotor.ngx
  p.token = function() return token end
  p._reauth = {}
  local res, err = p:call(ropts.op or (method:lower() .. " " .. path), method, path, {
    body = ropts.body, headers = ropts.headers, url = ropts.url,
  })
  p.token = nil
  if res == nil then return nil, plain_error(err) end
  if res == true then return true end
  return json.encode(res)
end

-- the current version of a store slot, as { client_id=, secret=<rotor.secret> } | nil, err
local function current(store, slot)
  local rec, err = require("rotor.record").read(store, slot)
  if rec == nil then return nil, err end
  local cur = rec and rec.versions and rec.versions.current
  if not cur or not cur.secret then
    return nil, errors.new { kind = "config", message = "slot " .. slot .. " holds no current secret" }
  end
  return cur
end

-- etcd stores by their spec (the VM of a pool thread lives on: one client, one auth token)
local etcd_stores, n_etcd = {}, 0

--- read_slot(spec, slot) -> { client_id=, secret=<string> } | nil, plain error: the current
-- credential of a slot of an etcd store (spec: the fields of rotor.store.etcd).
function _M.read_slot(spec, slot)
  local key = json.encode(spec)
  local store = etcd_stores[key]
  if not store then
    local err
    store, err = require("rotor.store.etcd").new(spec)
    if not store then return nil, plain_error(err) end
    if n_etcd >= MAX_OBJECTS then etcd_stores, n_etcd = {}, 0 end
    etcd_stores[key], n_etcd = store, n_etcd + 1
  end
  local cur, err = current(store, slot)
  if not cur then return nil, plain_error(err) end
  return { client_id = cur.client_id, secret = cur.secret:reveal() }
end

--- rotate(job) -> { slot=, version=, client_id=, skipped=reason } | nil, plain error.
-- job: provider (name), options (plain, without secret), store_dir, admin_slot (the slot whose
-- current credential acts at the provider), slot (the slot to rotate), target ({client_id=}),
-- strategy, due ({max_age_days=, before_expiry_days=}; rotate only when due), force (ignore due).
function _M.rotate(job)
  local rotor = require "rotor"
  local store, err = rotor.store.file(job.store_dir)
  if not store then return nil, plain_error(err) end
  if not job.force and rotor.due then
    local due, why = rotor.due(job.slot, job.due, store)
    if due == nil then return nil, plain_error(why) end
    if not due then return { slot = job.slot, skipped = why } end
  end
  local admin
  admin, err = current(store, job.admin_slot or job.slot)
  if not admin then return nil, plain_error(err) end
  local opts = {}
  for k, v in pairs(job.options or {}) do opts[k] = v end
  opts.client_id = admin.client_id or opts.client_id
  opts.client_secret = admin.secret
  local p
  p, err = require("rotor.providers." .. job.provider).new(opts)
  if not p then return nil, plain_error(err) end
  local target = job.target
  if target == nil then
    -- the slot's own client (Genesys regenerate: the admin acts on the gateway's client)
    local cur = current(store, job.slot)
    target = cur and { client_id = cur.client_id } or nil
  end
  local res
  res, err = rotor.rotate { slot = job.slot, provider = p, store = store, target = target,
                            strategy = job.strategy }
  if not res then return nil, plain_error(err) end
  return { slot = res.slot, version = res.version, client_id = res.client_id }
end

return _M
