-- rotor.config: the configuration file of `rotor rotate --config` (and status/due/doctor --config),
-- checked as a whole before anything runs. The schema below is the one source of both the checks
-- and the reference in doc/CONFIG.md (`rotor config-reference` prints it; a spec compares).
--
--   config.load(path)          -> cfg, info { file, dir, unset_env = {NAME...} } | nil, message
--   config.validate(cfg, info) -> problems { { file=, slot=, key=, message= }, ... } (empty: fine)
--   config.format(problem)     -> "FILE: slot NAME: KEY: message"
--   config.reference()         -> the Markdown reference
local policy = require "rotor.policy"
local keys_mod = require "rotor.keys"
local bounds = require "rotor.bounds"

local _M = {}

------------------------------------------------------------------------------------------------
-- The schema. Each key: { type = "...", doc = "...", default = "..." }; type is documentation
-- text, the checks are the `check` functions (nil, why on a bad value).

local function is_callable(v)
  if type(v) == "function" then return true end
  local mt = getmetatable(v)
  return mt ~= nil and type(mt) == "table" and mt.__call ~= nil
end

-- a slot's numeric option, checked as rotor.rotate checks it
local function c_number(name)
  return function(v) return bounds.check(bounds.ROTATE, name, v) end
end

local c_days = policy.check_days

local function c_bool(v)
  if type(v) ~= "boolean" then return nil, "true or false expected" end
  return true
end

local function c_string(v)
  if type(v) ~= "string" or v == "" then return nil, "a non-empty string expected" end
  return true
end

local function c_notify(v)
  local ok, e = pcall(require("rotor.notify").check, v)
  if not ok then return nil, (tostring(e):gsub("^notify: ", ""):gsub("^notify%.([%w_]+): ", "%1: ")) end
  return true
end

local function c_audit(v)
  if type(v) == "string" then
    local tilde = require("rotor.store").unexpanded(v)
    if tilde then return nil, tilde end
  end
  if v == false or type(v) == "string" then return true end
  if type(v) == "table" and type(v.write) == "function" then return true end
  -- a misspelt field first: { pat = ... } has no path because of it
  local unknown = type(v) == "table" and v.write == nil and keys_mod.unknown_key(v, { "path", "key" }, "field")
  if unknown then return nil, unknown end
  if type(v) == "table" and type(v.path) == "string" then
    -- the trail's own check (rotor.audit.open opens nothing)
    local ok, e = pcall(require("rotor.audit").open, v)
    if not ok then return nil, (tostring(e):gsub("^[^:]*:%d+: ", ""):gsub("^audit%.open: ", "")) end
    return true
  end
  return nil, "false, a file path or { path = ..., key = ... } expected"
end

local function c_concurrency(v)
  if type(v) ~= "number" or v ~= math.floor(v) or v < 1 or v > 64 then return nil, "an integer 1..64 expected" end
  return true
end

_M.DUE = {
  order = { "max_age_days", "before_expiry_days" },
  keys = {
    max_age_days = { type = "number or false", check = c_days, default = tostring(policy.DEFAULT_MAX_AGE_DAYS),
      doc = "due once the current secret is this many days old. Applies to every secret without a "
        .. "provider expiry (Genesys, Spreetail pairs without one), and to the others only when set. "
        .. "Days are above 0 and at most 36500, for both rules and for the command line's flags" },
    before_expiry_days = { type = "number or false", check = c_days,
      default = tostring(policy.DEFAULT_BEFORE_EXPIRY_DAYS),
      doc = "due this many days before the provider's expiry of the current secret (Paylocity, "
        .. "SP-API, Spreetail pairs with an expiry)" },
  },
}

_M.TOP = {
  order = { "store", "slots", "due", "concurrency", "wait", "notify", "audit" },
  keys = {
    store = { type = "string or table", required = true,
      doc = "where the secrets live: a directory (a file store; relative to the config file), "
        .. "{ kind = \"file\", path = ... }, or { kind = \"KIND\", ... } for another store module "
        .. "(rotor.store.KIND.open)" },
    slots = { type = "array of slots", required = true, doc = "the slots to rotate (keys below)" },
    due = { type = "table", doc = "the due policy of every slot ({ max_age_days=, before_expiry_days= }, "
      .. "below); a slot's own `due` overrides it key by key" },
    concurrency = { type = "integer", check = c_concurrency, default = "4",
      doc = "how many slots rotate at once" },
    wait = { type = "number", check = c_number("wait"), doc = "default `wait` of every slot (seconds)" },
    notify = { type = "string, table or function", check = c_notify, doc = "default `notify` of every slot" },
    audit = { type = "false, string or table", check = c_audit,
      doc = "default `audit` of every slot (a relative path is the config file's)" },
  },
}

_M.SLOT = {
  order = { "slot", "provider", "target", "strategy", "deploy", "consumers", "due", "wait", "visibility",
            "retry_refused", "grace", "notify", "audit", "force_mint", "drop_pending" },
  keys = {
    slot = { type = "string", required = true, doc = "the slot's name in the store, e.g. \"genesys/reporting\"" },
    provider = { type = "table", required = true,
      doc = "{ kind = \"genesys\", options = { ... } } (provider options below; `options` may also be "
        .. "written inline beside `kind`), or a provider object made in the file" },
    target = { type = "table", doc = "what to rotate, per provider (target keys below)" },
    strategy = { type = "string", check = c_string,
      doc = "the rotation strategy (strategies below); the provider's default when unset" },
    deploy = { type = "function, sink or table",
      doc = "pushes the new secret to its consumers before the old one is retired: a function(new), a "
        .. "sink (rotor.store.dotenv/exec), { kind = \"dotenv\", path = ..., client_id = , secret = , "
        .. "expires =, mode = } or { kind = \"exec\", command = ..., input =, env =, name =, timeout = (s, 3600) } "
        .. "(paths relative to the config file)" },
    consumers = { type = "\"none\"",
      doc = "say `consumers = \"none\"` when nothing but rotor uses this credential: required instead of "
        .. "`deploy` for a strategy whose old secret stops working during the run" },
    due = { type = "table", doc = "this slot's due policy ({ max_age_days=, before_expiry_days= })" },
    wait = { type = "number", check = c_number("wait"), default = "300",
      doc = "SP-API: seconds one run waits for the new secret on the SQS queue (0 to 86400)" },
    visibility = { type = "number", check = c_number("visibility"), default = "60",
      doc = "SP-API: seconds a queue message this run received stays hidden from other readers (1 to 43200); "
        .. "a run that dies leaves it to reappear after that" },
    retry_refused = { type = "number", check = c_number("retry_refused"), default = "600",
      doc = "SP-API: seconds after which a queue message whose secret the provider refused is tried again "
        .. "(0 to 86400). Amazon's token service may refuse a new secret for a while after issuing it: a "
        .. "message passed over for good would lose that secret, one tried every run would let forged "
        .. "messages use up each run's wait" },
    grace = { type = "number", check = c_number("grace"), default = "0",
      doc = "Genesys new_client: seconds the old client stays disabled before it is deleted (on a later run; "
        .. "at most 366 days). "
        .. "A deletion is cancelled (and journalled) if the slot holds that client as its current or pending "
        .. "credential by then" },
    notify = { type = "string, table or function", check = c_notify,
      doc = "a Slack-compatible webhook URL, { webhook = url, on = \"failure\"|\"success\"|\"always\", timeout =, "
        .. "connect_timeout =, cainfo =, proxy =, user_agent =, http2 = } (each field checked before anything runs) "
        .. "or a function(event)" },
    audit = { type = "false, string or table", check = c_audit,
      doc = "the audit trail: false (none), a file path, { path =, key = }; default: the store's" },
    force_mint = { type = "boolean", check = c_bool, default = "false",
      doc = "SP-API: mint although an earlier request may have left (only once the Developer Console shows no " ..
        "rotation)" },
    drop_pending = { type = "boolean", check = c_bool, default = "false",
      doc = "a person's word that the slot's pending secret will never work: the next run tries it once more, "
        .. "drops it if the provider refuses it, and mints anew (set it for one run; rotor doctor says when)" },
  },
}

-- The options every provider takes, and each provider's own (the provider checks them; a spec
-- checks that this list and the providers agree).
_M.PROVIDER_COMMON = {
  order = { "client_id", "client_secret", "base_url", "token_url", "cainfo", "timeout", "connect_timeout",
            "proxy", "user_agent", "http2", "max_wait", "retries", "pacing", "rate_limits", "token_margin" },
  keys = {
    client_id = { type = "string", required = true, doc = "the client id rotor authenticates with" },
    client_secret = { type = "string", required = true,
      doc = "its secret (once a slot holds a current secret for this client, the store's is used)" },
    base_url = { type = "URL", doc = "the API's base URL (https; http only to a loopback address)" },
    token_url = { type = "URL", doc = "the token endpoint" },
    cainfo = { type = "path", doc = "a CA bundle (PEM) to verify the provider's TLS certificate against, "
      .. "e.g. a private or test CA; the system's CAs otherwise" },
    timeout = { type = "number", default = "30", doc = "seconds per request (at most 86400)" },
    connect_timeout = { type = "number", doc = "seconds to connect (at most 86400)" },
    proxy = { type = "string", doc = "an HTTP(S) proxy URL" },
    user_agent = { type = "string", default = "rotor/VERSION", doc = "the User-Agent header" },
    http2 = { type = "boolean", default = "false",
      doc = "true: HTTP/2 where the server offers it (one connection per host); HTTP/1.1 otherwise" },
    max_wait = { type = "number", default = "120", doc = "bound on waits for 429/5xx retries (seconds, 0 to 86400)" },
    retries = { type = "integer", doc = "retries of idempotent requests" },
    pacing = { type = "boolean", default = "true", doc = "false: no client-side pacing" },
    rate_limits = { type = "table or false",
      doc = "{ default = { rate =, per = }, [op] = ... }: replace the documented limits" },
    token_margin = { type = "number", default = "60",
      doc = "refresh a token this many seconds before it expires (0 to 86400)" },
  },
}

_M.PROVIDERS = {
  genesys = {
    options = { region = { type = "string", doc = "a domain (mypurecloud.ie) or a region name (eu_west_1)" } },
    target = { client_id = { type = "string",
      doc = "the OAuth client whose secret is rotated (may be another than rotor's own)" } },
    strategies = {
      regenerate = { default = true, old_dies = "at once",
        doc = "a new secret for the same client; the OLD SECRET STOPS WORKING AT ONCE" },
      new_client = { old_dies = "at retire",
        doc = "a second client (new client_id); the old one is disabled and deleted after deploy (after `grace`)" },
    },
  },
  paylocity = {
    options = { sandbox = { type = "boolean", doc = "use Paylocity's sandbox hosts" },
                token_style = { type = "string", doc = "the token request: \"weblink\" (default) or \"nextgen\"" } },
    target = { code = { type = "string", doc = "the code from Paylocity's expiry e-mail" },
               old_expires = { type = "string",
                 doc = "ISO-8601 expiry of the old secret, when Paylocity did not say" } },
    strategies = { code = { default = true,
      doc = "obtainNewClientSecret; the old secret keeps working until its expiry" } },
  },
  spreetail = {
    options = {},
    target = { expires = { type = "string", doc = "ISO-8601 expiry of the new pair" },
               expires_days = { type = "number", doc = "expiry of the new pair, in days from now" } },
    strategies = { new_pair = { default = true, old_dies = "at retire",
      doc = "a new credential pair (new client_id); the old pair is deleted after deploy" } },
  },
  spapi = {
    options = { region = { type = "string", doc = "the SP-API region" },
                sandbox = { type = "boolean", doc = "use the sandbox endpoints" },
                sqs = { type = "table",
                  doc = "{ queue_url =, access_key =, secret_key =, session_token =, region =, endpoint = }: "
                  .. "the queue the new secret arrives on" } },
    target = { application_id = { type = "string",
      doc = "the application (amzn1.sp.solution...) whose secret is rotated: a queue message naming another "
        .. "application is never taken" } },
    strategies = { sqs = { default = true,
      doc = "rotateApplicationClientSecret; the new secret arrives on SQS; the old one works about 7 more days" } },
  },
}

-- rotor.rotate's options (scripts), for the reference
_M.ROTATE = {
  order = { "slot", "provider", "store", "target", "strategy", "deploy", "dry_run", "wait", "visibility",
            "retry_refused", "grace", "notify", "audit", "force_mint", "drop_pending", "verify_attempts",
            "verify_delay",
            "write_retries", "write_retry_delay", "mint_budget", "log", "print", "consumers", "only_if_due" },
  keys = {
    slot = { type = "string", required = true, doc = "the slot's name in the store" },
    provider = { type = "provider object", required = true, doc = "rotor.genesys{...}, rotor.paylocity{...}, ..." },
    store = { type = "store", required = true, doc = "rotor.store.file(dir) or any object with get, put and lock" },
    target = { type = "table", doc = "what to rotate, per provider (target keys below)" },
    strategy = { type = "string", doc = "the rotation strategy; the provider's default when unset" },
    deploy = { type = "function or sink",
      doc = "function(new) -> true | nil, err, run with the new secret before the old one is retired" },
    dry_run = { type = "boolean", default = "false", doc = "print the plan, change nothing" },
    wait = { type = "number", default = "300", doc = "SP-API: seconds to wait for the new secret on SQS (0 to 86400)" },
    visibility = { type = "number", default = "60", doc = "as in a config file (1 to 43200)" },
    retry_refused = { type = "number", default = "600", doc = "as in a config file (0 to 86400)" },
    grace = { type = "number", default = "0",
      doc = "Genesys new_client: seconds before the old client is deleted (at most 366 days)" },
    notify = { type = "string, table or function", doc = "as in a config file" },
    audit = { type = "false, string or table", doc = "as in a config file" },
    force_mint = { type = "boolean", default = "false",
      doc = "SP-API: mint although an earlier request may have left" },
    drop_pending = { type = "boolean", default = "false",
      doc = "drop a pending secret the provider refuses, and mint anew (as in a config file)" },
    verify_attempts = { type = "integer", default = "3", doc = "token requests tried with the new secret (1 to 100)" },
    verify_delay = { type = "number", default = "1",
      doc = "seconds between them (times the attempt number; 0 to 3600)" },
    write_retries = { type = "integer", default = "5",
      doc = "tries again of a store write that failed while a new secret is held in memory only (0 to 1000)" },
    write_retry_delay = { type = "number", default = "0.5",
      doc = "seconds before the first of them (doubling after it, to at most 8 s; 0 to 3600)" },
    mint_budget = { type = "number",
      doc = "seconds a minting request may take, for a leased lock's check before it (default: the provider's "
        .. "timeout + connect_timeout; 1 to 86400)" },
    log = { type = "function", doc = "function(line): one line per journalled step" },
    print = { type = "function", doc = "function(line): where a dry run's plan goes (default stdout)" },
    consumers = { type = "\"none\"", doc = "as in a config file: without it or `deploy`, a strategy that kills "
      .. "the old secret during the run adds a warning to the result" },
    only_if_due = { type = "function", doc = "function(record) -> due, reason: decided again once the slot's "
      .. "lock is taken, on the record then read; not due: the result is { skipped = true, reason = }" },
  },
}

------------------------------------------------------------------------------------------------
-- Suggestions (rotor.keys; kept here under the names the callers know)

_M.suggest = keys_mod.suggest
_M.unknown_key = keys_mod.unknown_key

local keys_of = keys_mod.sorted

------------------------------------------------------------------------------------------------
-- Loading

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

-- path made absolute against the directory rotor runs in (core.fs_cwd: PWD only when it names
-- that directory; a stale one would put a config's store and files somewhere else)
local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local cwd = require("rotor.core").fs_cwd()
  if cwd and cwd:sub(1, 1) == "/" then
    if path == "." then return cwd end
    return (cwd:gsub("/$", "")) .. "/" .. path:gsub("^%./", "")
  end
  return path
end
_M.absolute = absolute

--- Load a config file. Its chunk runs with `config_dir` (the file's directory) and
-- `optional_env(name)` (os.getenv that is allowed to find nothing) in scope; every os.getenv of
-- an unset variable is recorded and reported by validate.
function _M.load(path)
  if type(path) ~= "string" or path == "" then return nil, "a config file path expected" end
  -- the file is code rotor runs with every secret in reach: read only when no other user could
  -- have changed it (its directory under the store-directory rule, the file owned by root or this
  -- user and writable by neither group nor others), and never waited on (a FIFO there)
  local text, rerr = require("rotor.core").fs_read_trusted(path)
  if not text then return nil, ("cannot read the config file %s: %s"):format(path, rerr) end
  local info = { file = path, dir = absolute(dirname(path)), unset_env = {} }
  local seen = {}
  local os_view = setmetatable({
    getenv = function(name)
      local v = os.getenv(name)
      if v == nil and type(name) == "string" and not seen[name] then
        seen[name] = true
        info.unset_env[#info.unset_env + 1] = name
      end
      return v
    end,
  }, { __index = os })
  local env = setmetatable({ os = os_view, config_dir = info.dir, optional_env = os.getenv },
                           { __index = _G })
  -- Lua cuts a long chunk name to its last 60 bytes in messages: the chunk is named CHUNK, and
  -- CHUNK in a message becomes the whole path
  local CHUNK = "=rotor.conf"
  local function named(msg)
    msg = tostring(msg)
    local at = msg:find("rotor.conf:", 1, true)
    if at == 1 then msg = path .. msg:sub(#"rotor.conf" + 1) end
    return msg
  end
  local chunk, lerr
  if setfenv then
    chunk, lerr = loadstring(text, CHUNK) -- luacheck: ignore (Lua 5.1)
    if chunk then setfenv(chunk, env) end -- luacheck: ignore (Lua 5.1)
  else
    chunk, lerr = load(text, CHUNK, "t", env)
  end
  if not chunk then return nil, named(lerr) end
  local ok, cfg = pcall(chunk)
  if not ok then return nil, named(cfg) end
  if type(cfg) ~= "table" then
    return nil, ("%s: the file must return a table { store = ..., slots = { ... } }, it returned %s"):format(path,
      type(cfg))
  end
  return cfg, info
end

------------------------------------------------------------------------------------------------
-- Validation

local function is_provider_object(v)
  return type(v) == "table" and type(v.provider) == "string" and type(v.verify) == "function"
end
_M.is_provider_object = is_provider_object

-- unknown keys of t against schema (with a suggestion), and each key's check
-- others (optional): { { schema, why(k) }, ... } of the levels where a key unknown here belongs (a
-- slot's key at the top of the file, the file's in a slot, a due policy's beside it): such a key is
-- named with why(k), where to move it, rather than as unknown
local function check_keys(t, schema, add, prefix, others)
  local names = keys_of(schema.keys)
  for k, v in pairs(t) do
    local key = prefix .. tostring(k)
    local s = type(k) == "string" and schema.keys[k] or nil
    local elsewhere
    for _, o in ipairs(not s and type(k) == "string" and others or {}) do
      if o[1].keys[k] then
        elsewhere = o[2](k)
        break
      end
    end
    if elsewhere then
      add(key, elsewhere)
    elseif not s then
      local hint = _M.suggest(tostring(k), names)
      add(key, "unknown key" .. (hint and ("; did you mean " .. prefix .. hint .. "?") or
        ("; known keys: " .. table.concat(names, ", "))))
    elseif s.check then
      local ok, why = s.check(v)
      if not ok then add(key, why) end
    end
  end
  for _, k in ipairs(schema.order) do
    if schema.keys[k].required and t[k] == nil then add(prefix .. k, "required, not set") end
  end
end

-- where a slot's key k goes, for a message about one set elsewhere
local function in_each_slot(k)
  return ("(slots = { { slot = ..., provider = ..., %s = ... } })"):format(k)
end

-- the message of a due policy's key set beside the policy rather than in it
local function due_key(k)
  return ("a due policy's key: due = { %s = ... }"):format(k)
end

local function check_due(v, add, prefix)
  if v == nil then return end
  if type(v) ~= "table" then return add(prefix, "a table { max_age_days =, before_expiry_days = } expected") end
  check_keys(v, _M.DUE, add, prefix .. ".")
end

local function check_deploy(v, add)
  if v == nil or is_callable(v) then return end
  if type(v) ~= "table" then return add("deploy",
    "a function, a sink or { kind = \"dotenv\" | \"exec\", ... } expected") end
  local no_path = v.kind == "dotenv" and (type(v.path) ~= "string" or v.path == "")
  -- a misspelt key first: { pth = ... } has no path because of it
  local stray
  if no_path then
    local known = { "kind", "path" }
    for _, k in ipairs(require("rotor.store.dotenv").OPTIONS) do known[#known + 1] = k end
    stray = keys_mod.unknown_key(v, known, "key", "deploy.")
  end
  if stray then
    add(stray:match("^(.-): (.*)$"))
  elseif no_path then
    add("deploy.path", "a file path expected")
  elseif v.kind == "dotenv" or v.kind == "exec" then
    -- the sink's own checks (rotor.store.dotenv/exec: every option, unknown ones named); making
    -- one touches nothing
    local ok, e = pcall(_M.make_deploy, v, ".")
    if not ok then add("deploy", (tostring(e):gsub("^[^:]*:%d+: ", ""):gsub("^rotor%.store%.%a+: ", ""))) end
  else
    local hint = _M.suggest(tostring(v.kind), { "dotenv", "exec" })
    add("deploy.kind", ("unknown deploy kind %s%s"):format(tostring(v.kind),
      hint and ("; did you mean " .. hint .. "?") or " (dotenv or exec)"))
  end
end

--- How the old secret of a strategy dies during a run ("at once", "at retire"), or nil when it
-- keeps working after the run (until its own expiry).
function _M.old_dies(kind, strategy)
  local p = _M.PROVIDERS[kind]
  local s = p and p.strategies[strategy]
  return s and s.old_dies or nil
end

--- The deploy hook of a slot: functions and sinks as they are; tables made into sinks.
function _M.make_deploy(v, dir)
  if v == nil or is_callable(v) then return v end
  local store = require "rotor.store"
  local opts = {}
  for k, x in pairs(v) do if k ~= "kind" and (k ~= "path" or v.kind ~= "dotenv") then opts[k] = x end end
  if v.kind == "dotenv" then return store.dotenv(store.resolve(v.path, dir), opts) end
  return store.exec(opts)
end

-- the provider options of a { kind=, options= } table
local function provider_options(p)
  if type(p.options) == "table" then return p.options, "provider.options." end
  local o = {}
  for k, v in pairs(p) do if k ~= "kind" and k ~= "options" then o[k] = v end end
  return o, "provider."
end

--- The credential a slot entry rotates, as far as the file says: provider kind, client id,
-- account (its URL or region), and the key that names the id | nil (when the file does not say).
-- Genesys rotates target.client_id (rotor's own client or another); the others their own.
function _M.credential(e)
  local p = e.provider
  if type(p) ~= "table" then return nil end
  local kind, opts
  if is_provider_object(p) then
    kind, opts = p.provider, p.options
  else
    kind, opts = p.kind, provider_options(p)
  end
  if type(kind) ~= "string" or type(opts) ~= "table" then return nil end
  local id, key = opts.client_id, "provider.options.client_id"
  if kind == "genesys" then id, key = type(e.target) == "table" and e.target.client_id or nil, "target.client_id" end
  if type(id) ~= "string" or id == "" then return nil end
  -- an SP-API app's credential is its Login with Amazon client, one for every region (and, as far as
  -- Amazon's documents say, for the sandbox too): rotating it in one slot rotates it for all
  if kind == "spapi" then return kind, id, tostring(opts.token_url or "Login with Amazon"), key end
  return kind, id, tostring(opts.base_url or opts.region or (opts.sandbox and "sandbox") or "production"), key
end

-- The same as one text, "KIND client CLIENT_ID at ACCOUNT", and the key that names it | nil.
local function credential_of(e)
  local kind, id, account, key = _M.credential(e)
  if not kind then return nil end
  return ("%s at %s"):format(require("rotor.record").client_key(kind, id), account), key
end

--- A provider object from a slot's provider entry. Returns p | nil, err.
function _M.make_provider(spec)
  if is_provider_object(spec) then return spec end
  local opts = provider_options(spec)
  return require("rotor")[spec.kind](opts)
end

local function check_provider(e, add)
  local p = e.provider
  if p == nil then return nil end
  if is_provider_object(p) then return p.provider end
  if type(p) ~= "table" then return add("provider",
    "{ kind = \"genesys\", options = { ... } } or a provider object expected") end
  local kinds = keys_of(_M.PROVIDERS)
  if type(p.kind) ~= "string" or not _M.PROVIDERS[p.kind] then
    local hint = _M.suggest(tostring(p.kind), kinds)
    add("provider.kind", ("unknown provider kind %s%s"):format(tostring(p.kind),
      hint and ("; did you mean " .. hint .. "?") or (" (one of " .. table.concat(kinds, ", ") .. ")")))
    return nil
  end
  if p.options ~= nil and type(p.options) ~= "table" then add("provider.options", "a table expected") return p.kind end
  local opts, prefix = provider_options(p)
  local known = {}
  for _, k in ipairs(_M.PROVIDER_COMMON.order) do known[#known + 1] = k end
  for k in pairs(_M.PROVIDERS[p.kind].options) do known[#known + 1] = k end
  local bad = false
  for k in pairs(opts) do
    local name = tostring(k)
    local ok = _M.PROVIDER_COMMON.keys[name] or _M.PROVIDERS[p.kind].options[name]
    if not ok then
      bad = true
      local hint = _M.suggest(name, known)
      if _M.SLOT.keys[name] then
        add(prefix .. name, "a slot's key, not a provider option: set it beside provider " .. in_each_slot(name))
      else
        add(prefix .. name, "unknown option" .. (hint and ("; did you mean " .. prefix .. hint .. "?") or ""))
      end
    end
  end
  for _, k in ipairs { "client_id", "client_secret" } do
    if opts[k] == nil then
      bad = true
      add(prefix .. k, "required, not set")
    end
  end
  if not bad then
    -- the provider's own checks (types, URLs, the CA bundle); nothing is sent
    local ok, obj, err = pcall(require("rotor")[p.kind], opts)
    if not ok then
      add(prefix:sub(1, -2), tostring(obj))
    elseif not obj then
      local name, why = tostring(err and err.message or err):match("^option ([%w_]+): (.*)$")
      if name then add(prefix .. name, why) else add(prefix:sub(1, -2), tostring(err and err.message or err)) end
    end
  end
  return p.kind
end

local function check_slot_entry(e, add, top)
  check_keys(e, _M.SLOT, add, "", {
    { _M.TOP, function() return "a key of the whole file, not of a slot: set it once at the top, beside slots" end },
    { _M.DUE, due_key },
    { _M.PROVIDER_COMMON, function(k)
      return ("a provider option, not a slot's key: provider = { kind = ..., options = { %s = ... } }%s"):format(k,
        k == "client_id" and " (the client rotor authenticates with; the client a slot rotates is target.client_id)"
        or "")
    end },
  })
  if e.slot ~= nil then
    local ok, why = pcall(require("rotor.store.file").check_slot, e.slot)
    if not ok then add("slot", (tostring(why):gsub("^.-:%d+: ", ""))) end
  end
  local kind = check_provider(e, add)
  local pinfo = kind and _M.PROVIDERS[kind]
  if e.target ~= nil and type(e.target) ~= "table" then add("target", "a table expected")
  elseif pinfo and e.target then
    local names = keys_of(pinfo.target)
    for k in pairs(e.target) do
      if not pinfo.target[k] then
        local hint = _M.suggest(tostring(k), names)
        add("target." .. tostring(k), ("unknown target key for %s%s"):format(kind,
          hint and ("; did you mean target." .. hint .. "?") or
            (#names > 0 and (" (" .. table.concat(names, ", ") .. ")") or " (it takes none)")))
      end
    end
  end
  local sname, strat
  if pinfo then
    sname = e.strategy
    if sname == nil then
      for n, s in pairs(pinfo.strategies) do if s.default then sname = n end end
    end
    strat = type(sname) == "string" and pinfo.strategies[sname] or nil
    if type(sname) == "string" and not strat then
      local names = keys_of(pinfo.strategies)
      local hint = _M.suggest(sname, names)
      add("strategy", ("unknown strategy %s for %s%s"):format(sname, kind,
        hint and ("; did you mean " .. hint .. "?") or (" (one of " .. table.concat(names, ", ") .. ")")))
    end
  end
  -- Genesys regenerate of the client the provider authenticates with: refused when it would run
  -- (rotor.strategies.genesys), so refused here, where the file is fixed
  local opts = kind and type(e.provider) == "table" and provider_options(e.provider)
  if kind == "genesys" and sname == "regenerate" and type(opts) == "table" and type(opts.client_id) == "string"
    and type(e.target) == "table" and e.target.client_id == opts.client_id then
    add("strategy", require("rotor.strategies.genesys").own_regenerate_refusal(opts.client_id))
  end
  check_deploy(e.deploy, add)
  if e.consumers ~= nil and e.consumers ~= "none" then
    add("consumers", "only \"none\" is understood (nothing but rotor uses this credential); else set deploy")
  end
  check_due(e.due, add, "due")
  if strat and strat.old_dies and e.deploy == nil and e.consumers ~= "none" then
    add("deploy", ("strategy %s of %s: the old secret stops working %s, and nothing hands the new one to its "
      .. "consumers. Set deploy (a function, a dotenv or exec sink) or, when nothing but rotor uses this "
      .. "credential, consumers = \"none\""):format(sname, kind, strat.old_dies))
  end
  return top
end

-- The secrets a config file holds as plain strings: each provider's client_secret, an SQS queue's
-- secret key and session token, a Paylocity code, and the notification webhooks (a Slack webhook
-- URL is a credential).
local function secret_strings(cfg)
  local out = {}
  local function take(v) if type(v) == "string" and v ~= "" then out[#out + 1] = v end end
  local function notify(n)
    if type(n) == "table" then take(n.webhook) else take(n) end
  end
  local function field(t, k) return type(t) == "table" and t[k] or nil end
  notify(field(cfg, "notify"))
  for _, e in ipairs(type(field(cfg, "slots")) == "table" and cfg.slots or {}) do
    local p = field(e, "provider")
    local opts = type(p) == "table" and not is_provider_object(p) and provider_options(p) or nil
    take(field(opts, "client_secret"))
    take(field(field(opts, "sqs"), "secret_key"))
    take(field(field(opts, "sqs"), "session_token"))
    take(field(field(e, "target"), "code"))
    notify(field(e, "notify"))
  end
  return out
end

-- No problem line shows a secret of the file, whatever key it reached by mistake (a swapped
-- environment variable: region = os.getenv("..._SECRET")): each line is redacted (core.redact,
-- every form of the secret) while the file's secrets are held as rotor.secret values.
local function redact_problems(cfg, problems)
  local core = require "rotor.core"
  local held = {}
  for _, v in ipairs(secret_strings(cfg)) do held[#held + 1] = core.secret(v) end
  for _, p in ipairs(problems) do
    p.message = core.redact(tostring(p.message))
    if type(p.key) == "string" then p.key = core.redact(p.key) end
  end
  for _, h in ipairs(held) do h:close() end
end

--- Every problem of a loaded config. info: config.load's second value.
function _M.validate(cfg, info)
  info = info or { file = "(config)", unset_env = {} }
  local problems = {}
  local function adder(slot)
    return function(key, message)
      problems[#problems + 1] = { file = info.file, slot = slot, key = key, message = message }
    end
  end
  local top = adder(nil)
  local base_dir = info.dir
  check_keys(cfg, _M.TOP, top, "", {
    { _M.SLOT, function(k)
      return "a slot's key, not the file's: set it in each slot of slots " .. in_each_slot(k)
    end },
    { _M.DUE, due_key },
  })
  check_due(cfg.due, top, "due")
  if cfg.store ~= nil then
    local s = cfg.store
    local key, tilde = require("rotor.store").unexpanded_store(s)
    if tilde then top(key, tilde) end
    if type(s) == "table" and s.kind ~= nil and s.kind ~= "file" then
      local mod, unknown = require("rotor.store").module(s.kind)
      if not mod then
        top("store.kind", unknown)
      elseif type(mod.check) == "function" then
        -- the store module's own check: raises, or returns nil/false and why, or a list of problems
        local cok, r1, r2 = pcall(mod.check, s, base_dir)
        if not cok then
          top("store", tostring(r1))
        elseif r1 == nil or r1 == false then
          top("store", tostring(r2 or "refused by rotor.store." .. s.kind))
        elseif type(r1) == "table" and r1[1] ~= nil then
          for _, why in ipairs(r1) do top("store", tostring(why)) end
        end
      end
    elseif type(s) == "table" and s.kind == "file" then
      if type(s.path) ~= "string" or s.path == "" then top("store.path", "a directory expected") end
      for _, why in ipairs(require("rotor.store.file").check(s, { "kind", "path" })) do top("store", why) end
    elseif type(s) == "table" and s.kind == nil and type(s.get) ~= "function" then
      top("store.kind", "required: \"file\" or another store kind")
    elseif type(s) ~= "table" and type(s) ~= "string" then
      top("store", "a directory or { kind = ..., ... } expected")
    end
  end
  if cfg.slots ~= nil then
    if type(cfg.slots) ~= "table" or #cfg.slots == 0 then
      top("slots", "a non-empty array of slots expected")
    else
      local names, credentials = {}, {}
      for i, e in ipairs(cfg.slots) do
        local label = ("slots[%d]"):format(i)
        if type(e) == "table" and type(e.slot) == "string" then label = e.slot end
        local add = adder(label)
        if type(e) ~= "table" then
          add("", "a table { slot = ..., provider = ... } expected")
        else
          if type(e.slot) == "string" then
            if names[e.slot] then add("slot", ("the name is also used by slots[%d]"):format(names[e.slot])) end
            names[e.slot] = i
          end
          check_slot_entry(e, add, cfg)
          -- two slots rotating one credential: each rotation kills the secret the other stored
          local cred, key = credential_of(e)
          if cred and credentials[cred] then
            add(key, ("the slot rotates the same credential as slot %s (%s): each rotation would kill the "
              .. "secret the other slot stored and handed to its consumers. Keep one slot per credential, and give "
              .. "its new secret to every consumer from that slot's deploy (a function, or one sink calling "
              .. "another)"):format(credentials[cred], cred))
          elseif cred then
            credentials[cred] = label
          end
        end
      end
    end
  end
  for _, name in ipairs(info.unset_env or {}) do
    top("os.getenv(" .. name .. ")", ("the environment variable %s is not set (use optional_env(%q) for "
      .. "one that may be unset)"):format(name, name))
  end
  if #problems > 0 then redact_problems(cfg, problems) end
  return problems
end

function _M.format(p)
  local parts = { p.file }
  if p.slot then parts[#parts + 1] = "slot " .. p.slot end
  if p.key and p.key ~= "" then parts[#parts + 1] = p.key end
  parts[#parts + 1] = p.message
  return table.concat(parts, ": ")
end

------------------------------------------------------------------------------------------------
-- The reference (doc/CONFIG.md is this text)

local function key_table(schema, out)
  out[#out + 1] = "| key | type | default | meaning |"
  out[#out + 1] = "|---|---|---|---|"
  local order = schema.order or keys_of(schema.keys or schema)
  local keys = schema.keys or schema
  for _, k in ipairs(order) do
    local s = keys[k]
    local function cell(t) return (t:gsub("|", "\\|")) end
    out[#out + 1] = ("| `%s` | %s | %s | %s%s |"):format(k, cell(s.type),
      s.default and ("`" .. s.default .. "`") or "-",
      s.required and "**required.** " or "", cell(s.doc))
  end
  out[#out + 1] = ""
end

function _M.reference()
  local out = {}
  local function p(s) out[#out + 1] = s end
  p("# Configuration reference")
  p("")
  p("Generated from `lua/rotor/config.lua`, the schema `rotor rotate --config` checks a file against")
  p("(`rotor config-reference` prints this text; `spec/config_spec.lua` fails when the two differ).")
  p("")
  p("A config file is Lua returning a table. It is checked as a whole before anything runs: every")
  p("unknown key (with the closest known one, or where it belongs when it is a key of another level:")
  p("a slot's key at the top or in a provider's options, the file's in a slot, a due policy's beside")
  p("`due`, a provider option in a slot), wrong type, unknown provider kind, strategy or store kind (a")
  p("deploy sink given as the store says so), and every `os.getenv` of an unset variable is listed")
  p("with the file, slot and key, and rotor exits 2 having created, written and sent nothing. No")
  p("problem shows a secret the file holds (a `client_secret`, an SQS key or token, a Paylocity code,")
  p("a webhook URL, shown as its scheme and host only), also one given to the wrong key.")
  p("Inside the file, `config_dir` is the file's directory and `optional_env(NAME)` reads a variable")
  p("that may be unset. Relative paths (`store`, `audit`, a dotenv `deploy.path`) are the config")
  p("file's, not the current directory's; one that starts with `~` or holds `$NAME` is refused,")
  p("since only a shell expands those (write `os.getenv(\"HOME\") .. \"/...\"`).")
  p("")
  p("The file is code rotor runs, so it is run only when no other user could have changed it: it is")
  p("owned by root or by the user rotor runs as and writable by neither group nor others, and its")
  p("directory (and that of each link to it) passes the store-directory trust rule of doc/STORES.md (a")
  p("sticky directory such as `/tmp` may hold it: nobody else can replace a file there).")
  p("")
  p("One credential, one slot: two slots that rotate the same credential (the same Genesys")
  p("`target.client_id`, or the same `client_id` of a provider that rotates its own, in the same")
  p("account; for SP-API, one app's client in any region or the sandbox) are refused, since each")
  p("rotation would kill the secret the other stored. When several")
  p("consumers share a credential, give its one slot a `deploy` that hands the new secret to each.")
  p("Every rotation also fails (before anything is sent) when another slot of the same store holds")
  p("its client, such as another config file's slot or a script's (doc/CLI.md).")
  p("")
  p("## Top-level keys")
  p("")
  key_table(_M.TOP, out)
  p("## Slot keys (each entry of `slots`)")
  p("")
  key_table(_M.SLOT, out)
  p("## Due policy (`due`, top-level and per slot)")
  p("")
  key_table(_M.DUE, out)
  p("A slot is due when it has an unfinished rotation, no current secret, an expired secret, or")
  p("when the first of the rules above says so. `rotor status` shows why a slot is due and when it")
  p("next will be. `false` turns a rule off.")
  p("")
  p("## Provider options (`provider.options`), every provider")
  p("")
  key_table(_M.PROVIDER_COMMON, out)
  for _, kind in ipairs(keys_of(_M.PROVIDERS)) do
    local pi = _M.PROVIDERS[kind]
    p("## " .. kind)
    p("")
    if next(pi.options) then
      p("Own options:")
      p("")
      key_table(pi.options, out)
    end
    if next(pi.target) then
      p("Target keys:")
      p("")
      key_table(pi.target, out)
    else
      p("Target keys: none.")
      p("")
    end
    p("Strategies:")
    p("")
    for _, n in ipairs(keys_of(pi.strategies)) do
      local s = pi.strategies[n]
      p(("- `%s`%s: %s.%s"):format(n, s.default and " (default)" or "", s.doc,
        s.old_dies and " Needs `deploy` or `consumers = \"none\"`." or ""))
    end
    p("")
  end
  p("## `rotor.rotate{...}` options (scripts)")
  p("")
  key_table(_M.ROTATE, out)
  return table.concat(out, "\n")
end

return _M
