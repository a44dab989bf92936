-- rotor.ngx: rotor's providers inside OpenResty / nginx with the lua module.
--
--   local rngx = require "rotor.ngx"
--   local gw = rngx.new{
--     provider = "genesys",                 -- paylocity | spreetail | genesys | spapi
--     options = { base_url = ..., token_url = ..., cainfo = ..., client_id = ... },
--     store_dir = "/etc/rotor/secrets", slot = "genesys/gateway",   -- or options.client_secret
--     dict = "rotor_tokens",                -- lua_shared_dict shared by all workers
--     thread_pool = "rotor",                -- nginx `thread_pool` the libcurl work runs in
--   }
--   local tok, err = gw:token()                          -- access token (string)
--   local body, err = gw:request("GET", "/api/v2/tokens/me")   -- decoded JSON body
--
-- The libcurl work runs in nginx's thread pool (ngx.run_worker_thread, rotor.ngx_worker), so
-- no worker's event loop ever blocks on the network. Tokens are cached in the shared dict for
-- every worker, fetched once however many requests in however many workers want one
-- (rotor.singleflight over the dict: a lock key added to it; the others poll it with
-- ngx.sleep), and refreshed in the background ahead of expiry. With a store slot, the slot's current secret is
-- read from the file store (re-read at most every check_interval seconds), or from an etcd store
-- (`etcd = { <rotor.store.etcd fields> }` with `slot`; read in the thread pool): a secret rotated
-- into the store is used from the next token request on, without a reload.
--
-- token() and request() yield: they work in rewrite, access and content handlers and in
-- timers. Elsewhere (init, init_worker, set, header_filter, body_filter, log, ...) they return
-- nil, err with kind "config".
local errors = require "rotor.errors"
local cjson = require "cjson.safe"
local singleflight = require "rotor.singleflight"
local keys = require "rotor.keys"
local bounds = require "rotor.bounds"

-- the options of rngx.new, and the fields of a rotation job (rngx.rotate)
local OPTIONS = { "provider", "options", "dict", "store_path", "etcd", "slot", "store_dir", "thread_pool", "margin",
  "check_interval", "lock_timeout", "fail_hold", "poll", "name" }
local JOB = { "provider", "options", "store_dir", "admin_slot", "slot", "target", "strategy", "due", "force" }

local _M = { _VERSION = "0.1.0" }

local WORKER_MODULE = "rotor.ngx_worker"
local PROVIDERS = { paylocity = true, spreetail = true, genesys = true, spapi = true }
-- the phases where ngx.sleep and ngx.run_worker_thread are available
local YIELDING = { rewrite = true, access = true, content = true, timer = true }

local Gw = {}
Gw.__index = Gw
_M.class = Gw

local function config_error(provider, op, message)
  return nil, errors.new { kind = "config", provider = provider, op = op, message = message }
end

local function from_plain(e, provider, op)
  if type(e) ~= "table" then
    return errors.new { kind = "protocol", provider = provider, op = op, message = tostring(e) }
  end
  local f = {}
  for k, v in pairs(e) do f[k] = v end
  if not errors.KINDS[f.kind] then f.kind = "protocol" end
  f.provider = f.provider or provider
  f.op = f.op or op
  return errors.new(f)
end

local function phase_error(self, op)
  local phase = ngx.get_phase()
  if YIELDING[phase] then return nil end
  return errors.new {
    kind = "config", provider = self.provider, op = op,
    message = ("rotor.ngx: %s cannot run in the %s phase (it needs ngx.sleep and "
      .. "ngx.run_worker_thread): call it from rewrite_by_lua*, access_by_lua*, content_by_lua* "
      .. "or a timer"):format(op, phase),
  }
end

-- run fn of rotor.ngx_worker in the thread pool: the function's own results, or nil, err
local function in_thread(self, op, fn, ...)
  local ok, a, b = ngx.run_worker_thread(self.thread_pool, WORKER_MODULE, fn, ...)
  if not ok then
    local msg = tostring(a)
    local kind = (msg:find("thread pool", 1, true) or msg:find("module", 1, true)) and "config"
      or "protocol"
    return nil, errors.new { kind = kind, provider = self.provider, op = op,
                             message = "rotor.ngx: the worker thread failed: " .. msg }
  end
  if a == nil then return nil, from_plain(b, self.provider, op) end
  return a, b
end

-- the file of a store slot (rotor.store.file's naming, rotor.store.naming)
local function slot_file(dir, slot)
  return dir:gsub("/+$", "") .. "/" .. require("rotor.store.naming").encode(slot) .. ".json"
end
_M.slot_file = slot_file

--- rngx.new(o) -> object | nil, err (kind "config", the option named).
-- o: provider, options (the provider's options: plain strings and numbers; client_secret only
-- without a store), dict ("rotor_tokens"), thread_pool ("rotor"), slot + store_dir (or
-- store_path: the slot's JSON file), margin (refresh this many seconds before expiry, 60),
-- check_interval (seconds between store checks per worker, 1; 0 = every request),
-- lock_timeout (how long a token request may take before others take over; timeout + 5),
-- fail_hold (seconds a failed token request answers for everyone before the next try, 1),
-- poll (the waiters' ngx.sleep step, 0.01 s), name (the dict key prefix). The timing options are
-- checked against rotor.bounds.NGX.
-- options.pacing defaults to false here (see below).
function _M.new(o)
  if type(o) ~= "table" then error("rotor.ngx.new: an options table expected", 2) end
  local provider = o.provider
  local unknown = keys.unknown_key(o, OPTIONS, "option")
  if unknown then return config_error(tostring(provider), "new", unknown) end
  if type(provider) ~= "string" or not PROVIDERS[provider] then
    return config_error(tostring(provider), "new", "option provider: one of paylocity, spreetail, genesys, spapi")
  end
  if o.options ~= nil and type(o.options) ~= "table" then
    return config_error(provider, "new", "option options: a table expected")
  end
  local options, secret = {}, nil
  for k, v in pairs(o.options or {}) do
    if k == "client_secret" then
      secret = v
    elseif type(v) == "table" or type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
      options[k] = v
    else
      return config_error(provider, "new", "option options." .. tostring(k) .. ": plain data expected")
    end
  end
  -- rotor's client-side pacing keeps its buckets per Lua VM, i.e. per pool thread here: it
  -- would neither add up across threads and workers nor be needed to be safe (a 429 is still
  -- retried after Retry-After, in the thread). Off unless asked for.
  if options.pacing == nil then options.pacing = false end
  if secret ~= nil and (type(secret) ~= "string" or secret == "") then
    return config_error(provider, "new", "option options.client_secret: a non-empty string expected")
  end
  -- the timing options, within their bounds (rotor.bounds.NGX), or named with them
  for _, k in ipairs { "margin", "check_interval", "lock_timeout", "fail_hold", "poll" } do
    if o[k] ~= nil then
      local ok, why = bounds.check(bounds.NGX, k, o[k])
      if not ok then return config_error(provider, "new", "option " .. k .. ": " .. why) end
    end
  end
  local dict_name = o.dict or "rotor_tokens"
  local dict = type(dict_name) == "string" and ngx.shared[dict_name]
  if not dict then
    return config_error(provider, "new", ("option dict: no lua_shared_dict %s"):format(tostring(dict_name)))
  end
  local path = o.store_path
  -- etcd = { the fields of rotor.store.etcd }: the slot is read from an etcd store (in the pool)
  if o.etcd ~= nil and (type(o.etcd) ~= "table" or type(o.slot) ~= "string" or o.slot == "") then
    return config_error(provider, "new", "option etcd: a table of rotor.store.etcd fields, with slot, expected")
  end
  if path == nil and o.etcd == nil and (o.slot ~= nil or o.store_dir ~= nil) then
    if type(o.slot) ~= "string" or o.slot == "" then
      return config_error(provider, "new", "option slot: a slot name expected with store_dir")
    end
    if type(o.store_dir) ~= "string" or o.store_dir == "" then
      return config_error(provider, "new", "option store_dir: a directory expected with slot")
    end
    path = slot_file(o.store_dir, o.slot)
  end
  if path == nil and secret == nil and o.etcd == nil then
    return config_error(provider, "new", "option slot/store_dir (or options.client_secret): required")
  end
  if path ~= nil and type(path) ~= "string" then
    return config_error(provider, "new", "option store_path: a path expected")
  end
  if path == nil and o.etcd == nil and type(options.client_id) ~= "string" then
    return config_error(provider, "new", "option options.client_id: required")
  end
  local function num(name, default)
    if o[name] == nil then return default end
    return o[name]
  end
  local self = setmetatable({
    provider = provider,
    options = options,
    dict = dict,
    dict_name = dict_name,
    thread_pool = o.thread_pool or "rotor",
    store_path = path,
    etcd = o.etcd,
    slot = o.slot,
    margin = num("margin", 60),
    check_interval = num("check_interval", 1),
    lock_timeout = num("lock_timeout", (tonumber(options.timeout) or 30) + 5),
    fail_hold = num("fail_hold", 1),
    poll = num("poll", 0.01),
    name = o.name or (provider .. ":" .. (o.slot or options.client_id or "?")),
    _static = secret,
  }, Gw)
  if type(self.thread_pool) ~= "string" then
    return config_error(provider, "new", "option thread_pool: a thread_pool name expected")
  end
  return self
end

-- The credential to act with: client_id, secret, fingerprint | nil, err. With a store, the
-- slot's file is re-read at most every check_interval seconds (a small local file, read in the
-- thread pool).
function Gw:credentials()
  if self.etcd then return self:_etcd_credentials() end
  if not self.store_path then
    local c = self._cred
    if not c then
      c = { id = self.options.client_id, secret = self._static }
      c.fp = ngx.encode_base64(ngx.sha1_bin(c.id .. "\0" .. c.secret))
      self._cred = c
    end
    return c.id, c.secret, c.fp
  end
  local now = ngx.now()
  local c = self._cred
  if c and now - self._checked < self.check_interval then return c.id, c.secret, c.fp end
  -- read in the thread pool, as the store reads it (rotor.ngx_worker.read_file): a FIFO planted
  -- there must not block this worker, nor a link lead it to another file
  local text, ferr = in_thread(self, "token", "read_file", self.store_path)
  if not text then return nil, ferr end
  self._checked = now
  if c and c.text == text then return c.id, c.secret, c.fp end
  local rec = cjson.decode(text)
  local cur = type(rec) == "table" and type(rec.versions) == "table" and rec.versions.current
  if type(cur) ~= "table" or type(cur.secret) ~= "string" or cur.secret == "" then
    local why = "holds no current secret"
    if type(rec) ~= "table" then
      why = "is not a slot record (not a JSON object): rotor doctor shows the slot"
    elseif type(cur) == "table" and type(cur.secret) == "table" then
      -- the one secret a store writes as an object: sealed at rest (a file store with key_file),
      -- and nginx holds no key for it
      why = "holds its secret sealed (the file store has a key_file): rotor.ngx opens sealed secrets from an "
        .. "etcd store (option etcd, with its key_file); give it an unsealed file store, or an etcd store"
    end
    return nil, errors.new { kind = "store", provider = self.provider, op = "token",
                             message = ("store slot %s %s"):format(tostring(self.slot), why) }
  end
  local id = type(cur.client_id) == "string" and cur.client_id or self.options.client_id
  if type(id) ~= "string" then
    return nil, errors.new { kind = "store", provider = self.provider, op = "token",
                             message = ("store slot %s holds no client_id"):format(tostring(self.slot)) }
  end
  c = { id = id, secret = cur.secret, text = text,
        fp = ngx.encode_base64(ngx.sha1_bin(id .. "\0" .. cur.secret)) }
  self._cred = c
  return c.id, c.secret, c.fp
end

-- The same from an etcd store: read in the thread pool (libcurl), at most every check_interval s.
function Gw:_etcd_credentials()
  local now = ngx.now()
  local c = self._cred
  if c and now - self._checked < self.check_interval then return c.id, c.secret, c.fp end
  local cur, err = in_thread(self, "token", "read_slot", self.etcd, self.slot)
  if not cur then return nil, err end
  self._checked = now
  local id = type(cur.client_id) == "string" and cur.client_id or self.options.client_id
  if type(id) ~= "string" then
    return nil, errors.new { kind = "store", provider = self.provider, op = "token",
                             message = ("store slot %s holds no client_id"):format(tostring(self.slot)) }
  end
  if c and c.id == id and c.secret == cur.secret then return c.id, c.secret, c.fp end
  c = { id = id, secret = cur.secret, fp = ngx.encode_base64(ngx.sha1_bin(id .. "\0" .. cur.secret)) }
  self._cred = c
  return c.id, c.secret, c.fp
end

function Gw:_opts(client_id)
  local o = {}
  for k, v in pairs(self.options) do o[k] = v end
  o.client_id = client_id
  return o
end

-- The single-flight backend over the shared dict (rotor.singleflight): tokens under "t:",
-- locks under "l:" (added with an expiry: a holder that died lets go), failures under "e:".
local function dict_backend(self)
  local dict, poll = self.dict, self.poll
  return {
    get = function(key)
      local v = dict:get("t:" .. key)
      local t = v and cjson.decode(v)
      if type(t) ~= "table" or type(t.token) ~= "string" then return nil end
      local left = t.expires - ngx.now()
      if left <= 0 then return nil end
      return t.token, left, t.ttl
    end,
    put = function(key, tok, ttl)
      ttl = tonumber(ttl) or 3600
      local ok, serr = dict:set("t:" .. key, cjson.encode { token = tok, ttl = ttl, expires = ngx.now() + ttl }, ttl)
      if not ok then ngx.log(ngx.WARN, "rotor.ngx: cannot cache the token in ", self.dict_name, ": ", serr) end
      dict:delete("e:" .. key)
      return ttl
    end,
    drop = function(key, tok)
      local v = dict:get("t:" .. key)
      local t = v and cjson.decode(v)
      if tok ~= nil and not (type(t) == "table" and t.token == tok) then return false end
      dict:delete("t:" .. key)
      return true
    end,
    try_lock = function(key, seconds) return (dict:add("l:" .. key, true, seconds)) end,
    unlock = function(key) dict:delete("l:" .. key) end,
    fail = function(key, e, hold)
      dict:set("e:" .. key, cjson.encode { at = ngx.now(), err = { kind = e.kind, status = e.status,
        message = e.message, provider = e.provider, op = e.op, request_id = e.request_id,
        retry_after = e.retry_after } }, math.max(hold, 0.001))
    end,
    failure = function(key, since)
      local v = dict:get("e:" .. key)
      local f = v and cjson.decode(v)
      if type(f) ~= "table" or (f.at or 0) < since then return nil end
      return from_plain(f.err, self.provider, "token")
    end,
    wait = function() ngx.sleep(poll) end,
    notify = function() end,
    now = ngx.now,
  }
end

--- gw:token() -> access token (string) | nil, err
function Gw:token()
  local perr = phase_error(self, "token")
  if perr then return nil, perr end
  local id, secret, fp = self:credentials()
  if not id then return nil, secret end
  self._backend = self._backend or dict_backend(self)
  local tok, err = singleflight.token(self._backend, self.name .. "|" .. fp, {
    due = singleflight.ahead_of_expiry(self.margin),
    lock_timeout = self.lock_timeout, fail_hold = self.fail_hold,
    fetch = function()
      local t, ttl = in_thread(self, "token", "token", self.provider, self:_opts(id), secret)
      if t then return t, tonumber(ttl) or 3600 end
      return nil, ttl
    end,
    -- a valid token due for refresh: its successor is fetched once, in a timer, off this request
    background = function(start, release)
      local ok, terr = ngx.timer.at(0, function(premature)
        if premature then return release() end
        local t, ferr = start()
        if not t then ngx.log(ngx.WARN, "rotor.ngx: refreshing the ", self.name, " token failed: ", tostring(ferr)) end
      end)
      if not ok then
        release()
        ngx.log(ngx.WARN, "rotor.ngx: cannot start a token refresh: ", terr)
      end
    end,
    timeout_error = function()
      return errors.new { kind = "timeout", provider = self.provider, op = "token",
                          message = "rotor.ngx: gave up waiting for another worker's token request" }
    end,
  })
  if not tok then return nil, err end
  return tok
end

--- Drop the cached token for every worker (only if it still is `tok`, when given).
function Gw:invalidate(tok)
  local id, _, fp = self:credentials()
  if not id then return false end
  self._backend = self._backend or dict_backend(self)
  return self._backend.drop(self.name .. "|" .. fp, tok)
end

--- gw:request(method, path, opts) -> decoded JSON body (true for an empty 2xx) | nil, err
-- path is appended to the provider's base_url. opts: op (a name for errors and pacing),
-- body (a table, sent as JSON), headers ({ {name, value}, ... }), url (absolute URL instead).
-- A 401 drops the cached token, and the call is made once more with a fresh one.
function Gw:request(method, path, opts)
  if type(method) ~= "string" or type(path) ~= "string" then
    error("rotor.ngx: request(method, path[, opts]) expected", 2)
  end
  local perr = phase_error(self, "request")
  if perr then return nil, perr end
  local okey = self._okey
  if not okey then
    okey = self.name .. "|" .. (cjson.encode(self.options) or "")
    self._okey = okey
  end
  local retried = false
  while true do
    local tok, err = self:token()
    if not tok then return nil, err end
    local id = self:credentials()
    local res
    res, err = in_thread(self, opts and opts.op or "request", "request", self.provider,
                         self:_opts(id), okey .. "|" .. id, tok, method, path, opts)
    if res ~= nil then
      if res == true then return true end
      local v = cjson.decode(res)
      if v == nil then
        return nil, errors.new { kind = "protocol", provider = self.provider, op = "request",
                                 message = "rotor.ngx: the worker thread returned no JSON" }
      end
      return v
    end
    if err.kind == "auth" and err.status == 401 and not retried then
      retried = true
      self:invalidate(tok)
    else
      return nil, err
    end
  end
end

--- gw:run(fn, ...) -> fn's results: run any function of rotor.ngx_worker in the thread pool
-- (for instance "rotate"), in a phase that may yield.
function Gw:run(fn, ...)
  local perr = phase_error(self, fn)
  if perr then return nil, perr end
  return in_thread(self, fn, fn, ...)
end

--- rngx.rotate(job, thread_pool) -> result | nil, err: rotor.ngx_worker.rotate (a rotation of
-- a store slot, see there) in the thread pool; from a timer (ngx.timer.every) typically.
function _M.rotate(job, thread_pool)
  local ctx = { provider = job and job.provider, thread_pool = thread_pool or "rotor" }
  if type(job) ~= "table" then return config_error(tostring(ctx.provider), "rotate", "a job table expected") end
  local unknown = keys.unknown_key(job, JOB, "job field")
  if unknown then return config_error(tostring(ctx.provider), "rotate", unknown) end
  local perr = phase_error(ctx, "rotate")
  if perr then return nil, perr end
  return in_thread(ctx, "rotate", "rotate", job)
end

return _M
