-- rotorsim.sqs: a simulated Amazon SQS endpoint, AWS JSON 1.0 protocol (ReceiveMessage with long polling,
-- DeleteMessage, GetQueueUrl, SendMessage), every request SigV4-verified. As AWS documents them
-- (lua/rotor/providers/spapi.lua).
local util = require "rotorsim.util"
local store = require "rotorsim.store"

local _M = {}

local S = store.S
local JSON10 = "application/x-amz-json-1.0"

-- the simulated account's keys (made on first use, random; the secret key is a recorded secret)
local function account()
  local acct = store.get("sqs:account")
  if acct then return acct end
  return store.locked(function()
    local a = store.get("sqs:account")
    if a then return a end
    a = { access_key = "AKIA" .. util.random_upper(16),
          secret_key = util.b64(util.random_bytes(30)) }
    store.put("sqs:account", a)
    store.record_secret("sqs", a.access_key, a.secret_key, "seed")
    return a
  end)
end

local function base_url()
  local host = ngx.var.http_host or ngx.var.host or ("127.0.0.1:" .. ngx.var.server_port)
  return "https://" .. host .. "/sqs"
end

function _M.queue_url(name)
  return base_url() .. "/" .. S.sqs_account .. "/" .. name
end

function _M.account_info(queue)
  local a = account()
  return {
    endpoint = base_url(), region = S.sqs_region, account = S.sqs_account,
    access_key = a.access_key, secret_key = a.secret_key,
    queue_url = _M.queue_url(queue or S.sqs_queue), queue = queue or S.sqs_queue,
  }
end

function _M.create_queue(name)
  if not store.get("sqs:queue:" .. name) then
    store.put("sqs:queue:" .. name, { name = name, created = store.now() })
  end
end

-- put a message on a queue (created if missing); visible after delay seconds (simulated clock)
function _M.enqueue(queue, body, delay)
  _M.create_queue(queue)
  local id = util.uuid()
  local seq = store.sim:incr("sqs:seq", 1, 0)
  local msg = { id = id, seq = seq, queue = queue, body = body, md5 = ngx.md5(body),
    sent = store.now(), visible_at = store.now() + (delay or 0), receives = 0 }
  store.put("sqs:msg:" .. queue .. ":" .. id, msg)
  return msg
end

-- control API: POST /_sim/sqs/send {queue?, body (string or JSON value), delay?}
function _M.send_message(queue, body, delay)
  if body == nil then return nil, "body is required" end
  if type(body) ~= "string" then body = util.encode(body) end
  local msg = _M.enqueue(queue or S.sqs_queue, body, delay)
  return { MessageId = msg.id, MD5OfMessageBody = msg.md5, queue_url = _M.queue_url(msg.queue) }
end

-- errors -------------------------------------------------------------------------------------
local function aws_error(status, typ, code, message)
  return status, { __type = typ, message = message },
    { ["Content-Type"] = JSON10, ["x-amzn-query-error"] = code .. ";Sender",
      ["x-amzn-RequestId"] = util.uuid() }
end

local function coral(status, name, message)
  return aws_error(status, "com.amazon.coral.service#" .. name, name, message)
end

local function sqs_error(status, name, code, message)
  return aws_error(status, "com.amazonaws.sqs#" .. name, code, message)
end

-- SigV4 --------------------------------------------------------------------------------------
local function aws_encode(s)
  return (s:gsub("[^A-Za-z0-9%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function canonical_query(args)
  if not args or args == "" then return "" end
  local pairs_ = {}
  for part in args:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=?(.*)$")
    k = aws_encode(ngx.unescape_uri(k))
    v = aws_encode(ngx.unescape_uri(v))
    pairs_[#pairs_ + 1] = { k, v }
  end
  table.sort(pairs_, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
  for i, p in ipairs(pairs_) do pairs_[i] = p[1] .. "=" .. p[2] end
  return table.concat(pairs_, "&")
end

local function trim(v)
  if type(v) == "table" then
    for i, x in ipairs(v) do v[i] = trim(x) end
    return table.concat(v, ",")
  end
  return (tostring(v):gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " "))
end

local function verify(body)
  local auth = ngx.var.http_authorization
  if not auth or auth == "" then
    return coral(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
  end
  local akid, date, region, service, signed, sig = auth:match(
    "^AWS4%-HMAC%-SHA256%s+Credential=([^/]+)/(%d+)/([^/]+)/([^/]+)/aws4_request,%s*"
    .. "SignedHeaders=([^,]+),%s*Signature=(%x+)%s*$")
  if not akid then
    return coral(400, "IncompleteSignatureException",
      "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters.")
  end
  local acct = account()
  if akid ~= acct.access_key then
    return coral(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
  end
  local headers = ngx.req.get_headers(200)
  local amzdate = headers["x-amz-date"]
  if type(amzdate) ~= "string" or not amzdate:match("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$") then
    return coral(400, "IncompleteSignatureException", "Authorization requires an X-Amz-Date header.")
  end
  if amzdate:sub(1, 8) ~= date then
    return coral(403, "SignatureDoesNotMatch",
      "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP.")
  end
  if region ~= S.sqs_region then
    return coral(403, "SignatureDoesNotMatch", "Credential should be scoped to a valid region, not '" .. region .. "'.")
  end
  if service ~= "sqs" then
    return coral(403, "SignatureDoesNotMatch", "Credential should be scoped to correct service: 'sqs'.")
  end
  local t = util.parse_iso(amzdate:sub(1, 4) .. "-" .. amzdate:sub(5, 6) .. "-" .. amzdate:sub(7, 8) .. "T"
    .. amzdate:sub(10, 11) .. ":" .. amzdate:sub(12, 13) .. ":" .. amzdate:sub(14, 15) .. "Z")
  if math.abs(t - ngx.now()) > S.sqs_max_clock_skew then
    return coral(403, "InvalidSignatureException",
      "Signature expired: " .. amzdate .. " is now outside the allowed window.")
  end
  local names, seen = {}, {}
  for n in signed:gmatch("[^;]+") do names[#names + 1] = n; seen[n] = true end
  if not seen.host then return coral(400, "IncompleteSignatureException", "'Host' must be a signed header.") end
  if not seen["x-amz-date"] then
    return coral(400, "IncompleteSignatureException", "'X-Amz-Date' must be a signed header.")
  end
  if S.sqs_require_signed_target and not seen["x-amz-target"] then
    return coral(400, "IncompleteSignatureException", "'X-Amz-Target' must be a signed header.")
  end
  local ch = {}
  for i, n in ipairs(names) do
    local v = headers[n]
    if v == nil then
      return coral(403, "SignatureDoesNotMatch", "Signed header '" .. n .. "' is missing from the request.")
    end
    ch[i] = n .. ":" .. trim(v) .. "\n"
  end
  local path = (ngx.var.request_uri or "/"):match("^[^?]*")
  if path == "" then path = "/" end
  local creq = table.concat({ ngx.req.get_method(), path, canonical_query(ngx.var.args), table.concat(ch),
    signed, util.sha256_hex(body) }, "\n")
  local scope = date .. "/" .. region .. "/" .. service .. "/aws4_request"
  local sts = "AWS4-HMAC-SHA256\n" .. amzdate .. "\n" .. scope .. "\n" .. util.sha256_hex(creq)
  local k = util.hmac_sha256("AWS4" .. acct.secret_key, date)
  k = util.hmac_sha256(k, region)
  k = util.hmac_sha256(k, service)
  k = util.hmac_sha256(k, "aws4_request")
  local want = util.tohex(util.hmac_sha256(k, sts))
  if want ~= sig:lower() then
    return coral(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
      .. "you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation "
      .. "for details.")
  end
  return true
end

-- operations ---------------------------------------------------------------------------------
local function queue_from_url(url)
  if type(url) ~= "string" or url == "" then return nil end
  local acct, name = url:match("/(%d+)/([%w%-_%.]+)/?$")
  if acct ~= S.sqs_account then return nil end
  if not store.get("sqs:queue:" .. name) then return nil end
  return name
end

local function no_queue()
  return sqs_error(400, "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue",
    "The specified queue does not exist.")
end

local function missing(p)
  return sqs_error(400, "MissingParameter", "MissingParameter", "The request must contain the parameter " .. p .. ".")
end

local function invalid(msg)
  return sqs_error(400, "InvalidParameterValue", "InvalidParameterValue", msg)
end

local function int_param(b, name, lo, hi, default)
  local v = b[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= math.floor(v) or v < lo or v > hi then
    return nil, invalid("Value " .. tostring(v) .. " for parameter " .. name .. " is invalid. Must be between "
      .. lo .. " and " .. hi .. ".")
  end
  return v
end

local function take_visible(queue, max, vt)
  return store.locked(function()
    local now = store.now()
    local cand = {}
    for k, m in pairs(store.scan("sqs:msg:" .. queue .. ":")) do
      if m.visible_at <= now then cand[#cand + 1] = { k, m } end
    end
    table.sort(cand, function(a, b) return a[2].seq < b[2].seq end)
    local out = {}
    for i = 1, math.min(max, #cand) do
      local k, m = cand[i][1], cand[i][2]
      m.receives = m.receives + 1
      m.visible_at = now + vt
      m.receipt = ngx.encode_base64(queue .. "\n" .. m.id .. "\n" .. util.random_hex(12))
      if not m.first_receive then m.first_receive = now end
      store.put(k, m)
      out[#out + 1] = m
    end
    return out
  end)
end

local function wants(list, name)
  if type(list) ~= "table" then return false end
  for _, n in ipairs(list) do
    if n == "All" or n == name then return true end
  end
  return false
end

local function receive(b)
  if b.QueueUrl == nil then return missing("QueueUrl") end
  local queue = queue_from_url(b.QueueUrl)
  if not queue then return no_queue() end
  local max, e1, e2, e3 = int_param(b, "MaxNumberOfMessages", 1, 10, 1)
  if not max then return e1, e2, e3 end
  local wait
  wait, e1, e2, e3 = int_param(b, "WaitTimeSeconds", 0, 20, 0)
  if not wait then return e1, e2, e3 end
  local vt
  vt, e1, e2, e3 = int_param(b, "VisibilityTimeout", 0, 43200, S.sqs_visibility_timeout)
  if not vt then return e1, e2, e3 end
  local deadline = ngx.now() + math.min(wait, S.sqs_max_wait)
  local msgs
  while true do
    msgs = take_visible(queue, max, vt)
    if #msgs > 0 or ngx.now() >= deadline then break end
    ngx.sleep(S.sqs_poll_interval)
    ngx.update_time()
  end
  local attrs = b.MessageSystemAttributeNames or b.AttributeNames
  local out = {}
  for i, m in ipairs(msgs) do
    local e = { MessageId = m.id, ReceiptHandle = m.receipt, MD5OfBody = m.md5, Body = m.body }
    if type(attrs) == "table" and #attrs > 0 then
      local a = {}
      if wants(attrs, "ApproximateReceiveCount") then a.ApproximateReceiveCount = tostring(m.receives) end
      if wants(attrs, "SentTimestamp") then a.SentTimestamp = tostring(math.floor(m.sent * 1000)) end
      if wants(attrs, "ApproximateFirstReceiveTimestamp") then
        a.ApproximateFirstReceiveTimestamp = tostring(math.floor(m.first_receive * 1000))
      end
      if wants(attrs, "SenderId") then a.SenderId = "AIDASIMULATEDSPAPI" end
      e.Attributes = a
    end
    out[i] = e
  end
  if #out == 0 then return 200, "{}", { ["Content-Type"] = JSON10 } end
  return 200, { Messages = out }, { ["Content-Type"] = JSON10 }
end

-- the store key of the message a receipt handle names, or nil and SQS's error for a bad handle
local function message_key(queue, handle)
  local dec = type(handle) == "string" and ngx.decode_base64(handle)
  local q, id = (dec or ""):match("^([^\n]+)\n([^\n]+)\n%x+$")
  if not q or q ~= queue then
    return nil, sqs_error(400, "ReceiptHandleIsInvalid", "ReceiptHandleIsInvalid",
      'The input receipt handle "' .. tostring(handle) .. '" is not a valid receipt handle.')
  end
  return "sqs:msg:" .. queue .. ":" .. id
end

local function delete(b)
  if b.QueueUrl == nil then return missing("QueueUrl") end
  if b.ReceiptHandle == nil then return missing("ReceiptHandle") end
  local queue = queue_from_url(b.QueueUrl)
  if not queue then return no_queue() end
  local k, e1, e2, e3 = message_key(queue, b.ReceiptHandle)
  if not k then return e1, e2, e3 end
  store.locked(function()
    local m = store.get(k)
    if m and (m.receipt == b.ReceiptHandle or S.sqs_stale_receipt_deletes) then store.delete(k) end
  end)
  return 200, "", { ["Content-Type"] = JSON10, ["x-amzn-RequestId"] = util.uuid() }
end

-- A message's visibility set to VisibilityTimeout seconds from now: nil, or SQS's error (status,
-- body, headers). Only for a message in flight, with its latest receipt handle.
local function set_visibility(queue, e)
  if e.ReceiptHandle == nil then return missing("ReceiptHandle") end
  local vt, e1, e2, e3 = int_param(e, "VisibilityTimeout", 0, 43200, nil)
  if vt == nil and e1 == nil then return missing("VisibilityTimeout") end
  if not vt then return e1, e2, e3 end
  local k
  k, e1, e2, e3 = message_key(queue, e.ReceiptHandle)
  if not k then return e1, e2, e3 end
  local ok = store.locked(function()
    local m = store.get(k)
    local now = store.now()
    if not m or m.receipt ~= e.ReceiptHandle or m.visible_at <= now then return false end
    m.visible_at = now + vt
    store.put(k, m)
    return true
  end)
  if not ok then
    return sqs_error(400, "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight",
      "The message referred to isn't in flight.")
  end
end

-- ChangeMessageVisibility: the message is visible again after VisibilityTimeout seconds (0: at
-- once).
local function change_visibility(b)
  if b.QueueUrl == nil then return missing("QueueUrl") end
  local queue = queue_from_url(b.QueueUrl)
  if not queue then return no_queue() end
  local st, body, h = set_visibility(queue, b)
  if st then return st, body, h end
  return 200, "", { ["Content-Type"] = JSON10, ["x-amzn-RequestId"] = util.uuid() }
end

-- ChangeMessageVisibilityBatch: Entries (1 to 10, distinct Ids) of { Id, ReceiptHandle,
-- VisibilityTimeout }; each entry Successful or Failed on its own.
local function change_visibility_batch(b)
  if b.QueueUrl == nil then return missing("QueueUrl") end
  local queue = queue_from_url(b.QueueUrl)
  if not queue then return no_queue() end
  local entries = b.Entries
  if type(entries) ~= "table" or #entries == 0 then
    return sqs_error(400, "EmptyBatchRequest", "AWS.SimpleQueueService.EmptyBatchRequest",
      "There should be at least one ChangeMessageVisibilityBatchRequestEntry in the request.")
  end
  if #entries > 10 then
    return sqs_error(400, "TooManyEntriesInBatchRequest", "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
      "Maximum number of entries per request are 10. You have sent " .. #entries .. ".")
  end
  local ids, ok_list, failed = {}, {}, {}
  for _, e in ipairs(entries) do
    if type(e) ~= "table" or type(e.Id) ~= "string" or e.Id == "" then return missing("Entries.Id") end
    if ids[e.Id] then
      return sqs_error(400, "BatchEntryIdsNotDistinct", "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
        "Id " .. e.Id .. " repeated.")
    end
    ids[e.Id] = true
    local st, body = set_visibility(queue, e)
    if st then
      failed[#failed + 1] = { Id = e.Id, SenderFault = true, Code = body.__type:match("#(.+)$") or "Error",
                              Message = body.message }
    else
      ok_list[#ok_list + 1] = { Id = e.Id }
    end
  end
  local out = {}
  if #ok_list > 0 then out.Successful = ok_list end
  if #failed > 0 then out.Failed = failed end
  return 200, out, { ["Content-Type"] = JSON10, ["x-amzn-RequestId"] = util.uuid() }
end

local function get_queue_url(b)
  if b.QueueName == nil then return missing("QueueName") end
  if not store.get("sqs:queue:" .. tostring(b.QueueName)) then return no_queue() end
  return 200, { QueueUrl = _M.queue_url(b.QueueName) }, { ["Content-Type"] = JSON10 }
end

local function send(b)
  if b.QueueUrl == nil then return missing("QueueUrl") end
  local queue = queue_from_url(b.QueueUrl)
  if not queue then return no_queue() end
  if type(b.MessageBody) ~= "string" then return missing("MessageBody") end
  local m = _M.enqueue(queue, b.MessageBody, b.DelaySeconds)
  return 200, { MessageId = m.id, MD5OfMessageBody = m.md5 }, { ["Content-Type"] = JSON10 }
end

local OPS = {
  ["AmazonSQS.ReceiveMessage"] = receive,
  ["AmazonSQS.DeleteMessage"] = delete,
  ["AmazonSQS.ChangeMessageVisibility"] = change_visibility,
  ["AmazonSQS.ChangeMessageVisibilityBatch"] = change_visibility_batch,
  ["AmazonSQS.GetQueueUrl"] = get_queue_url,
  ["AmazonSQS.SendMessage"] = send,
}

function _M.handle(_, method)
  local body = util.body()
  if method ~= "POST" then
    return coral(405, "UnknownOperationException", "The AWS JSON 1.0 protocol takes POST requests.")
  end
  if S.sqs_verify_signature then
    local ok, b, h = verify(body)
    if ok ~= true then return ok, b, h end
  end
  local target = ngx.var.http_x_amz_target
  local op = target and OPS[target]
  if not op then return coral(400, "UnknownOperationException", "Unknown operation " .. tostring(target)) end
  store.logd:incr("count:" .. target, 1, 0)   -- GET /_sim/counters: "AmazonSQS.ReceiveMessage" = n
  if not util.content_type():find(JSON10, 1, true) then
    return coral(400, "SerializationException", "Content-Type must be " .. JSON10)
  end
  local b = util.decode(body)
  if type(b) ~= "table" then return coral(400, "SerializationException", "The request body is not valid JSON.") end
  return op(b)
end

return _M
