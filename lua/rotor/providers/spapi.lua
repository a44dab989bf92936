-- Amazon SP-API Application Management (rotateApplicationClientSecret) and the SQS queue
-- that delivers the new secret (AWS JSON 1.0 protocol, SigV4 signed by libcurl).
local core = require "rotor.core"
local client = require "rotor.client"
local errors = require "rotor.errors"
local http = require "rotor.http"
local json = require "rotor.json"
local bounds = require "rotor.bounds"

local _M = {}

local Spapi = client.class("spapi")
_M.class = Spapi

local REGIONS = {
  na = { host = "sellingpartnerapi-na.amazon.com", aws = "us-east-1" },
  eu = { host = "sellingpartnerapi-eu.amazon.com", aws = "eu-west-1" },
  fe = { host = "sellingpartnerapi-fe.amazon.com", aws = "us-west-2" },
}
_M.REGIONS = REGIONS

local LWA_URL = "https://api.amazon.com/auth/o2/token"
local SCOPE = "sellingpartnerapi::client_credential:rotation"
local ROTATE_PATH = "/applications/2023-11-30/clientSecret"
local NEW_SECRET = "APPLICATION_OAUTH_CLIENT_NEW_SECRET"
local EXPIRY = "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY"
local MAX_POLL = 20          -- SQS WaitTimeSeconds upper bound
-- A ReceiveMessage answer holds up to 10 messages of up to 1 MiB each (SQS's largest message),
-- their bodies as JSON strings, where escaping can triple the bytes (a non-ASCII character as
-- \uXXXX): its body may be that large. Under the default cap of a response (1 MiB), five
-- messages of 250 KiB on the queue made every poll fail, and Amazon's message behind them was
-- never read.
local RECEIVE_MAX = 10
local RECEIVE_BODY_CAP = RECEIVE_MAX * 3 * 1024 * 1024 + 1024 * 1024
-- how long after a poll's deadline the messages it took and did not keep are still given back
-- (ten to a call); later ones reappear after their visibility timeout
local RELEASE_GRACE = 5
local MAX_VISIBILITY = 43200

-- rotateApplicationClientSecret: 0.0167 req/s, burst 1
local RATES = { rotate_application_client_secret = { rate = 1, per = 60 } }

--- Region and endpoint of an SQS queue URL: https://sqs.<region>.amazonaws.com/<acct>/<name>
-- (or any host, e.g. the simulator: the endpoint is the URL without /<acct>/<name>).
function _M.parse_queue_url(u)
  local scheme, host, _, rest = client.parse_url(u)
  if not scheme then return nil end
  local prefix = rest:match("^(.-)/[^/]+/[^/]+/?$")
  if not prefix then return nil end
  local authority = u:match("^%a[%w+.-]*://([^/]*)")
  local endpoint = scheme .. "://" .. authority .. (prefix == "" and "/" or prefix)
  local region = host:match("^sqs%.([%w-]+)%.amazonaws%.com") or host:match("^([%w-]+)%.queue%.amazonaws%.com")
  return endpoint, region
end

local function v_sqs(v)
  if type(v) ~= "table" then return nil, "a table {queue_url=, access_key=, secret_key=, ...} expected" end
  local known = { queue_url = true, access_key = true, secret_key = true, session_token = true,
                  region = true, endpoint = true }
  for k in pairs(v) do
    if not known[k] then return nil, "unknown field " .. tostring(k) end
  end
  return v
end

local function sqs_error(field, why)
  return client.config_error("spapi", "sqs." .. field, why)
end

-- Validate and normalise the sqs option; returns the public table (no secrets) and the credentials.
local function check_sqs(s)
  local V = client.validators
  local q, why = V.url(s.queue_url)
  if not q then return sqs_error("queue_url", why or "required") end
  local ep, region = _M.parse_queue_url(q)
  if not ep then return sqs_error("queue_url", "not a queue URL (.../<account>/<queue name>)") end
  if s.endpoint ~= nil then
    ep, why = V.url(s.endpoint)
    if not ep then return sqs_error("endpoint", why) end
    if not ep:match("^%a[%w+.-]*://[^/]+/") then ep = ep .. "/" end
  end
  if s.region ~= nil then
    region, why = V.string(s.region)
    if not region then return sqs_error("region", why) end
    if not region:match("^[%w-]+$") then return sqs_error("region", "not an AWS region name") end
  end
  if not region then return sqs_error("region", "cannot be derived from queue_url; set it") end
  local ak
  ak, why = V.string(s.access_key)
  if not ak then return sqs_error("access_key", why) end
  if ak:find(":", 1, true) then return sqs_error("access_key", "must not contain ':'") end
  local sk
  sk, why = V.secret(s.secret_key)
  if not sk then return sqs_error("secret_key", why) end
  local tok
  if s.session_token ~= nil then
    tok, why = V.secret(s.session_token)
    if not tok then return sqs_error("session_token", why) end
    if not core.is_secret(tok) then tok = core.secret(tok) end
  end
  local plain = core.is_secret(sk) and sk:reveal() or sk
  local userpwd = core.secret(ak .. ":" .. plain)
  return { queue_url = q, endpoint = ep, region = region, access_key = ak,
           session_token = tok and true or nil },
         { userpwd = userpwd, session_token = tok, secret_key = core.is_secret(sk) and sk or core.secret(sk) }
end

--- rotor.spapi{ region="na"|"eu"|"fe", sandbox=false, client_id=, client_secret=,
--               sqs={ queue_url=, access_key=, secret_key=, session_token=, region=, endpoint= } }
function _M.new(opts)
  client.check_table("spapi", opts)
  local rname = opts.region == nil and "na" or opts.region
  local r = type(rname) == "string" and REGIONS[rname:lower()]
  if not r then
    return client.config_error("spapi", "region", ("unknown region %q (na, eu or fe)"):format(tostring(rname)))
  end
  if opts.sandbox ~= nil and type(opts.sandbox) ~= "boolean" then
    return client.config_error("spapi", "sandbox", "true or false expected")
  end
  local sqs_pub, sqs_cred
  if opts.sqs ~= nil and not (type(opts.sqs) == "table" and next(opts.sqs) == nil) then
    local ok, why = v_sqs(opts.sqs)
    if not ok then return client.config_error("spapi", "sqs", why) end
    sqs_pub, sqs_cred = check_sqs(opts.sqs)
    if not sqs_pub then return nil, sqs_cred end
  end
  local o, err = client.new(Spapi, opts, {
    provider = "spapi",
    base_url = "https://" .. (opts.sandbox and "sandbox." or "") .. r.host,
    token_url = LWA_URL,
    token = { style = "form", scope = SCOPE },
    auth = "x-amz-access-token",
    rates = RATES,
    reauth = { [401] = true, [403] = true }, -- SP-API answers an expired token with 403
    own = { region = client.validators.string, sandbox = client.validators.boolean, sqs = v_sqs },
  })
  if not o then return nil, err end
  o.region = rname:lower()
  o.options.sqs = sqs_pub
  o._sqs = sqs_cred
  if sqs_cred then
    o._scrub[#o._scrub + 1] = sqs_cred.secret_key
    if sqs_cred.session_token then o._scrub[#o._scrub + 1] = sqs_cred.session_token end
  end
  return o
end

--- rotateApplicationClientSecret: true (204). The new secret arrives in the SQS queue.
function Spapi:rotate_application_client_secret()
  return self:call("rotate_application_client_secret", "POST", ROTATE_PATH, { mint = true })
end

-- One SQS JSON 1.0 call: the decoded response (a table), or nil, err.
function Spapi:_sqs_call(op, action, payload, extra)
  local s = self.options.sqs
  if not s then
    return nil, errors.new{ kind = "config", provider = self.provider, op = op,
                            message = "option sqs: not set (the queue that receives the new secret)" }
  end
  local headers = {
    { "Content-Type", "application/x-amz-json-1.0" },
    { "X-Amz-Target", "AmazonSQS." .. action },
    { "Accept", "application/json" },
  }
  if self._sqs.session_token then headers[#headers + 1] = { "x-amz-security-token", self._sqs.session_token } end
  local req = self:_req{
    url = s.endpoint, method = "POST", headers = headers, body = json.encode(payload),
    aws_sigv4 = "aws:amz:" .. s.region .. ":sqs", userpwd = self._sqs.userpwd,
    timeout = extra and extra.timeout, low_speed_time = extra and extra.low_speed_time,
    max_body = extra and extra.max_body,
  }
  local policy = self:_policy(op, extra and extra.interruptible and { interruptible = true } or nil)
  local res, err = http.request(req, policy)
  if not res then return nil, self:_wrap(err, op) end
  local path = s.endpoint:match("^%a[%w+.-]*://[^/]*(.*)$")
  if res.status < 200 or res.status >= 300 then
    return nil, self:_status_error(op, "POST", path .. " " .. action, res)
  end
  if res.body == nil or not res.body:find("%S") then return {} end
  local v = json.decode(res.body)
  if type(v) ~= "table" then
    return nil, errors.new{ kind = "protocol", status = res.status, provider = self.provider, op = op,
                            request_id = client.request_id(res.headers),
                            message = "SQS " .. action .. ": the response is not a JSON object" }
  end
  return v
end

-- A bound on eventTime, compared as a string. No trailing "Z", on purpose (not timefmt.iso):
-- eventTime carries milliseconds ("...:05.123Z"), and "...:05.123Z" >= "...:05" holds, while
-- against "...:05Z" it would not ("." sorts before "Z"), losing the events of that very second.
local function iso(t)
  if type(t) == "number" then return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) end
  return t
end

-- The notification envelope in an SQS message body (plain, or wrapped by SNS).
local function envelope(body)
  local v = type(body) == "string" and json.decode(body)
  if type(v) ~= "table" then return nil end
  if v.notificationType == nil and v.Type == "Notification" and type(v.Message) == "string" then
    v = json.decode(v.Message)
    if type(v) ~= "table" then return nil end
  end
  return v
end

-- The receive arguments, checked: { wait, since, not_after, skip, application_id, visibility }.
local function receive_args(op, args)
  args = args or {}
  if type(args) ~= "table" then error(op .. ": a table {wait=} expected", 4) end
  local wait = args.wait == nil and MAX_POLL or args.wait
  -- the bounds of rotor.rotate's wait and visibility options
  local ok, why = bounds.check(bounds.ROTATE, "wait", wait)
  if not ok then error(op .. ": wait: " .. why, 4) end
  if args.visibility ~= nil then
    ok, why = bounds.check(bounds.ROTATE, "visibility", args.visibility)
    if not ok then error(op .. ": visibility: " .. why, 4) end
  end
  local since, not_after = iso(args.since), iso(args.not_after)
  if since ~= nil and type(since) ~= "string" then error(op .. ": since must be epoch seconds or ISO-8601", 4) end
  if not_after ~= nil and type(not_after) ~= "string" then
    error(op .. ": not_after must be epoch seconds or ISO-8601", 4)
  end
  if args.skip ~= nil and type(args.skip) ~= "function" then error(op .. ": skip must be a function", 4) end
  return { wait = wait, since = since, not_after = not_after, skip = args.skip, application_id = args.application_id,
           visibility = args.visibility or math.min(MAX_VISIBILITY, math.max(60, math.ceil(wait) + 10)) }
end

-- The payload of message m when it is a notification of kind.type for this client that passes
-- every check of a (dates, application, skip, kind.valid), with its envelope; else nil.
function Spapi:_match(m, kind, a)
  local env = type(m) == "table" and type(m.ReceiptHandle) == "string" and envelope(m.Body)
  local p = env and env.notificationType == kind.type and type(env.payload) == "table" and env.payload[kind.field]
  if type(p) ~= "table" or p.clientId ~= self.client_id then return nil end
  if kind.valid and not kind.valid(p) then return nil end
  local t, meta = env.eventTime, env.notificationMetadata
  if a.since and not (type(t) == "string" and t >= a.since) then return nil end
  if a.not_after and not (type(t) == "string" and t <= a.not_after) then return nil end
  if a.application_id and not (type(meta) == "table" and meta.applicationId == a.application_id) then return nil end
  if a.skip and a.skip(p, env) then return nil end
  return p, env
end

-- Give messages back to the queue at once (visibility 0), ten to a call, best effort: if that
-- fails, or is cut short, they reappear after their visibility timeout anyway. Cut short
-- RELEASE_GRACE seconds after the poll's deadline, or on a signal: a queue filled with junk
-- kept a run giving it back, one call a message, half a minute past its wait.
function Spapi:_release(op, handles, deadline)
  local q = self.options.sqs.queue_url
  local stop = deadline + RELEASE_GRACE
  for i = 1, #handles, 10 do
    local left = stop - core.now()
    if left <= 0 or core.interrupted() then return end
    local entries = {}
    for j = i, math.min(i + 9, #handles) do
      entries[#entries + 1] = { Id = tostring(j), ReceiptHandle = handles[j], VisibilityTimeout = 0 }
    end
    local ok = self:_sqs_call(op, "ChangeMessageVisibilityBatch", { QueueUrl = q, Entries = entries },
                              { timeout = math.max(1, math.ceil(left)) })
    if not ok then return end -- not supported or not allowed
  end
end

-- The acknowledgement of a taken message: deletes it, once.
function Spapi:_acker(op, handle)
  local acked = false
  return function()
    if acked then return true end
    local ok, err = self:_sqs_call(op, "DeleteMessage", { QueueUrl = self.options.sqs.queue_url,
                                                          ReceiptHandle = handle })
    if not ok then return nil, err end
    acked = true
    return true
  end
end

-- Wait up to args.wait seconds for a notification of kind.type (payload field kind.field, for
-- this object's client id), the newest by eventTime when several arrive at once. Messages not
-- taken (other clients', other types, older ones) are released again, never deleted.
-- kind: { type, field, convert(payload) (in place), valid(payload) -> bool }.
-- Returns payload, ack, info | nil, err (kind "timeout" when none came).
function Spapi:_receive(op, kind, args)
  local a = receive_args(op, args)
  if not self.options.sqs then
    return nil, errors.new{ kind = "config", provider = self.provider, op = op,
                            message = "option sqs: not set (the queue that receives the new secret)" }
  end
  local q = self.options.sqs.queue_url
  local deadline = core.now() + a.wait
  local held, order = {}, {} -- MessageId -> latest receipt handle of the messages not taken
  local function hold(m)
    local mid = m.MessageId or m.ReceiptHandle
    if held[mid] == nil then order[#order + 1] = mid end
    held[mid] = m.ReceiptHandle
  end
  local best, failure
  repeat
    local poll = math.max(0, math.min(MAX_POLL, math.floor(deadline - core.now())))
    local v, err = self:_sqs_call(op, "ReceiveMessage", {
      QueueUrl = q, MaxNumberOfMessages = RECEIVE_MAX, WaitTimeSeconds = poll, VisibilityTimeout = a.visibility,
    }, { timeout = poll + self.options.timeout, low_speed_time = poll + self.options.timeout,
         max_body = RECEIVE_BODY_CAP, interruptible = true })
    local msgs = v and v.Messages
    if not v then
      -- a long poll abandoned on a signal: stopped as below (a message it had taken comes back
      -- after the visibility timeout; none is lost)
      if err.kind ~= "interrupted" then failure = err end
    elseif msgs ~= nil and msgs ~= json.null and type(msgs) ~= "table" then
      failure = errors.new{ kind = "protocol", provider = self.provider, op = op,
                            message = "SQS ReceiveMessage: Messages is not an array" }
    else
      for _, m in ipairs(type(msgs) == "table" and msgs or {}) do
        local p, env = self:_match(m, kind, a)
        if p and (best == nil or tostring(env.eventTime or "") > tostring(best.env.eventTime or "")) then
          if best then hold(best.m) end
          best = { m = m, env = env, p = p }
        elseif type(m) == "table" and type(m.ReceiptHandle) == "string" then
          hold(m)
        end
      end
    end
  -- SIGINT/SIGTERM to the rotor host: stop between two long polls (at most 20 s apart) rather
  -- than when the wait (up to a day) runs out; a message not taken stays on the queue
  until best or failure or deadline - core.now() <= 0 or core.interrupted()
  if best then held[best.m.MessageId or best.m.ReceiptHandle] = nil end
  local handles = {}
  for _, mid in ipairs(order) do if held[mid] then handles[#handles + 1] = held[mid] end end
  self:_release(op, handles, deadline)
  if failure then return nil, failure end
  if not best and core.interrupted() then
    return nil, errors.new{ kind = "interrupted", provider = self.provider, op = op,
                            message = ("stopped waiting for the %s notification for client %s on a signal"):format(
                              kind.type, tostring(self.client_id)) }
  end
  if not best then
    return nil, errors.new{ kind = "timeout", provider = self.provider, op = op,
                            message = ("no %s notification for client %s within %g s"):format(
                              kind.type, tostring(self.client_id), a.wait) }
  end
  if kind.convert then kind.convert(best.p) end
  local meta = best.env.notificationMetadata
  return best.p, self:_acker(op, best.m.ReceiptHandle), {
    message_id = best.m.MessageId, notification_type = best.env.notificationType,
    notification_id = type(meta) == "table" and meta.notificationId or nil,
    application_id = type(meta) == "table" and meta.applicationId or nil,
    event_time = best.env.eventTime,
  }
end

--- Await the APPLICATION_OAUTH_CLIENT_NEW_SECRET notification for this client:
-- payload.applicationOAuthClientNewSecret (newClientSecret=<secret>), ack, info.
-- args: wait (seconds, default 20), since (epoch or ISO-8601: ignore older events), not_after (ignore
-- events dated later), application_id (ignore other applications' messages), skip (a function of the
-- raw payload and envelope: true to pass a message over), visibility.
function Spapi:receive_new_client_secret(args)
  local payload, ack, info = self:_receive("receive_new_client_secret", {
    type = NEW_SECRET, field = "applicationOAuthClientNewSecret",
    convert = function(p) client.secret_field(p, "newClientSecret") end,
    valid = function(p) return type(p.newClientSecret) == "string" and p.newClientSecret ~= "" end,
  }, args)
  return payload, ack, info -- not a tail call: argument errors name the caller's line
end

--- Await the APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY notice for this client:
-- payload.applicationOAuthClientSecretExpiry ({clientId, clientSecretExpiryTime, clientSecretExpiryReason}), ack, info.
function Spapi:receive_secret_expiry_notice(args)
  local payload, ack, info = self:_receive("receive_secret_expiry_notice",
                                           { type = EXPIRY, field = "applicationOAuthClientSecretExpiry" }, args)
  return payload, ack, info
end

return _M
