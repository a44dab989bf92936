-- The simulator's Login with Amazon, SP-API rotateApplicationClientSecret and SQS endpoints,
-- driven with the curl CLI (SQS requests signed by curl --aws-sigv4).
local sim = require "spec.helpers.sim"
local cjson = require "cjson"

local LWA = "/lwa/auth/o2/token"
local ROTATE = "/spapi/applications/2023-11-30/clientSecret"
local SCOPE = "sellingpartnerapi::client_credential:rotation"
local DAY = 86400

describe("simulator: spapi #proc", function()
  local s, app

  setup(function() s = sim.start() end)
  teardown(function() if s then s:stop() end end)

  before_each(function()
    s:reset()
    s:settings{ spapi_rotate_interval = 0 }
    app = s:seed{ provider = "spapi" }
  end)

  local function lwa(f, how)
    if how == "json" then return assert(s:request{ method = "POST", path = LWA, json = f }) end
    return assert(s:request{ method = "POST", path = LWA, form = f })
  end

  local function fields(secret, scope)
    return { grant_type = "client_credentials", client_id = app.client_id,
      client_secret = secret or app.client_secret, scope = scope or SCOPE }
  end

  local function token(secret, scope)
    local r = lwa(fields(secret, scope))
    assert.equal(200, r.status, r.body)
    return r.json.access_token
  end

  local function rotate(tok)
    local h = {}
    if tok then h["x-amz-access-token"] = tok end
    return assert(s:request{ method = "POST", path = ROTATE, headers = h })
  end

  local function receive(extra)
    local b = { QueueUrl = app.queue_url, WaitTimeSeconds = 0, MaxNumberOfMessages = 10 }
    for k, v in pairs(extra or {}) do b[k] = v end
    local r = assert(s:sqs_call("ReceiveMessage", b))
    assert.equal(200, r.status, r.body)
    return r.json.Messages or {}
  end

  describe("LWA /auth/o2/token", function()
    it("issues a grantless token for form fields with the rotation scope", function()
      local r = lwa(fields())
      assert.equal(200, r.status)
      assert.equal("bearer", r.json.token_type)
      assert.equal(3600, r.json.expires_in)
      assert.equal(SCOPE, r.json.scope)
      assert.matches("^Atc|", r.json.access_token)
    end)

    it("accepts a JSON body too (lwa_accept_json)", function()
      assert.equal(200, lwa(fields(), "json").status)
      s:settings{ lwa_accept_json = false }
      assert.equal("invalid_request", lwa(fields(), "json").json.error)
    end)

    it("refuses a missing or unknown scope with invalid_scope", function()
      local f = fields()
      f.scope = nil
      local r = lwa(f)
      assert.equal(400, r.status)
      assert.equal("invalid_scope", r.json.error)
      assert.equal("invalid_scope", lwa(fields(nil, "profile")).json.error)
    end)

    it("refuses a bad secret (401 invalid_client), missing fields, Basic auth, other grants", function()
      local r = lwa(fields("amzn1.oa2-cs.v1.bad"))
      assert.equal(401, r.status)
      assert.equal("invalid_client", r.json.error)
      local f = fields()
      f.client_secret = nil
      assert.equal("invalid_request", lwa(f).json.error)
      r = assert(s:request{ method = "POST", path = LWA, basic = { app.client_id, app.client_secret },
        form = { grant_type = "client_credentials", scope = SCOPE } })
      assert.equal(400, r.status)
      assert.equal("invalid_request", r.json.error)
      f = fields()
      f.grant_type = "refresh_token"
      assert.equal("unsupported_grant_type", lwa(f).json.error)
    end)
  end)

  describe("rotateApplicationClientSecret", function()
    it("answers 204 and delivers APPLICATION_OAUTH_CLIENT_NEW_SECRET on the queue", function()
      local now = s:clock().now
      local r = rotate(token())
      assert.equal(204, r.status, r.body)
      assert.equal("", r.body)
      assert.equal("0.0167", r.headers["x-amzn-ratelimit-limit"])
      assert.is_string(r.headers["x-amzn-requestid"])
      local msgs = receive()
      assert.equal(1, #msgs)
      local m = msgs[1]
      local body = cjson.decode(m.Body)
      assert.equal("APPLICATION_OAUTH_CLIENT_NEW_SECRET", body.notificationType)
      assert.equal("1.0", body.notificationVersion)
      assert.equal("2023-11-30", body.payloadVersion)
      assert.equal(app.application_id, body.notificationMetadata.applicationId)
      assert.is_string(body.notificationMetadata.notificationId)
      local p = body.payload.applicationOAuthClientNewSecret
      assert.equal(app.client_id, p.clientId)
      assert.matches("^amzn1%.oa2%-cs%.v1%.%x+$", p.newClientSecret)
      local d = os.date("!%Y-%m-%d", math.floor(now + 7 * DAY))
      assert.equal(d, p.oldClientSecretExpiryTime:sub(1, 10))
      assert.is_string(p.newClientSecretExpiryTime)
      assert.is_string(m.MD5OfBody)
      assert.equal(p.newClientSecret, s:secrets()[#s:secrets()])
      -- DeleteMessage, then the queue is empty ({} without Messages)
      local del = assert(s:sqs_call("DeleteMessage", { QueueUrl = app.queue_url, ReceiptHandle = m.ReceiptHandle }))
      assert.equal(200, del.status)
      local again = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url }))
      assert.equal("{}", again.body)
    end)

    it("keeps the old secret working for 7 days of simulated time", function()
      rotate(token())
      local new = cjson.decode(receive()[1].Body).payload.applicationOAuthClientNewSecret.newClientSecret
      assert.equal(200, lwa(fields()).status)
      assert.equal(200, lwa(fields(new)).status)
      s:advance(7 * DAY - 60)
      assert.equal(200, lwa(fields()).status)
      s:advance(120)
      assert.equal("invalid_client", lwa(fields()).json.error)
      assert.equal(200, lwa(fields(new)).status)
    end)

    it("limits rotation to one per minute per application (spapi_rotate_interval)", function()
      s:settings{ spapi_rotate_interval = 60 }
      local tok = token()
      assert.equal(204, rotate(tok).status)
      local r = rotate(tok)
      assert.equal(429, r.status)
      assert.equal("QuotaExceeded", r.json.errors[1].code)
      s:advance(61)
      assert.equal(204, rotate(tok).status)
    end)

    it("answers 400 InvalidInput when no queue is registered", function()
      local bare = s:seed{ provider = "spapi", queue = false }
      local r = lwa({ grant_type = "client_credentials", client_id = bare.client_id,
        client_secret = bare.client_secret, scope = SCOPE })
      r = rotate(r.json.access_token)
      assert.equal(400, r.status)
      assert.equal("InvalidInput", r.json.errors[1].code)
      assert.is_string(r.json.errors[1].message)
    end)

    it("answers 403 Unauthorized without the header, with a bad, expired or wrongly scoped token", function()
      local r = rotate(nil)
      assert.equal(403, r.status)
      assert.equal("Unauthorized", r.json.errors[1].code)
      assert.equal(403, rotate("Atc|nope").status)
      assert.equal(403, rotate(token(nil, "sellingpartnerapi::notifications")).status)
      local tok = token()
      s:advance(3601)
      assert.equal(403, rotate(tok).status)
      -- a Bearer header is not the SP-API's auth
      r = assert(s:request{ method = "POST", path = ROTATE, bearer = token() })
      assert.equal(403, r.status)
    end)

    it("delivers after spapi_delivery_delay; a long poll waits for it", function()
      s:settings{ spapi_delivery_delay = 0.5 }
      rotate(token())
      assert.equal(0, #receive())
      local t0 = os.time()
      local msgs = receive{ WaitTimeSeconds = 3 }
      assert.equal(1, #msgs)
      assert.truthy(os.time() - t0 <= 2)
    end)
  end)

  describe("SQS (AWS JSON 1.0, SigV4)", function()
    it("long-polls an empty queue for WaitTimeSeconds (sqs_max_wait caps it)", function()
      s:settings{ sqs_max_wait = 1 }
      local r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url, WaitTimeSeconds = 20 }))
      assert.equal(200, r.status)
      assert.equal("{}", r.body)
    end)

    it("redelivers an undeleted message after its visibility timeout, with a new handle", function()
      s:control("POST", "/sqs/send", { body = { hello = "world" } })
      local m1 = receive{ VisibilityTimeout = 30 }[1]
      assert.equal(0, #receive())
      s:advance(31)
      local m2 = receive{ MessageSystemAttributeNames = { "All" } }[1]
      assert.equal(m1.MessageId, m2.MessageId)
      assert.not_equal(m1.ReceiptHandle, m2.ReceiptHandle)
      assert.equal("2", m2.Attributes.ApproximateReceiveCount)
      -- a stale handle "succeeds" but does not delete
      local stale = s:sqs_call("DeleteMessage", { QueueUrl = app.queue_url, ReceiptHandle = m1.ReceiptHandle })
      assert.equal(200, stale.status)
      s:advance(31)
      assert.equal(1, #receive())
    end)

    it("ChangeMessageVisibility hands a message back at once, for its latest receipt handle only", function()
      s:control("POST", "/sqs/send", { body = { hello = "again" } })
      local m1 = receive{ VisibilityTimeout = 30 }[1]
      assert.equal(0, #receive())
      local r = assert(s:sqs_call("ChangeMessageVisibility",
        { QueueUrl = app.queue_url, ReceiptHandle = m1.ReceiptHandle, VisibilityTimeout = 0 }))
      assert.equal(200, r.status, r.body)
      local m2 = receive{ VisibilityTimeout = 30 }[1]
      assert.equal(m1.MessageId, m2.MessageId)
      -- the first handle is stale now
      r = assert(s:sqs_call("ChangeMessageVisibility",
        { QueueUrl = app.queue_url, ReceiptHandle = m1.ReceiptHandle, VisibilityTimeout = 0 }))
      assert.equal(400, r.status)
      assert.matches("MessageNotInflight", r.body)
    end)

    it("refuses a bad signature, unknown keys, wrong scope and no signature as SQS does", function()
      local acct = s:sqs()
      local r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url }, { secret_key = "wrong" }))
      assert.equal(403, r.status)
      assert.equal("com.amazon.coral.service#SignatureDoesNotMatch", r.json.__type)
      assert.equal("SignatureDoesNotMatch;Sender", r.headers["x-amzn-query-error"])
      r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url }, { access_key = "AKIAWRONGWRONGWRONG1" }))
      assert.equal(403, r.status)
      assert.equal("com.amazon.coral.service#InvalidClientTokenId", r.json.__type)
      r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url }, { sigv4 = "aws:amz:eu-west-1:sqs" }))
      assert.equal(403, r.status)
      r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url }, { sigv4 = "aws:amz:us-east-1:sns" }))
      assert.equal(403, r.status)
      r = assert(s:request{ method = "POST", url = acct.endpoint .. "/", body = "{}",
        headers = { "Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS.ReceiveMessage" } })
      assert.equal(403, r.status)
      assert.matches("MissingAuthenticationToken", r.json.__type)
    end)

    it("requires x-amz-target among the signed headers", function()
      local acct = s:sqs()
      local date = os.date("!%Y%m%dT%H%M%SZ")
      local r = assert(s:request{ method = "POST", url = acct.endpoint .. "/", body = "{}", headers = {
        "Content-Type: application/x-amz-json-1.0", "X-Amz-Target: AmazonSQS.ReceiveMessage",
        "X-Amz-Date: " .. date,
        "Authorization: AWS4-HMAC-SHA256 Credential=" .. acct.access_key .. "/" .. date:sub(1, 8)
          .. "/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-date, Signature=" .. string.rep("0", 64) } })
      assert.equal(400, r.status)
      assert.equal("com.amazon.coral.service#IncompleteSignatureException", r.json.__type)
    end)

    it("answers SQS errors: missing parameter, unknown queue, invalid handle, unknown operation", function()
      local r = assert(s:sqs_call("ReceiveMessage", {}))
      assert.equal(400, r.status)
      assert.equal("com.amazonaws.sqs#MissingParameter", r.json.__type)
      r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url:gsub("rotor%-sim$", "nope") }))
      assert.equal(400, r.status)
      assert.equal("com.amazonaws.sqs#QueueDoesNotExist", r.json.__type)
      assert.equal("AWS.SimpleQueueService.NonExistentQueue;Sender", r.headers["x-amzn-query-error"])
      r = assert(s:sqs_call("DeleteMessage", { QueueUrl = app.queue_url, ReceiptHandle = "bogus" }))
      assert.equal(400, r.status)
      assert.equal("com.amazonaws.sqs#ReceiptHandleIsInvalid", r.json.__type)
      r = assert(s:sqs_call("ReceiveMessage", { QueueUrl = app.queue_url, MaxNumberOfMessages = 11 }))
      assert.equal("com.amazonaws.sqs#InvalidParameterValue", r.json.__type)
      r = assert(s:sqs_call("PurgeQueue", { QueueUrl = app.queue_url }))
      assert.equal(400, r.status)
      assert.matches("UnknownOperation", r.json.__type)
    end)
  end)
end)
