-- rotor.spapi against the simulator: LWA grantless token, rotateApplicationClientSecret, and the
-- new secret's delivery through SQS (JSON 1.0 protocol, SigV4 signed by libcurl).
local kit = require "spec.helpers.rotor_fixtures"
local core = require "rotor.core"
local json = require "rotor.json"
local spapi = require "rotor.providers.spapi"

local ID = "amzn1.application-oa2-client.0123456789abcdef"
local SECRET = "amzn1.oa2-cs.v1.seeded0000000000000000000000000001"
local ROTATE_PATH = "/spapi/applications/2023-11-30/clientSecret"
local LWA_PATH = "/lwa/auth/o2/token"

describe("rotor.spapi", function()
  local S, seeded

  setup(function() S = kit.start() end)
  teardown(function() kit.stop(S) end)

  before_each(function()
    kit.reset(S, { spapi_rotate_interval = 0 })
    seeded = kit.ctl(S, "POST", "/seed", { provider = "spapi", client_id = ID, client_secret = SECRET, queue = true })
  end)

  local function sqs_opts(extra)
    return kit.merge({ queue_url = seeded.sqs.queue_url, access_key = seeded.sqs.access_key,
                       secret_key = seeded.sqs.secret_key, region = seeded.sqs.region }, extra)
  end

  local function opts(extra)
    return kit.merge({ client_id = ID, client_secret = SECRET, base_url = S.url .. "/spapi",
                       token_url = S.url .. LWA_PATH, cainfo = S.ca, timeout = 3, max_wait = 5,
                       pacing = false, sqs = sqs_opts() }, extra)
  end

  local function new(extra)
    return assert(spapi.new(opts(extra)))
  end

  local function notification(ntype, field, payload, event_time)
    return json.encode{
      notificationVersion = "1.0", notificationType = ntype, payloadVersion = "2023-11-30",
      eventTime = event_time or "2030-01-01T00:00:00.000Z", payload = { [field] = payload },
      notificationMetadata = { applicationId = "amzn1.sp.solution.other", subscriptionId = "s",
                               publishTime = "2030-01-01T00:00:00.000Z", notificationId = "n-" .. ntype },
    }
  end

  local function queued()
    local n = 0
    for k in pairs(kit.ctl(S, "GET", "/state")) do
      if k:find("^sqs:msg:") then n = n + 1 end
    end
    return n
  end

  describe("options", function()
    it("chooses the regional and sandbox hosts and the LWA endpoint", function()
      for r, host in pairs{ na = "sellingpartnerapi-na.amazon.com", eu = "sellingpartnerapi-eu.amazon.com",
                            fe = "sellingpartnerapi-fe.amazon.com" } do
        local p = assert(spapi.new{ region = r, client_id = ID, client_secret = SECRET })
        assert.equal("https://" .. host, p.options.base_url)
        assert.equal("https://api.amazon.com/auth/o2/token", p.options.token_url)
        p = assert(spapi.new{ region = r, sandbox = true, client_id = ID, client_secret = SECRET })
        assert.equal("https://sandbox." .. host, p.options.base_url)
      end
      local p, err = spapi.new{ region = "sa", client_id = ID }
      assert.is_nil(p)
      assert.equal("config", err.kind)
      assert.truthy(err.message:find("region", 1, true))
    end)

    it("derives the SQS region and endpoint from an AWS queue URL", function()
      local p = assert(spapi.new{ client_id = ID, client_secret = SECRET, sqs = {
        queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/rotor", access_key = "AKIAEXAMPLE",
        secret_key = "sqs-secret-key-example" } })
      assert.equal("eu-west-1", p.options.sqs.region)
      assert.equal("https://sqs.eu-west-1.amazonaws.com/", p.options.sqs.endpoint)
      assert.is_nil(p.options.sqs.secret_key)
      assert.equal(S.url .. "/sqs", new().options.sqs.endpoint)
    end)

    it("names the bad sqs field", function()
      for field, bad in pairs{ access_key = kit.NIL, secret_key = kit.NIL, queue_url = "ftp://x/1/q",
                               region = kit.NIL, endpoint = "http://sqs.example.com", bogus = 1 } do
        local p, err = spapi.new(opts{ sqs = sqs_opts{ [field] = bad } })
        assert.is_nil(p)
        assert.equal("config", err.kind)
        assert.truthy(err.message:find(field, 1, true), err.message)
        kit.assert_no_secret(nil, err, seeded.sqs.secret_key)
      end
    end)
  end)

  it("gets an LWA token with the rotation scope (form body) and verifies credentials", function()
    local p = new()
    assert.truthy(p:token())
    local e = kit.log(S)[1]
    assert.equal(LWA_PATH, e.path)
    assert.truthy(e.content_type:find("x-www-form-urlencoded", 1, true))
    assert.is_true(p:verify{ client_id = ID, client_secret = SECRET })
    local wrong = "amzn1.oa2-cs.v1.wrong000000000000000000000000000"
    local ok, err = p:verify{ client_id = ID, client_secret = wrong }
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    kit.assert_no_secret(S, err, wrong)
  end)

  it("rotates, receives the new secret from SQS, acks, and the secret works", function()
    local p = new()
    assert.is_true(p:rotate_application_client_secret())
    local payload, ack, info = p:receive_new_client_secret{ wait = 5 }
    assert.truthy(payload, tostring(ack))
    assert.equal(ID, payload.clientId)
    assert.truthy(core.is_secret(payload.newClientSecret))
    assert.matches("^amzn1%.oa2%-cs%.v1%.", payload.newClientSecret:reveal())
    assert.is_string(payload.oldClientSecretExpiryTime)
    assert.is_string(payload.newClientSecretExpiryTime)
    assert.equal("APPLICATION_OAUTH_CLIENT_NEW_SECRET", info.notification_type)
    assert.equal(1, queued())
    assert.is_true(ack())
    assert.is_true(ack())
    assert.equal(0, queued())
    assert.is_true(p:verify{ client_id = ID, client_secret = payload.newClientSecret })
    -- the old secret lasts 7 days
    assert.is_true(p:verify{ client_id = ID, client_secret = SECRET })
    kit.advance(S, 8 * 86400)
    local ok, err = p:verify{ client_id = ID, client_secret = SECRET }
    assert.is_nil(ok)
    assert.equal("auth", err.kind)
    assert.equal(1, kit.counter(S, ROTATE_PATH))
  end)

  it("an empty queue: kind timeout after the wait (long polling)", function()
    local p = new()
    local dt, r, err = kit.timed(function() return p:receive_new_client_secret{ wait = 1 } end)
    assert.is_nil(r)
    assert.equal("timeout", err.kind)
    assert.truthy(dt >= 0.9 and dt < 5, dt)
  end)

  it("leaves messages for other clients (and other types) in the queue", function()
    local other = "amzn1.application-oa2-client.ffffffffffffffff"
    kit.ctl(S, "POST", "/sqs/send", { body = notification("APPLICATION_OAUTH_CLIENT_NEW_SECRET",
      "applicationOAuthClientNewSecret", { clientId = other, newClientSecret = "amzn1.oa2-cs.v1.other-client-secret",
        newClientSecretExpiryTime = "2030-06-01T00:00:00Z", oldClientSecretExpiryTime = "2030-01-08T00:00:00Z" }) })
    kit.ctl(S, "POST", "/sqs/send", { body = "not a notification" })
    kit.ctl(S, "POST", "/sqs/send", { body = notification("APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
      "applicationOAuthClientSecretExpiry", { clientId = ID, clientSecretExpiryTime = "2030-02-01T00:00:00Z",
        clientSecretExpiryReason = "PERIODIC_ROTATION" }) })
    local p = new()
    assert.is_true(p:rotate_application_client_secret())
    local payload, ack = p:receive_new_client_secret{ wait = 5 }
    assert.truthy(payload, tostring(ack))
    assert.equal(ID, payload.clientId)
    assert.is_true(ack())
    assert.equal(3, queued())
    -- the others were handed back at once (ChangeMessageVisibility 0): no clock advance needed
    local q = new{ client_id = other }
    local theirs, ack2 = q:receive_new_client_secret{ wait = 5 }
    assert.truthy(theirs, tostring(ack2))
    assert.equal(other, theirs.clientId)
    assert.equal("amzn1.oa2-cs.v1.other-client-secret", theirs.newClientSecret:reveal())
    assert.equal(3, queued())
    local notice, ack3 = p:receive_secret_expiry_notice{ wait = 5 }
    assert.truthy(notice, tostring(ack3))
    assert.equal("2030-02-01T00:00:00Z", notice.clientSecretExpiryTime)
    assert.equal("PERIODIC_ROTATION", notice.clientSecretExpiryReason)
    assert.is_true(ack3())
    assert.equal(2, queued())
  end)

  it("since= skips older notifications for the same client", function()
    kit.ctl(S, "POST", "/sqs/send", { body = notification("APPLICATION_OAUTH_CLIENT_NEW_SECRET",
      "applicationOAuthClientNewSecret", { clientId = ID, newClientSecret = "amzn1.oa2-cs.v1.stale-secret-000" },
      "2001-01-01T00:00:00Z") })
    local p = new()
    assert.is_true(p:rotate_application_client_secret())
    local payload, ack = p:receive_new_client_secret{ wait = 5, since = "2002-01-01T00:00:00Z" }
    assert.truthy(payload, tostring(ack))
    assert.not_equal("amzn1.oa2-cs.v1.stale-secret-000", payload.newClientSecret:reveal())
    assert.is_true(ack())
  end)

  it("signs SQS requests with a session token too", function()
    local p = new{ sqs = sqs_opts{ session_token = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN" } }
    local r, err = p:receive_new_client_secret{ wait = 0 }
    assert.is_nil(r)
    assert.equal("timeout", err.kind)
    local e = kit.log(S)[1]
    assert.equal(200, e.status)
  end)

  it("a wrong SQS secret key is kind auth, and never shown", function()
    local wrong = "wrongSQSsecretKey/0123456789+abcdefghij"
    local p = new{ sqs = sqs_opts{ secret_key = wrong } }
    local r, err = p:receive_new_client_secret{ wait = 1 }
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal(403, err.status)
    assert.truthy(err.detail:find("SignatureDoesNotMatch", 1, true))
    assert.is_string(err.request_id)
    kit.assert_no_secret(S, err, wrong)
  end)

  it("400 when no queue is registered: kind http, ErrorList detail, request id", function()
    kit.ctl(S, "POST", "/seed", { provider = "spapi", client_id = "amzn1.application-oa2-client.noqueue",
                                  client_secret = "amzn1.oa2-cs.v1.noqueue-secret-0001", queue = false })
    local p = new{ client_id = "amzn1.application-oa2-client.noqueue",
                   client_secret = "amzn1.oa2-cs.v1.noqueue-secret-0001" }
    local r, err = p:rotate_application_client_secret()
    assert.is_nil(r)
    assert.equal("http", err.kind)
    assert.equal(400, err.status)
    assert.truthy(err.detail:find("InvalidInput", 1, true))
    assert.is_string(err.request_id)
    assert.truthy(tostring(err):find(err.request_id, 1, true))
    kit.assert_no_secret(S, err)
  end)

  it("403 twice is kind auth (a 403 first drops the token and retries once)", function()
    local p = new()
    kit.fault(S, { path = ROTATE_PATH, status = 403, count = 2,
                   body = { errors = { { code = "Unauthorized", message = "Access denied" } } } })
    local r, err = p:rotate_application_client_secret()
    assert.is_nil(r)
    assert.equal("auth", err.kind)
    assert.equal(403, err.status)
    assert.truthy(err.detail:find("Unauthorized", 1, true))
    assert.equal(2, kit.counter(S, ROTATE_PATH))
    assert.equal(2, kit.counter(S, LWA_PATH))
  end)

  it("a token that expires mid-run (SP-API answers 403) is refreshed", function()
    local p = new()
    assert.is_true(p:rotate_application_client_secret())
    kit.advance(S, 3700)
    assert.is_true(p:rotate_application_client_secret())
    assert.equal(2, kit.counter(S, LWA_PATH))
    assert.equal(3, kit.counter(S, ROTATE_PATH))
  end)

  it("the simulator's 1/min quota: 429 past the wait bound is kind rate_limited", function()
    kit.ctl(S, "POST", "/settings", { spapi_rotate_interval = 60 })
    local p = new{ max_wait = 1 }
    assert.is_true(p:rotate_application_client_secret())
    local r, err = p:rotate_application_client_secret()
    assert.is_nil(r)
    assert.equal("rate_limited", err.kind)
    assert.equal(429, err.status)
  end)

  it("paces rotations: 1 per minute by default, overridable", function()
    local p = new{ pacing = kit.NIL }
    local pol = p:_policy("rotate_application_client_secret")
    assert.same({ 1, 60 }, { pol.rate.rate, pol.rate.per })
    assert.is_nil(p:_policy("receive_new_client_secret").rate)
    kit.ctl(S, "POST", "/settings", { spapi_rotate_interval = 1 })
    p = new{ pacing = kit.NIL, rate_limits = { rotate_application_client_secret = { rate = 1, per = 1.2 } } }
    local dt = kit.timed(function()
      assert.is_true(p:rotate_application_client_secret())
      assert.is_true(p:rotate_application_client_secret())
    end)
    assert.truthy(dt >= 1.1, dt)
    for _, e in ipairs(kit.log(S)) do assert.not_equal(429, e.status) end
  end)

  it("a hang after send on rotate is kind ambiguous, sent exactly once", function()
    local p = new{ timeout = 1 }
    kit.fault(S, { path = ROTATE_PATH, hang = true })
    local r, err = p:rotate_application_client_secret()
    assert.is_nil(r)
    assert.equal("ambiguous", err.kind)
    assert.equal(1, kit.counter(S, ROTATE_PATH))
    kit.assert_no_secret(S, err)
  end)

  it("malformed and truncated SQS answers are kind protocol, with no secret in the error", function()
    local p = new()
    assert.is_true(p:rotate_application_client_secret())
    kit.fault(S, { path = "/sqs", malformed = true })
    local r, err = p:receive_new_client_secret{ wait = 2 }
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    kit.advance(S, 61)
    kit.fault(S, { path = "/sqs", truncate = true })
    r, err = p:receive_new_client_secret{ wait = 2 }
    assert.is_nil(r)
    assert.equal("protocol", err.kind)
    kit.assert_no_secret(S, err)
    -- the secret is still in the queue
    kit.advance(S, 61)
    local payload, ack = p:receive_new_client_secret{ wait = 2 }
    assert.truthy(payload, tostring(ack))
    assert.is_true(ack())
  end)

  it("without an sqs option, receiving is kind config", function()
    local p = new{ sqs = kit.NIL }
    local r, err = p:receive_new_client_secret{ wait = 0 }
    assert.is_nil(r)
    assert.equal("config", err.kind)
    assert.truthy(err.message:find("sqs", 1, true))
  end)
end)
