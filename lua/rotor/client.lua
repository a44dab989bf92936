-- The base provider object: option validation, tokens, and self:call() for the API
-- operations. Providers (lua/rotor/providers/<name>.lua) build on it; see doc/INTERNALS.md §2, §5.
--
-- Options every provider takes (besides its own):
--   client_id (required), client_secret (string or rotor.secret; kept as a rotor.secret, never in
--   p.options), base_url, token_url (https, or http to a loopback host), cainfo, timeout (s, 30),
--   connect_timeout, proxy, user_agent, http2 (true: HTTP/2 where the server offers it; default
--   false: HTTP/1.1), max_wait (bound on 429/5xx waits, s; rotor.http's 120),
--   retries, token_margin (refresh this long before expiry, s; 60),
--   pacing (false: no client-side pacing at all),
--   mint_fresh_connection (true: every minting request opens a connection of its own; default
--   false: it may go on a warm connection, and libcurl is never let to send it a second time),
--   rate_limits = { default = {rate=, per=} | false, [op] = {rate=, per=} | false } (replace the
--   provider's documented limits: Paylocity 25/s, Genesys 300/min per token, SP-API rotate 1/min).
local core = require "rotor.core"
local errors = require "rotor.errors"
local bounds = require "rotor.bounds"
local json = require "rotor.json"
local http = require "rotor.http"
local oauth = require "rotor.oauth"

local _M = {}

local Client = {}
_M.methods = Client

local DEFAULT_TIMEOUT = 30

-- Options every provider takes; the value is the validator (returns the cleaned value or nil, why).
local function is_secret(v)
  return core.is_secret(v)
end

local function v_string(v)
  if type(v) ~= "string" or v == "" then return nil, "a non-empty string expected" end
  return v
end

local function v_secret(v)
  if is_secret(v) then return v end
  if type(v) == "string" and v ~= "" then return v end
  return nil, "a non-empty string or a rotor.secret expected"
end

local function v_positive(v)
  if type(v) ~= "number" or v ~= v or v <= 0 then return nil, "a positive number expected" end
  return v
end

-- a transfer's time limit, and a span of time that may be none (rotor.bounds)
local function v_seconds(v)
  local ok, why = bounds.within(bounds.TIME_LIMIT, v)
  if not ok then return nil, why end
  return v
end

local function v_span(v)
  local ok, why = bounds.within(bounds.SPAN, v)
  if not ok then return nil, why end
  return v
end

local function v_count(v)
  if math.type and math.type(v) == "float" and v == math.floor(v) then v = math.tointeger(v) end
  if type(v) ~= "number" or v < 0 or v ~= math.floor(v) then return nil, "an integer >= 0 expected" end
  return v
end

local function v_boolean(v)
  if type(v) ~= "boolean" then return nil, "true or false expected" end
  return v
end

-- a CA bundle is read when the option is checked, without blocking (a FIFO or a directory at the
-- path is refused, not waited on), and must hold a PEM certificate: a wrong file is named here,
-- before anything runs, rather than as a TLS failure of the first request
local function v_cainfo(v)
  if type(v) ~= "string" or v == "" then return nil, "a path to a CA bundle expected" end
  -- a path written as a shell would take it ("~/...", "$NAME"): refused, naming the fix
  local tilde = require("rotor.store").unexpanded(v)
  if tilde then return nil, tilde end
  local text, msg = core.fs_read(v)
  if not text then return nil, "cannot read the CA bundle: " .. tostring(msg) end
  if not text:find("-----BEGIN [%u ]*CERTIFICATE-----") then
    return nil, v .. " holds no PEM certificate (-----BEGIN CERTIFICATE-----): name the CA bundle in PEM form"
  end
  return v
end

--- Split an http(s) URL into scheme, host (without brackets), port, and the rest.
local function parse_url(u)
  local scheme, authority, rest = u:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  if authority:find("@", 1, true) then return nil end
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  else
    host, port = authority:match("^([^:]+):?(%d*)$")
  end
  if not host or host == "" then return nil end
  return scheme, host:lower(), port ~= "" and tonumber(port) or nil, rest
end
_M.parse_url = parse_url

--- Validate a URL option: https everywhere, http only to a loopback host (the rule is the
-- core's: core.url_policy, which every transfer applies too).
local function v_url(v)
  if type(v) ~= "string" or v == "" then return nil, "a URL string expected" end
  local scheme, _, _, rest = parse_url(v)
  if not scheme then return nil, "not an http(s) URL" end
  if rest:find("[?#]") then return nil, "a URL without query or fragment expected" end
  local ok, why = core.url_policy(v)
  if not ok then return nil, why end
  return (v:gsub("/+$", ""))
end
_M.v_url = v_url

local function v_rate_limits(v)
  if v == false then return v end
  if type(v) ~= "table" then return nil, "a table of {rate=, per=} (or false) expected" end
  for k, r in pairs(v) do
    if type(k) ~= "string" then return nil, "keys must be operation names or 'default'" end
    if r ~= false then
      if type(r) ~= "table" or type(r.rate) ~= "number" or r.rate ~= r.rate or r.rate <= 0
        or (r.per ~= nil and (type(r.per) ~= "number" or r.per ~= r.per or r.per <= 0)) then
        return nil, "entry " .. k .. ": {rate=n, per=seconds} or false expected"
      end
    end
  end
  return v
end

-- a file handed to libcurl by path (a client certificate, its key): a regular file, checked
-- without opening it (a FIFO there would hold the first connection for ever)
local function v_file(v)
  if type(v) ~= "string" or v == "" then return nil, "a file path expected" end
  local tilde = require("rotor.store").unexpanded(v)
  if tilde then return nil, tilde end
  local found, kind = core.fs_exists(v)
  if not found then return nil, "cannot read " .. v .. ": no such file" end
  if kind ~= "file" then
    return nil, v .. " is not a regular file (a FIFO, a device or a directory): name a regular file"
  end
  return v
end

-- a private key libcurl reads (a TLS client key): a regular file, as v_file, and open to nobody
-- but its owner, as ssh asks of a private key (core.fs_read_private checks a sealing key so)
local function v_private_file(v)
  local path, why = v_file(v)
  if not path then return nil, why end
  local _, _, mode = core.fs_exists(v)
  if mode % 64 ~= 0 then
    return nil, ("%s is open to group or others (mode %04o): it holds a private key; chmod 600 %s"):format(v, mode, v)
  end
  return v
end

local COMMON = {
  client_id = v_string,
  client_secret = v_secret,
  base_url = v_url,
  token_url = v_url,
  cainfo = v_cainfo,
  timeout = v_seconds,
  connect_timeout = v_seconds,
  proxy = v_string,
  user_agent = v_string,
  http2 = v_boolean,
  max_wait = v_span,
  retries = v_count,
  pacing = v_boolean,
  mint_fresh_connection = v_boolean,
  rate_limits = v_rate_limits,
  token_margin = v_span,
}
_M.validators = {
  string = v_string, secret = v_secret, positive = v_positive, span = v_span, seconds = v_seconds,
  count = v_count, boolean = v_boolean, url = v_url, cainfo = v_cainfo, file = v_file, private_file = v_private_file,
}

local function config_error(provider, name, why)
  return nil, errors.new{ kind = "config", provider = provider,
                          message = ("option %s: %s"):format(name, why) }
end
_M.config_error = config_error

local function as_secret(v)
  if v == nil or is_secret(v) then return v end
  return core.secret(v)
end

--- s with every secret this process holds replaced by <redacted>, in every form a secret can take
-- in a provider's echo (as is, JSON-escaped, percent-encoded, inside base64 or base64url as in a
-- Basic header): core.redact, the one redaction. The provider's own secrets, a credential being
-- verified and the request's access token are all rotor.secret values alive at that moment.
local function scrub(_, s)
  if type(s) ~= "string" or s == "" then return s end
  return core.redact(s)
end
_M.scrub = scrub

--- Build a provider object. cls: a class from _M.class(); opts: the user's options;
-- cfg: { provider=, base_url=, token_url=, token={style=, scope=, fields=, extra=, response=},
--        auth="bearer" | header name, rates={ [op or "default"]={rate=, per=} },
--        own={ option_name = validator, ... } (provider-specific options, already interpreted),
--        reauth={ [status]=true } (statuses that mean "token refused": drop it, retry once; {[401]=true}) }
--- Raise unless opts is a table: the first line of every provider's constructor (level 3: the
-- constructor's caller).
function _M.check_table(provider, opts)
  if type(opts) ~= "table" then
    error(("rotor.%s: an options table expected, got %s"):format(provider, type(opts)), 3)
  end
end

function _M.new(cls, opts, cfg) -- opts: checked by the provider's constructor (check_table)
  local provider = cfg.provider
  local options = {}
  for k, v in pairs(opts) do
    if type(k) ~= "string" then return config_error(provider, tostring(k), "option names are strings") end
    local check = COMMON[k] or (cfg.own and cfg.own[k])
    if not check then return config_error(provider, k, "unknown option") end
    local ok, why = check(v)
    if ok == nil then return config_error(provider, k, why) end
    if k ~= "client_secret" then options[k] = ok end
  end
  if opts.client_id == nil then return config_error(provider, "client_id", "required") end
  options.base_url = options.base_url or cfg.base_url
  options.token_url = options.token_url or cfg.token_url
  if not options.base_url then return config_error(provider, "base_url", "required") end
  if not options.token_url then return config_error(provider, "token_url", "required") end
  -- defaults may come from the provider: check them too
  local ok, why = v_url(options.base_url)
  if not ok then return config_error(provider, "base_url", why) end
  options.base_url = ok
  ok, why = v_url(options.token_url)
  if not ok then return config_error(provider, "token_url", why) end
  options.token_url = ok
  options.timeout = options.timeout or DEFAULT_TIMEOUT
  options.user_agent = options.user_agent or ("rotor/" .. tostring(core.version or "0"))

  local self = setmetatable({
    provider = provider,
    client_id = options.client_id,
    options = options,
    _secret = as_secret(opts.client_secret),
    _token = cfg.token or {},
    _auth = cfg.auth or "bearer",
    _rates = cfg.rates or {},
    _reauth = cfg.reauth or { [401] = true },
    _scrub = {},
  }, cls)
  self._spec = self:_token_spec(self.client_id, self._secret)
  return self
end

--- A class for a provider: a metatable whose methods fall back to the base client's.
function _M.class(name)
  local cls = setmetatable({}, { __index = Client })
  cls.__index = cls
  cls.__name = "rotor." .. name
  cls.__tostring = function(self)
    return ("rotor.%s(%s)"):format(name, tostring(self.client_id))
  end
  return cls
end

--- The transfer options shared by every request of this object.
function Client:_req(req)
  return http.with_transport(req, self.options)
end

function Client:_token_spec(client_id, secret)
  local t = self._token
  local o = self.options
  return http.with_transport({
    url = o.token_url, style = t.style or "basic",
    client_id = client_id, client_secret = secret,
    scope = t.scope, fields = t.fields, extra = t.extra,
    response = t.response or { token = "access_token", expires = "expires_in" },
    margin = o.token_margin or 60,
    provider = self.provider, max_wait = o.max_wait, retries = o.retries,
  }, o)
end

function Client:_policy(op, extra)
  local o = self.options
  local p = { provider = self.provider, op = op, max_wait = o.max_wait, retries = o.retries }
  if extra then for k, v in pairs(extra) do p[k] = v end end
  local user = o.rate_limits
  if o.pacing ~= false and user ~= false then
    local lim, scope
    if user and user[op] ~= nil then lim, scope = user[op], op
    elseif self._rates[op] ~= nil then lim, scope = self._rates[op], op
    elseif user and user.default ~= nil then lim, scope = user.default, "default"
    else lim, scope = self._rates.default, "default" end
    if lim then
      p.rate = { key = ("%s:%s:%s"):format(self.provider, self.client_id, scope),
                 rate = lim.rate, per = lim.per or 1 }
    end
  end
  return p
end

--- The provider's own error text from a decoded error body (errors.detail), free of secrets.
function Client:_error_detail(body)
  return scrub(self, errors.detail(body))
end

local request_id = errors.request_id
_M.request_id = request_id

local function retry_after_of(headers)
  local v = type(headers) == "table" and headers["retry-after"]
  if not v then return nil end
  return tonumber(v)
end

--- Map a non-2xx response to an error value.
function Client:_status_error(op, method, path, res)
  local status = res.status
  local kind = "http"
  if status == 401 or status == 403 then kind = "auth"
  elseif status == 429 then kind = "rate_limited" end
  local body = res.body and res.body ~= "" and json.decode(res.body) or nil
  local detail = scrub(self, self:_error_detail(body) or errors.excerpt(res.body))
  local msg = ("%s %s returned %d"):format(method, path, status)
  if detail then msg = msg .. ": " .. detail end
  return errors.new{
    kind = kind, status = status, provider = self.provider, op = op,
    request_id = request_id(res.headers), detail = detail,
    retry_after = status == 429 and retry_after_of(res.headers) or nil,
    message = scrub(self, msg),
  }
end

--- An error from a lower layer (http, oauth), tagged with provider and op, scrubbed.
function Client:_wrap(err, op, fields)
  local f = { provider = self.provider, op = op }
  if errors.is(err) or type(err) == "table" then
    f.message = scrub(self, err.message)
    f.detail = scrub(self, err.detail)
  else
    f.message = scrub(self, tostring(err))
  end
  if fields then for k, v in pairs(fields) do f[k] = v end end
  return errors.with(err, f)
end

--- The access token of this object's credential (cached, refreshed ahead of expiry).
function Client:token()
  if self._secret == nil then
    return nil, errors.new{ kind = "config", provider = self.provider, op = "token",
                            message = "option client_secret: not set" }
  end
  local tok, err = oauth.token(self._spec) -- a refusal (400/401/403) is already kind "auth"
  if not tok then return nil, self:_wrap(err, "token", { op = "token" }) end
  return tok
end

-- the auth header as a {name, value[, prefix=]} pair (the core prepends prefix, so a token
-- held as a rotor.secret never becomes a Lua string here)
local function auth_header(self, tok)
  if self._auth == "bearer" then
    if is_secret(tok) then return { "Authorization", tok, prefix = "Bearer " } end
    return { "Authorization", "Bearer " .. tok }
  end
  return { self._auth, tok }
end

local function is_empty(body)
  return body == nil or body == "" or not body:find("%S")
end

--- Make an API call. opts: body (a table, JSON encoded), headers (extra {name, value} pairs),
-- mint (a request that mints a secret: sent at most once, never re-sent),
-- url (absolute URL instead of base_url .. path), shape=function(decoded) -> ok, why,
-- secrets=function(decoded) (converts secret-bearing fields in place), policy (extra policy fields).
-- Returns the decoded body, true for an empty 2xx, or nil, err.
function Client:call(op, method, path, opts)
  opts = opts or {}
  local url = opts.url or (self.options.base_url .. path)
  local retried = false
  while true do
    local tok, err = self:token()
    if not tok then return nil, self:_wrap(err, op) end
    local headers = { { "Accept", "application/json" }, auth_header(self, tok) }
    local body
    if opts.body ~= nil then
      body = type(opts.body) == "string" and opts.body or json.encode(opts.body)
      headers[#headers + 1] = { "Content-Type", "application/json" }
    end
    for _, h in ipairs(opts.headers or {}) do headers[#headers + 1] = h end
    local req = self:_req{
      url = url, method = method, headers = headers, body = body,
      once = opts.mint or nil, fresh_connect = (opts.mint and self.options.mint_fresh_connection) or nil,
    }
    local res
    res, err = http.request(req, self:_policy(op, { mint = opts.mint or false }))
    if not res then return nil, self:_wrap(err, op) end
    local status = res.status or 0
    if self._reauth[status] and not retried then
      retried = true
      oauth.invalidate(self._spec, tok)
    elseif status >= 200 and status < 300 then
      -- an empty answer is a call's whole answer only when it expects no body (no shape): where a
      -- body is expected (a mint's secret, a listing) it is one rotor cannot read. Taken as
      -- `true`, a mint's step indexed it (a Lua error, kind internal) and an empty listing page
      -- ended a recovery's search for an orphan early.
      local empty = is_empty(res.body)
      if empty and not opts.shape then return true end
      local v, derr
      if not empty then v, derr = json.decode(res.body) end
      local why
      if empty then
        why = "the response is empty"
      elseif v == nil then
        why = ("the response is not JSON (%s)"):format(derr and derr:match("^[^:]+") or "?")
      elseif opts.shape then
        local ok, swhy = opts.shape(v)
        if not ok then why = "unexpected response: " .. tostring(swhy) end
      end
      if why then
        -- a minting call answered with a success rotor cannot read may have minted: ambiguous
        return nil, errors.new{ kind = opts.mint and "ambiguous" or "protocol", status = status,
                                provider = self.provider, op = op, request_id = request_id(res.headers),
                                message = ("%s %s: %s%s"):format(method, path, why, opts.mint
                                  and "; the request may have minted a secret that rotor cannot read" or "") }
      end
      if opts.secrets then opts.secrets(v) end
      return v
    else
      local e = self:_status_error(op, method, path, res)
      if opts.mint and status >= 500 then
        -- a server error on a minting call says nothing about whether it minted
        e = errors.with(e, { kind = "ambiguous", message = e.message
          .. "; whether a secret was minted is unknown, so it was not retried" })
      end
      return nil, e
    end
  end
end

--- Obtain a fresh, uncached token with exactly these credentials: true, or nil, err
-- (kind "auth" when the token endpoint refuses them).
function Client:verify(creds)
  if type(creds) ~= "table" then error("verify: a table {client_id=, client_secret=} expected", 2) end
  local id = creds.client_id or self.client_id
  local sec = creds.client_secret
  if type(id) ~= "string" or id == "" then error("verify: client_id must be a non-empty string", 2) end
  if not (is_secret(sec) or (type(sec) == "string" and sec ~= "")) then
    error("verify: client_secret must be a non-empty string or a rotor.secret", 2)
  end
  local spec = self:_token_spec(id, is_secret(sec) and sec or core.secret(sec))
  spec.fresh = true
  local tok, err = oauth.token(spec)
  if not tok then
    local e = self:_wrap(err, "verify", { op = "verify" })
    e.message = scrub(self, e.message)
    e.detail = scrub(self, e.detail)
    return nil, e
  end
  if is_secret(tok) then tok:close() end
  return true
end

--- Act with another credential from now on (drops the cached token of the old one).
--- true when v (a string or a rotor.secret) is the secret this object authenticates with now
-- (compared in constant time).
function Client:uses_secret(v)
  return v ~= nil and self._secret ~= nil and self._secret:equals(v)
end

function Client:set_credentials(client_id, client_secret)
  if type(client_id) ~= "string" or client_id == "" then
    error("set_credentials: client_id must be a non-empty string", 2)
  end
  if not (is_secret(client_secret) or (type(client_secret) == "string" and client_secret ~= "")) then
    error("set_credentials: client_secret must be a non-empty string or a rotor.secret", 2)
  end
  oauth.invalidate(self._spec)
  self.client_id = client_id
  self.options.client_id = client_id
  self._secret = as_secret(client_secret)
  self._spec = self:_token_spec(client_id, self._secret)
  return true
end

--- Percent-encode a path segment.
function _M.escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- Replace t[field] (a string) by a rotor.secret, in place.
function _M.secret_field(t, field)
  if type(t) == "table" and type(t[field]) == "string" then
    t[field] = core.secret(t[field])
  end
end

return _M
