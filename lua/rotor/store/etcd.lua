-- The etcd store: slots shared by a fleet of rotors through an etcd 3.4+ cluster, spoken to over
-- its v3 JSON gateway (HTTPS, libcurl + lua-cjson: no other client library).
--
--   local store = rotor.store.etcd {
--     endpoints = { "https://10.0.0.1:2379", ... },  -- any member serves; the next is tried on failure
--     prefix = "/rotor/",                            -- every key rotor writes is under it
--     cainfo = "ca.pem", cert = "rotor.pem", key = "rotor.key",   -- TLS (client certificate)
--     username = "rotor", password = "..." | password_env = "VAR",  -- etcd auth (optional)
--     key_file = "seal.key" | key_env = "VAR",       -- the sealing key: required
--     old_key_files = {...}, old_key_envs = {...},   -- older keys, still opened
--     lease_ttl = 60,                                -- seconds, 5 .. 3600
--     timeout = 5,                                   -- per etcd request, seconds
--     audit_file = nil,                              -- the audit trail in a file instead of etcd
--   }
--
-- Keys: <prefix>slots/<slot>  the record (JSON, secrets sealed);  <prefix>locks/<slot>  the lock,
-- bound to a lease;  <prefix>audit/<time>-<rand>  the audit trail;  <prefix>client-locks/<client>
-- and <prefix>claims/<client>  a client's claim by its first slot (rotor.record.claim_client).
-- Locks with fencing: the lock key's create revision is the fencing token. Every record write is a
-- transaction that succeeds only while the lock key still has that revision (the lease is alive and
-- nobody took the lock over) and the record is the one last read. Once a write is refused, the
-- lock is `fenced`: no later write or minting request is made through it (error kind "fenced").
-- A lease that merely lapsed (a deploy hook that ran longer than lease_ttl, a paused process) is
-- taken again when nobody holds the lock and the record is still the one this rotor last wrote
-- or read: the new lock and the write go in one transaction that compares both. Another rotor
-- writes the record before anything it does at the provider (the intent before a mint, promote
-- before a retire that calls the provider), so an unchanged record means nothing happened since.
local core = require "rotor.core"
local json = require "rotor.json"
local errors = require "rotor.errors"
local sched = require "rotor.sched"
local timefmt = require "rotor.timefmt"
local seal = require "rotor.store.seal"
local file_store = require "rotor.store.file"

local _M = {}

local Store = {}
Store.__index = Store
Store.checks_records = true -- every record read is checked (Store:_decode)
_M.class = Store

local Lock = {}
Lock.__index = Lock

local DEFAULT_TTL, MIN_TTL, MAX_TTL = 60, 5, 3600
local MAX_JOURNAL = 1000   -- journal_max of an etcd store (see MAX_ANSWER)

local function store_error(message, detail)
  return errors.new { kind = "store", message = message, detail = detail }
end

local function b64(s) return core.b64encode(s) end
local function unb64(s) return s and core.b64decode(s) or nil end

-- the end of the key range of every key starting with p
local function prefix_end(p)
  local last = p:byte(#p)
  return p:sub(1, -2) .. string.char(last + 1)
end

------------------------------------------------------------------------------------------------
-- Configuration

local FIELDS = { "kind", "endpoints", "prefix", "cainfo", "cert", "key", "username", "password", "password_env",
  "key_file", "key_env", "old_key_files", "old_key_envs", "lease_ttl", "timeout", "audit_file", "journal_max" }

--- The problems of an etcd store spec, as a list of strings naming each problem and its fix
-- (empty when the spec is fine). Files are not opened here.
function _M.check(spec)
  local out = {}
  if type(spec) ~= "table" then return { "the etcd store needs a table of fields" } end
  out[#out + 1] = require("rotor.keys").unknown_key(spec, FIELDS, "field")
  local eps = spec.endpoints
  if type(eps) == "string" then eps = { eps } end
  if type(eps) ~= "table" or #eps == 0 then
    out[#out + 1] = "endpoints: a list of client URLs expected, e.g. { \"https://127.0.0.1:2379\" }"
  else
    for i, e in ipairs(eps) do
      if type(e) ~= "string" or not (e:match("^https://[^/]+/?$") or e:match("^http://127%.[%d.]+:%d+/?$")
                                     or e:match("^http://localhost:%d+/?$")) then
        out[#out + 1] = ("endpoints[%d]: %s is not an https://host:port URL (plain http only to loopback)")
          :format(i, tostring(e))
      end
    end
  end
  if spec.prefix ~= nil and (type(spec.prefix) ~= "string" or spec.prefix == "" or spec.prefix:find("%c")) then
    out[#out + 1] = "prefix: a non-empty key prefix expected, e.g. \"/rotor/\""
  end
  for _, f in ipairs { "cainfo", "cert", "key", "audit_file" } do
    if spec[f] ~= nil and (type(spec[f]) ~= "string" or spec[f] == "") then
      out[#out + 1] = f .. ": a file path expected"
    end
  end
  -- the TLS files are checked as the transport's options are; the audit trail's path here
  local tilde = require("rotor.store").unexpanded(spec.audit_file)
  if tilde then out[#out + 1] = "audit_file: " .. tilde end
  if (spec.cert == nil) ~= (spec.key == nil) then
    out[#out + 1] = "cert and key: give both (the client certificate and its private key) or neither"
  end
  if spec.username ~= nil and (type(spec.username) ~= "string" or spec.username == "") then
    out[#out + 1] = "username: a non-empty string expected"
  end
  if spec.password ~= nil and type(spec.password) ~= "string" and not core.is_secret(spec.password) then
    out[#out + 1] = "password: a string expected (or password_env naming a variable)"
  end
  if spec.password ~= nil and spec.password_env ~= nil then
    out[#out + 1] = "password and password_env: give one of them"
  end
  if spec.username ~= nil and spec.password == nil and spec.password_env == nil then
    out[#out + 1] = "username is set but neither password nor password_env"
  end
  if spec.username == nil and (spec.password ~= nil or spec.password_env ~= nil) then
    out[#out + 1] = "a password is set but no username"
  end
  if not seal.configured(spec) then
    out[#out + 1] = "no encryption key: the etcd store needs key_file (32 raw bytes, e.g. "
      .. "head -c 32 /dev/urandom > rotor-seal.key) or key_env (a variable holding 64 hex characters)"
  end
  seal.problems(spec, out)
  local ttl = spec.lease_ttl
  if ttl ~= nil and (type(ttl) ~= "number" or ttl < MIN_TTL or ttl > MAX_TTL or ttl ~= math.floor(ttl)) then
    out[#out + 1] = ("lease_ttl: whole seconds from %d to %d expected, got %s"):format(MIN_TTL, MAX_TTL, tostring(ttl))
  end
  local jok, jwhy = file_store.check_journal_max(spec.journal_max, MAX_JOURNAL,
    " (a slot's record must fit in one etcd request: 1.5 MiB by default)")
  if not jok then out[#out + 1] = jwhy end
  if spec.timeout ~= nil and (type(spec.timeout) ~= "number" or spec.timeout ~= spec.timeout
    or spec.timeout <= 0 or spec.timeout > 120) then
    out[#out + 1] = "timeout: seconds (0 < t <= 120) expected"
  end
  return out
end

--- rotor.store.etcd(spec) -> store | nil, err (kind "config": the problems, one per line)
function _M.new(spec)
  local problems = _M.check(spec)
  if #problems > 0 then
    return nil, errors.new { kind = "config", message = "etcd store: " .. table.concat(problems, "; ") }
  end
  -- the TLS files libcurl opens for every connection: named now if they cannot serve
  local v = require("rotor.client").validators
  for _, f in ipairs { { "cainfo", v.cainfo }, { "cert", v.file }, { "key", v.private_file } } do
    if spec[f[1]] ~= nil then
      local ok, why = f[2](spec[f[1]])
      if not ok then return nil, errors.new { kind = "config", message = "etcd store: " .. f[1] .. ": " .. why } end
    end
  end
  local ring, kerr = seal.keyring(spec)
  if not ring then return nil, kerr end
  local password = spec.password
  if spec.password_env then
    password = os.getenv(spec.password_env)
    if not password or password == "" then
      return nil, errors.new { kind = "config", message = "etcd store: password_env: the variable "
        .. spec.password_env .. " is not set" }
    end
  end
  local eps = type(spec.endpoints) == "string" and { spec.endpoints } or spec.endpoints
  local endpoints = {}
  for i, e in ipairs(eps) do endpoints[i] = (e:gsub("/+$", "")) end
  local prefix = spec.prefix or "/rotor/"
  if prefix:sub(-1) ~= "/" then prefix = prefix .. "/" end
  local self = setmetatable({
    kind = "etcd", endpoints = endpoints, current = 1, prefix = prefix,
    cainfo = spec.cainfo, cert = spec.cert, key = spec.key,
    username = spec.username, password = password and core.secret(password) or nil,
    ring = ring, lease_ttl = spec.lease_ttl or DEFAULT_TTL, timeout = spec.timeout or 5,
    audit_file = spec.audit_file, journal_max = spec.journal_max or 200,
    locks = {}, fenced_writes = 0, retries = 0,
  }, Store)
  return self
end

--- open(spec, base_dir): the store of a config file's `store = { kind = "etcd", ... }`; relative
-- file paths are taken from base_dir (the config file's directory).
function _M.open(spec, base_dir)
  if type(spec) ~= "table" then return nil, errors.new { kind = "config", message = "etcd store: a table expected" } end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  s.kind = nil
  if base_dir and base_dir ~= "" then
    local function rel(p)
      if type(p) == "string" and p ~= "" and p:sub(1, 1) ~= "/" then return base_dir .. "/" .. p end
      return p
    end
    for _, f in ipairs { "cainfo", "cert", "key", "key_file", "audit_file" } do s[f] = rel(s[f]) end
    if type(s.old_key_files) == "table" then
      local t = {}
      for i, p in ipairs(s.old_key_files) do t[i] = rel(p) end
      s.old_key_files = t
    end
  end
  return _M.new(s)
end

function Store:__tostring()
  return ("rotor.store.etcd(%s, prefix %s)"):format(table.concat(self.endpoints, ","), self.prefix)
end

------------------------------------------------------------------------------------------------
-- The gateway client

-- gRPC codes the gateway reports that are worth another try (on another member)
local RETRY_CODES = { [2] = true, [4] = true, [14] = true, [8] = true }
-- what one answer of the gateway may hold: a value as large as etcd takes in a request (1.5 MiB
-- by default), base64 in JSON. The file store's 100,000 journal entries (some 300 bytes each)
-- would make a record no etcd takes: journal_max is held to MAX_JOURNAL here.
local MAX_ANSWER = 4 * 1024 * 1024

local function decode_body(res)
  local v = res.body and res.body ~= "" and json.decode(res.body) or nil
  return type(v) == "table" and v or nil
end

function Store:_request(path, body, auth)
  local ep = self.endpoints[self.current]
  local headers = { { "Content-Type", "application/json" }, { "Accept", "application/json" } }
  if auth and self.token then headers[#headers + 1] = { "Authorization", self.token } end
  local res, rerr = sched.request {
    url = ep .. path, method = "POST", headers = headers, body = body,
    timeout = self.timeout, connect_timeout = math.min(self.timeout, 3),
    cainfo = self.cainfo, sslcert = self.cert, sslkey = self.key, http2 = false, max_body = MAX_ANSWER,
  }
  if not res then return nil, errors.new { kind = "config", message = "etcd: " .. tostring(rerr and rerr.message) } end
  return res, ep
end

-- Returns true | nil, res (the gateway's answer, for the caller to classify) | nil, err
function Store:_authenticate()
  local body = core.secret(json.encode { name = self.username, password = self.password:reveal() })
  local res, ep = self:_request("/v3/auth/authenticate", body, false)
  body:close()
  if not res then return nil, ep end
  local v = not res.error and decode_body(res)
  if res.status == 200 and v and type(v.token) == "string" then
    self.token = core.secret(v.token)
    return true
  end
  if not res.error and res.status >= 400 and res.status < 500 and res.status ~= 400 or
     (v and tonumber(v.code) == 3 and tostring(v.message):find("authentication failed", 1, true)) then
    return nil, errors.new { kind = "auth", message = ("etcd refused the credentials of user %s (%s); check "
      .. "username and password"):format(tostring(self.username), tostring(v and v.message or res.status)) }
  end
  return nil, res
end

local function describe(res, v)
  if res.error then return res.error.kind .. ": " .. tostring(res.error.message) end
  local msg = v and (v.message or v.error) or (res.body and res.body:sub(1, 200)) or ""
  return ("HTTP %s: %s"):format(tostring(res.status), tostring(msg))
end

-- true when, with this member's TLS refusal, every member has failed since one last answered and at
-- least one of them refused the handshake (the others being unreachable)
local function every_member_refused(endpoints, failed, ep)
  failed[ep] = "tls"
  for _, e in ipairs(endpoints) do
    if not failed[e] then return false end
  end
  return true
end

--- One gateway call with failover: another member (and a fresh auth token) is tried when a
-- member is unreachable, has no leader, or the request timed out. The callers only send requests
-- that are safe to repeat (reads, keep-alives, and transactions guarded by a compare that a
-- repeat of a committed one fails). Returns the decoded body | nil, err.
function Store:call(path, body_table)
  local body = json.encode(body_table)
  local reauthed = false
  -- how each member failed since one last answered: "tls" (refused the handshake) or "down"
  local failed = {}
  local last
  local attempts = math.max(8, 3 * #self.endpoints)
  for attempt = 1, attempts do
    local res, v, aerr
    if self.username and not self.token then
      local ok
      ok, aerr = self:_authenticate()
      if not ok then
        if errors.is(aerr) then return nil, aerr end
        res = aerr
      end
    end
    if not res then
      local rerr
      res, rerr = self:_request(path, body, true)
      if not res then return nil, rerr end
    end
    v = not res.error and decode_body(res) or nil
    if res.error == nil and res.status == 200 and v and not aerr then return v end
    local ep = self.endpoints[self.current]
    last = ("%s %s: %s"):format(ep, aerr and "/v3/auth/authenticate" or path, describe(res, v))
    local code = v and tonumber(v.code)
    local msg = v and tostring(v.message or v.error or "") or ""
    if res.error == nil and res.status == 400 and (res.body or ""):find("CommonName", 1, true) then
      return nil, errors.new { kind = "config", message = "etcd refuses rotor's client certificate: its gateway "
        .. "answers 400 to a certificate carrying a CommonName when client-certificate auth is on. Make "
        .. "rotor's certificate with a subject without CN (openssl req ... -subj '/O=rotor')" }
    end
    if res.error == nil and (code == 16 or msg:find("auth token", 1, true)) and self.username and not reauthed then
      -- the token expired, or the member restarted and forgot it: authenticate again
      self.token, reauthed = nil, true
    elseif res.error == nil and (res.status == 403 or code == 7) then
      return nil, errors.new { kind = "config", message = ("etcd refused the request (%s): the etcd user %s "
        .. "needs readwrite permission on the key prefix %s (etcdctl role grant-permission ROLE readwrite %s "
        .. "--prefix=true)"):format(msg, tostring(self.username), self.prefix, self.prefix) }
    elseif res.error and res.error.kind == "protocol" and res.error.curl_code == 23 then
      -- an answer the core stopped taking (CURLE_WRITE_ERROR: larger than it reads, body or
      -- headers): the same from every member
      return nil, store_error(("etcd's answer to %s is larger than rotor reads (%s)"):format(path,
        tostring(res.error.message)), last)
    elseif res.error and res.error.kind == "config" then
      return nil, errors.new { kind = "config", message = "etcd " .. ep .. ": " .. tostring(res.error.message)
        .. " (check endpoints, cainfo, cert and key)" }
    elseif res.error and res.error.kind == "tls" and every_member_refused(self.endpoints, failed, ep) then
      -- every member that could be reached refused the handshake: the configuration, not a member
      -- going down (one member down does not hide a wrong cainfo)
      return nil, errors.new { kind = "tls", message = "etcd " .. ep .. ": " .. tostring(res.error.message)
        .. " (check endpoints, cainfo, cert and key)" }
    elseif res.error or res.status >= 500 or RETRY_CODES[code] then
      -- a handshake cut short (a member going down) counts as a TLS failure until another answers
      if res.error then
        failed[ep] = res.error.kind == "tls" and "tls" or "down"
      else
        failed = {}
      end
      -- another member, after a short pause once every member was tried
      self.current = self.current % #self.endpoints + 1
      self.retries = self.retries + 1
      if attempt % #self.endpoints == 0 then sched.sleep(math.min(2, 0.25 * attempt)) end
    else
      return nil, store_error("etcd refused " .. path .. " (" .. last .. ")", last)
    end
  end
  return nil, store_error("etcd: no member of the cluster answered " .. path .. " after " .. attempts
    .. " tries (the last: " .. tostring(last) .. "); check that the cluster is up and has a leader", last)
end

------------------------------------------------------------------------------------------------
-- Keys and records

function Store:slot_key(slot)
  return self.prefix .. "slots/" .. file_store.encode(file_store.check_slot(slot, 3))
end

--- The shell commands that keep a slot's record in a local file and delete its key, so that the
-- next rotation starts the slot afresh (rotor doctor's advice for a record that cannot be read).
-- No password is put on the command line: with a user, the command asks for it once (unless
-- ETCDCTL_PASSWORD is set) and hands it to both etcdctl runs in ETCDCTL_PASSWORD (etcdctl would
-- ask once per run). quote: the caller's.
function Store:aside_command(slot, quote)
  local key = self:slot_key(slot)
  local ctl = { "etcdctl", "--endpoints=" .. quote(table.concat(self.endpoints, ",")) }
  for _, f in ipairs { { "cacert", self.cainfo }, { "cert", self.cert }, { "key", self.key },
                       { "user", self.username } } do
    if f[2] then ctl[#ctl + 1] = "--" .. f[1] .. "=" .. quote(f[2]) end
  end
  ctl = table.concat(ctl, " ")
  local ask = ""
  if self.username then
    ask = ("{ [ -n \"${ETCDCTL_PASSWORD:-}\" ] || { printf 'etcd password for %%s: ' %s >&2; stty -echo 2>/dev/null; "
      .. "read -r ETCDCTL_PASSWORD; stty echo 2>/dev/null; echo >&2; }; } && export ETCDCTL_PASSWORD && ")
      :format(quote(self.username))
  end
  return ("%s%s get --print-value-only %s > %s && %s del %s"):format(ask, ctl, quote(key),
    quote(file_store.encode(slot) .. ".corrupt.json"), ctl, quote(key))
end

function Store:lock_key(slot)
  return self.prefix .. "locks/" .. file_store.encode(file_store.check_slot(slot, 3))
end

-- the stored value of a record: { v = 1, w = <write nonce>, record = <secrets sealed> }
function Store:_encode(slot, record, nonce)
  file_store.trim_journal(record, self.journal_max)
  -- secrets stay rotor.secret values until sealed: the plain text never becomes a Lua string
  local copy = seal.record_to_write(self.ring, record, slot)
  local versions = copy.versions or {}
  for _, label in ipairs(file_store.VERSION_LABELS) do
    local v = versions[label]
    if type(v) == "table" and v.secret ~= nil and not seal.is_sealed(v.secret) then
      error("store:put: the " .. label .. " secret of " .. slot .. " is neither a string nor a rotor.secret", 3)
    end
  end
  return json.encode({ v = 1, w = nonce, record = copy }, nil, record.journal)
end

-- a record read back, checked against the one schema (rotor.record) as the file store checks
-- its files: every reader (rotation, status, doctor, rotor.ngx) gets a valid record or this error
function Store:_decode(slot, kv)
  local text = unb64(kv.value)
  local doc, jerr
  if text then doc, jerr = json.decode(text) end
  local record, err, why
  if type(doc) ~= "table" then
    why = select(3, file_store.open_record(self.ring, slot, doc, jerr)) -- malformed JSON, or not an object
  elseif type(doc.record) ~= "table" then
    why = "no record in the value"
  else
    record, err, why = file_store.open_record(self.ring, slot, doc.record)
    if record then return record, doc.w end
  end
  if err then return nil, err end
  return nil, store_error(("slot %s holds no valid record: %s (etcd key %s); nothing was changed. Restore the "
    .. "value from a backup, or delete the key to start the slot afresh (rotor doctor shows the slot)")
    :format(slot, why, self:slot_key(slot)), why)
end

local function kv_of(resp)
  return type(resp.kvs) == "table" and resp.kvs[1] or nil
end

function Store:get(slot)
  local key = self:slot_key(slot)
  local v, err = self:call("/v3/kv/range", { key = b64(key) })
  if not v then return nil, err end
  local kv = kv_of(v)
  local lock = self.locks[slot]
  if lock then lock.read_rev = kv and kv.mod_revision or "0" end
  if not kv then return false end
  return self:_decode(slot, kv)
end

-- the error of a lost lock; refused: the number of writes etcd's fencing compare refused so far
-- head: what happened, without what the rotor holding the slot now does (rotation says that
-- itself when this rotor holds a secret it minted and could not store)
local function fenced_error(slot, why, refused)
  local head = ("the lock on slot %s was lost (%s)%s: this rotor stops here, writes and mints nothing more")
    :format(slot, why, refused and (", and etcd refused this rotor's stale write (fenced writes in this "
    .. "process: " .. refused .. ")") or "")
  return errors.new { kind = "fenced", slot = slot, fenced_writes = refused, head = head,
                      message = head .. "; the rotor holding the slot now finishes the rotation" }
end

-- the compare that holds while the client's lock cl is the one this rotor took
local function client_held(cl)
  return { key = b64(cl.key), target = "CREATE", result = "EQUAL", create_revision = cl.token }
end

local function claim_lapsed(slot)
  return errors.new { kind = "fenced", client_lock_lost = true, message = ("slot %s: the lock on its client lapsed "
    .. "before the slot's record named the client (a pause longer than lease_ttl?); another rotor may have "
    .. "claimed it since"):format(slot) }
end

--- store:put(slot, record[, opts]) -> true | nil, err. opts.client_lock: a client's lock
-- (store:lock_client) that must still be held when the record is written, in the same transaction:
-- the first record of a slot naming a client is written only while its claim of the client holds
-- (else kind "fenced" with client_lock_lost = true, and the slot's lock is kept).
function Store:put(slot, record, opts)
  if type(record) ~= "table" then error("store:put: a record table expected", 2) end
  local cl = type(opts) == "table" and opts.client_lock or nil
  local nonce = core.random_hex(12)
  local value = b64(self:_encode(slot, record, nonce))
  local key = self:slot_key(slot)
  local lock = self.locks[slot]
  if not lock then
    -- no lock held by this store object: a plain put (tools and tests; rotation always locks)
    local v, err = self:call("/v3/kv/put", { key = b64(key), value = value })
    if not v then return nil, err end
    return true
  end
  if lock.fenced then return nil, lock.fenced end
  if lock.read_rev == nil then
    -- written before ever read under this lock: the record as it is now is the one replaced
    local cur, gerr = self:call("/v3/kv/range", { key = b64(key), keys_only = true })
    if not cur then return nil, gerr end
    local kv = kv_of(cur)
    lock.read_rev = kv and kv.mod_revision or "0"
  end
  local txn = {
    compare = {
      { key = b64(lock.key), target = "CREATE", result = "EQUAL", create_revision = lock.token },
      { key = b64(key), target = "MOD", result = "EQUAL", mod_revision = lock.read_rev or "0" },
    },
    success = { { request_put = { key = b64(key), value = value } } },
    failure = { { request_range = { key = b64(lock.key) } }, { request_range = { key = b64(key) } } },
  }
  if cl then
    txn.compare[3] = client_held(cl)
    txn.failure[3] = { request_range = { key = b64(cl.key) } }
  end
  local v, err = self:call("/v3/kv/txn", txn)
  if not v then return nil, err end
  if v.succeeded then
    lock.read_rev = v.header and v.header.revision
    -- the lease is renewed between writes once half of it is gone (etcd judged this write itself)
    lock:refresh(false)
    return true
  end
  local r = type(v.responses) == "table" and v.responses or {}
  if cl then
    local cl_kv = r[3] and r[3].response_range and kv_of(r[3].response_range)
    if not cl_kv or tostring(cl_kv.create_revision) ~= tostring(cl.token) then return nil, claim_lapsed(slot) end
  end
  local lock_kv = r[1] and r[1].response_range and kv_of(r[1].response_range)
  local rec_kv = r[2] and r[2].response_range and kv_of(r[2].response_range)
  local rec_rev = rec_kv and tostring(rec_kv.mod_revision) or "0"
  if not lock_kv and rec_rev == tostring(lock.read_rev or "0") then
    -- the lease lapsed and nobody wrote the slot since: take the lock again, with the write
    local ok, rerr = self:_relock(lock, key, value, rec_rev, cl)
    if ok then return true end
    if rerr then return nil, rerr end
    if cl and ok == nil then return nil, claim_lapsed(slot) end
  end
  if lock_kv and tostring(lock_kv.create_revision) == tostring(lock.token) and rec_kv then
    -- a repeat of a transaction that committed on a member that then failed: our own write is there
    local text = unb64(rec_kv.value)
    local doc = text and json.decode(text)
    if type(doc) == "table" and doc.w == nonce then
      lock.read_rev = rec_kv.mod_revision
      return true
    end
  end
  local why
  if not lock_kv then why = "its lease lapsed; another rotor may have taken the slot over since"
  elseif tostring(lock_kv.create_revision) ~= tostring(lock.token) then why = "another rotor took it over"
  else why = "the record was changed by another writer" end
  self.fenced_writes = self.fenced_writes + 1
  lock.fenced = fenced_error(slot, why, self.fenced_writes)
  return nil, lock.fenced
end

function Store:list()
  local from = self.prefix .. "slots/"
  local v, err = self:call("/v3/kv/range", { key = b64(from), range_end = b64(prefix_end(from)), keys_only = true })
  if not v then return nil, err end
  local out = {}
  local strays = {}
  for _, kv in ipairs(type(v.kvs) == "table" and v.kvs or {}) do
    local k = unb64(kv.key)
    if k then
      local slot = file_store.slot_of(k:sub(#from + 1))
      if slot then out[#out + 1] = slot else strays[#strays + 1] = k end
    end
  end
  table.sort(out)
  table.sort(strays)
  return out, strays
end

-- Every key-value under the prefix from, in key order, read in pages of RANGE_PAGE keys at the
-- revision of the first (one snapshot): kvs | nil, err. In one answer, a prefix that grows with
-- every rotation (the audit trail: some 4 KB a rotation) outgrew what a response may hold (1 MiB)
-- after a few hundred rotations, and reading it failed from then on.
local RANGE_PAGE = 200
function Store:range_all(from)
  local out, key, rev = {}, from, nil
  local stop = b64(prefix_end(from))
  while true do
    local v, err = self:call("/v3/kv/range", { key = b64(key), range_end = stop, limit = RANGE_PAGE, revision = rev })
    if not v then return nil, err end
    local kvs = type(v.kvs) == "table" and v.kvs or {}
    for _, kv in ipairs(kvs) do out[#out + 1] = kv end
    local last = kvs[#kvs] and unb64(kvs[#kvs].key)
    if not (v.more == true and last) then return out end
    key = last .. "\0"   -- the next key after it
    rev = rev or (type(v.header) == "table" and v.header.revision) or nil
  end
end

--- Every key under the prefix with its raw value (for a dump or a check).
function Store:dump()
  local kvs, err = self:range_all(self.prefix)
  if not kvs then return nil, err end
  local out = {}
  for _, kv in ipairs(kvs) do
    out[#out + 1] = { key = unb64(kv.key), value = unb64(kv.value) }
  end
  return out
end

------------------------------------------------------------------------------------------------
-- Locks

local function first_line(path)
  local f = io.open(path, "r")
  local h = f and f:read("*l")
  if f then f:close() end
  return h
end

-- where this process runs: host name, boot id and pid namespace (read once)
local here
local function whereabouts()
  if not here then
    local p = io.popen("readlink /proc/self/ns/pid 2>/dev/null")
    local ns = p and p:read("*l")
    if p then p:close() end
    here = { host = first_line("/proc/sys/kernel/hostname") or "?",
             boot = first_line("/proc/sys/kernel/random/boot_id"), pidns = ns }
  end
  return here
end

-- A lock whose holder is a dead process of this very machine and pid namespace (same boot id,
-- same namespace, no such pid): nobody can write through it any more, so it is broken at once
-- rather than after its lease.
local function holder_dead(who)
  local w = whereabouts()
  if not (type(who) == "table" and type(who.pid) == "number" and who.boot ~= nil and who.boot == w.boot
          and who.pidns ~= nil and who.pidns == w.pidns) then
    return false
  end
  -- no such process, or a zombie (killed, not yet reaped)
  local stat = first_line("/proc/" .. math.floor(who.pid) .. "/stat")
  local state = stat and stat:match("%)%s+(%a)")
  return stat == nil or state == "Z" or state == "X"
end

-- the whereabouts a lock key's value names (grant_lease below), or {} when it names none
local function holder_of(kv)
  local who = json.decode(unb64(kv.value) or "")
  return type(who) == "table" and who or {}
end

-- A lease of lease_ttl for a lock, and the lock key's value naming this holder:
-- { lease, ttl, granted_at, holder } | nil, err. relocked: taken again after the lease lapsed.
local function grant_lease(store, relocked)
  local granted_at = core.now()
  local g, err = store:call("/v3/lease/grant", { TTL = store.lease_ttl })
  if not g then return nil, err end
  local w = whereabouts()
  return {
    lease = tostring(g.ID), ttl = tonumber(g.TTL) or store.lease_ttl, granted_at = granted_at,
    holder = json.encode { pid = core.getpid(), host = w.host, boot = w.boot, pidns = w.pidns,
                           since = timefmt.iso(), relocked = relocked or nil },
  }
end

-- Take the lock key `key` with a lease of its own, the holder's whereabouts its value, in one
-- transaction with `also` (more operations when it succeeds). -> lock fields { lease, token, ttl,
-- renewed_at, responses (of `also`) } | nil, err | false, who (the holder's whereabouts) when held.
-- A holder that died on this host is found out and its lease revoked (its key goes with it).
local function take_lease_lock(self, key, also)
  for retried = 0, 1 do
    local g, err = grant_lease(self)
    if not g then return nil, err end
    local lease = g.lease
    local success = { { request_put = { key = b64(key), value = b64(g.holder), lease = lease } } }
    for _, op in ipairs(also or {}) do success[#success + 1] = op end
    local v
    v, err = self:call("/v3/kv/txn", {
      compare = { { key = b64(key), target = "CREATE", result = "EQUAL", create_revision = "0" } },
      success = success,
      failure = { { request_range = { key = b64(key) } } },
    })
    if not v then
      self:call("/v3/lease/revoke", { ID = lease })
      return nil, err
    end
    local token, responses
    if v.succeeded then
      token, responses = v.header and v.header.revision, v.responses
    else
      local r = v.responses and v.responses[1] and v.responses[1].response_range
      local kv = r and kv_of(r)
      if kv and tostring(kv.lease) == lease then
        token = kv.create_revision -- our own put, committed by an earlier try
      else
        self:call("/v3/lease/revoke", { ID = lease })
        local who = kv and holder_of(kv) or {}
        if not (kv and retried == 0 and holder_dead(who) and kv.lease) then return false, who end
        -- revoking the dead holder's lease deletes its lock key
        local rv, rerr = self:call("/v3/lease/revoke", { ID = tostring(kv.lease) })
        if not rv and not (errors.is(rerr) and tostring(rerr.detail):find("not found", 1, true)) then
          return nil, rerr
        end
      end
    end
    if token then
      return { lease = lease, token = tostring(token), ttl = g.ttl, renewed_at = g.granted_at,
               responses = responses }
    end
  end
  return false, {}
end

-- " (pid P on HOST)" of a lock holder's whereabouts, or ""
local function holder_text(who)
  return who.pid and (" (pid %s on %s)"):format(tostring(who.pid), tostring(who.host)) or ""
end

--- store:lock(slot) -> lock | nil, err (kind "locked" when another rotor holds it)
function Store:lock(slot)
  local key = self:lock_key(slot)
  if self.locks[slot] then
    return nil, errors.new { kind = "locked", message = ("slot %s is locked by this rotor already"):format(slot) }
  end
  local l, err = take_lease_lock(self, key)
  if l == false then
    return nil, errors.new {
      kind = "locked",
      message = ("slot %s is locked by another rotor%s: a rotation of it is running now; nothing was done — "
        .. "run again once that one has finished (a lock whose holder died lapses after its lease, %d s at most)")
        :format(slot, holder_text(err), self.lease_ttl),
    }
  end
  if not l then return nil, err end
  local lock = setmetatable({
    store = self, slot = slot, key = key, lease = l.lease, token = l.token, ttl = l.ttl, renewed_at = l.renewed_at,
  }, Lock)
  self.locks[slot] = lock
  return lock
end

--- store:lock_holder(slot) -> false (no rotor holds the slot's lock, or one that died on this host
-- holds it) | the holder's whereabouts { pid =, host =, since = } | nil, err. Takes nothing.
function Store:lock_holder(slot)
  local v, err = self:call("/v3/kv/range", { key = b64(self:lock_key(slot)) })
  if not v then return nil, err end
  local kv = kv_of(v)
  if not kv then return false end
  local who = holder_of(kv)
  if holder_dead(who) then return false end
  return who
end

--- store:lock_client(key) -> lock, claimed_by | nil, err (kind "locked" when held): the lock on a
-- client (record.client_key) that a slot's first rotation of it takes (rotor.record.claim_client).
-- claimed_by: the slot that the last holder named (lock:set_note(slot)), kept in
-- <prefix>claims/<key> (no lease: it outlives the lock), or nil.
function Store:lock_client(key)
  local enc = file_store.encode(key)
  local lkey, ckey = self.prefix .. "client-locks/" .. enc, self.prefix .. "claims/" .. enc
  local l, err = take_lease_lock(self, lkey, { { request_range = { key = b64(ckey) } } })
  if l == false then
    return nil, require("rotor.record").client_locked(key, holder_text(err), (" (a lock whose holder died lapses "
      .. "after its lease, %d s at most)"):format(self.lease_ttl))
  end
  if not l then return nil, err end
  local lock = setmetatable({
    store = self, key = lkey, claim_key = ckey, lease = l.lease, token = l.token, ttl = l.ttl,
    renewed_at = l.renewed_at,
  }, Lock)
  local r = l.responses and l.responses[2] and l.responses[2].response_range
  if not l.responses then
    -- the lock was ours from an earlier try of the transaction, whose answer was lost: read the note
    local rerr
    r, rerr = self:call("/v3/kv/range", { key = b64(ckey) })
    if not r then
      lock:unlock()
      return nil, rerr
    end
  end
  local kv = r and kv_of(r)
  return lock, kv and unb64(kv.value) or nil
end

--- lock:set_note(slot) -> true | nil, err: the slot a client lock's next holder gets as claimed_by;
-- written only while the lock key is still this lock's (else kind "fenced": its lease lapsed, and
-- another rotor may hold the lock and have written its own note)
function Lock:set_note(text)
  if not self.claim_key then error("set_note: a client's lock (store:lock_client) expected", 2) end
  local v, err = self.store:call("/v3/kv/txn", {
    compare = { { key = b64(self.key), target = "CREATE", result = "EQUAL", create_revision = self.token } },
    success = { { request_put = { key = b64(self.claim_key), value = b64(text) } } },
  })
  if not v then return nil, err end
  if not v.succeeded then
    return nil, errors.new { kind = "fenced", message = "the lock on a client was lost (its lease lapsed) before "
      .. "its claim was noted" }
  end
  return true
end

-- A new lease and lock key for a lock whose lease lapsed, and the record write, in one
-- transaction: only while no lock key exists and the record's revision is rec_rev. true once
-- done; false when that no longer holds (then fenced, as before); nil, err when etcd failed.
-- true | false (someone took the slot or wrote it) | nil, err | nil (cl, the client's lock the write
-- needs, is lost)
function Store:_relock(lock, key, value, rec_rev, cl)
  local g, err = grant_lease(self, true)
  if not g then return nil, err end
  local lease = g.lease
  local v
  local compare = {
    { key = b64(lock.key), target = "CREATE", result = "EQUAL", create_revision = "0" },
    { key = b64(key), target = "MOD", result = "EQUAL", mod_revision = rec_rev },
  }
  if cl then compare[3] = client_held(cl) end
  v, err = self:call("/v3/kv/txn", {
    compare = compare,
    success = { { request_put = { key = b64(lock.key), value = b64(g.holder), lease = lease } },
                { request_put = { key = b64(key), value = value } } },
    failure = cl and { { request_range = { key = b64(cl.key) } } } or nil,
  })
  if not v or not v.succeeded then
    self:call("/v3/lease/revoke", { ID = lease })
    if not v then return nil, err end
    local r = cl and type(v.responses) == "table" and v.responses[1] and v.responses[1].response_range
    local cl_kv = r and kv_of(r)
    if cl and (not cl_kv or tostring(cl_kv.create_revision) ~= tostring(cl.token)) then return nil end
    return false
  end
  local rev = v.header and v.header.revision
  lock.lease, lock.token, lock.read_rev = lease, tostring(rev), rev
  lock.ttl, lock.renewed_at = g.ttl, g.granted_at
  self.relocks = (self.relocks or 0) + 1
  return true
end

--- Seconds of lease left, as this process can be sure of (counted from when the grant or the
-- last keep-alive was sent).
function Lock:remaining()
  return self.ttl - (core.now() - self.renewed_at)
end

--- Keep the lease alive: always when force, else when less than half of it is left.
function Lock:refresh(force)
  if self.fenced then return nil, self.fenced end
  if not force and self:remaining() > self.ttl / 2 then return true end
  local sent = core.now()
  local v, err = self.store:call("/v3/lease/keepalive", { ID = self.lease })
  if not v then return nil, err end
  local r = v.result or v
  local ttl = tonumber(r.TTL) or 0
  if ttl <= 0 then
    self.fenced = fenced_error(self.slot, "its lease lapsed: etcd no longer knows it")
    return nil, self.fenced
  end
  self.ttl, self.renewed_at = ttl, sent
  return true
end

--- Called by rotation before a minting request whose whole time budget is budget seconds: the
-- lease must outlive it (plus a margin), else it is renewed first; a lost lock refuses.
function Lock:before_mint(budget)
  if self.fenced then return nil, self.fenced end
  local margin = 1 + 0.1 * budget
  if self:remaining() > budget + margin then return true end
  local ok, err = self:refresh(true)
  if not ok then return nil, err end
  if self:remaining() <= budget + margin then
    return nil, errors.new { kind = "config", message = ("the lock's lease (lease_ttl %d s) cannot outlive the "
      .. "minting request's time budget (%.0f s + %.1f s margin): raise lease_ttl or lower the provider's "
      .. "timeout/connect_timeout"):format(self.ttl, budget, margin) }
  end
  return true
end

function Lock:unlock()
  if self.store.locks[self.slot] == self then self.store.locks[self.slot] = nil end
  if self.released then return true end
  self.released = true
  if self.fenced then return true end
  -- revoking the lease deletes the lock key; if this fails the lease lapses on its own
  self.store:call("/v3/lease/revoke", { ID = self.lease })
  return true
end

function Lock:__tostring()
  return ("rotor.store.etcd lock(%s, token %s)"):format(self.slot, tostring(self.token))
end

------------------------------------------------------------------------------------------------
-- Audit: appended under <prefix>audit/ (or to audit_file), fingerprints keyed by a key derived
-- from the sealing key (the same on every host of the fleet).

local EtcdAudit = {}
EtcdAudit.__index = EtcdAudit

function EtcdAudit:fingerprint(secret)
  if secret == nil then return nil end
  return core.hmac_sha256_hex(self.key, secret)
end

--- Append one entry, or several (an array of them) in one transaction.
function EtcdAudit:write(fields)
  local audit = require "rotor.audit"
  local list = fields[1] ~= nil and fields or { fields }
  local puts, rnd = {}, core.random_hex(6)
  for i, f in ipairs(list) do
    local entry = audit.entry(self, f)
    -- unique; entries() reads them in the order written (revision, then the place in this write)
    local key = ("%saudit/%s-%s-%03d"):format(self.store.prefix, entry.time, rnd, i)
    puts[i] = { request_put = { key = b64(key), value = b64(json.encode(entry)) } }
  end
  local v, err = self.store:call("/v3/kv/txn", { success = puts })
  if not v then return nil, err end
  return true
end

function EtcdAudit:entries()
  local kvs, err = self.store:range_all(self.store.prefix .. "audit/")
  if not kvs then return nil, err end
  table.sort(kvs, function(a, b)
    local ra, rb = tonumber(a.create_revision) or 0, tonumber(b.create_revision) or 0
    if ra ~= rb then return ra < rb end
    return (unb64(a.key) or "") < (unb64(b.key) or "")
  end)
  local out = {}
  for _, kv in ipairs(kvs) do
    local e = json.decode(unb64(kv.value) or "")
    if type(e) == "table" then out[#out + 1] = e end
  end
  return out
end

function Store:audit_key()
  return self.ring:derive("audit fingerprints")
end

--- The store's audit trail (rotation uses it when no `audit` option is given).
function Store:audit_trail()
  if self.audit_file then
    return require("rotor.audit").open { path = self.audit_file, key = self:audit_key() }
  end
  return setmetatable({ store = self, key = self:audit_key() }, EtcdAudit)
end

return _M
