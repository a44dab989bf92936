-- Error values: every runtime failure in rotor is `nil, err` with err made here.
local _M = {}

local KINDS = {
  http = true, network = true, timeout = true, tls = true, auth = true,
  rate_limited = true, protocol = true, config = true, ambiguous = true,
  store = true, locked = true, interrupted = true,
  internal = true, -- a Lua error inside a run (a bug, or a value of an unexpected shape)
  fenced = true,   -- a lease-based lock was lost: this rotor may no longer write the slot
}
_M.KINDS = KINDS

local mt = {}
mt.__index = mt

function mt.__tostring(e)
  local parts = { "rotor:" }
  if e.provider then parts[#parts + 1] = e.provider end
  if e.op then parts[#parts + 1] = e.op .. ":" elseif e.provider then
    parts[#parts] = parts[#parts] .. ":"
  end
  local head = e.kind
  if e.status then head = head .. " " .. tostring(e.status) end
  parts[#parts + 1] = head .. ":"
  parts[#parts + 1] = e.message or "error"
  if e.request_id then parts[#parts + 1] = "(request id " .. tostring(e.request_id) .. ")" end
  if e.retry_after then parts[#parts + 1] = "(retry after " .. tostring(e.retry_after) .. " s)" end
  return table.concat(parts, " ")
end

--- Make an error. fields: kind (required), message, status, provider, op, retry_after,
-- request_id, detail (the provider's own error text, already free of secrets).
function _M.new(fields)
  if type(fields) ~= "table" then error("errors.new: a table expected", 2) end
  if not KINDS[fields.kind] then error("errors.new: unknown kind " .. tostring(fields.kind), 2) end
  local e = {}
  for k, v in pairs(fields) do e[k] = v end
  return setmetatable(e, mt)
end

function _M.is(v)
  return type(v) == "table" and getmetatable(v) == mt
end

--- Copy an error, adding or replacing fields (e.g. provider and op on a lower-level error).
function _M.with(err, fields)
  local e = {}
  if type(err) == "table" then
    for k, v in pairs(err) do e[k] = v end
  else
    e.kind, e.message = "protocol", tostring(err)
  end
  for k, v in pairs(fields) do e[k] = v end
  return setmetatable(e, mt)
end

--- The provider's own error text from a decoded error body, whatever the provider's shape:
--   RFC 6749 {error|errorCode, error_description|description|message}; Genesys ErrorBody {message, code};
--   RFC 7807 {title, errors = {Field = {...}}}; SP-API ErrorList {errors = {{code, message,
--   details}}}; SQS {__type, message|Message}; Paylocity {{field, message}, ...}.
-- Returns a string of at most DETAIL_MAX bytes, or nil. Redacted (core.redact) before it is cut:
-- cut first, a secret across the cut kept the part before it (38 of 42 characters of a client
-- secret reached an error and the audit trail), and no redaction finds part of a secret.
local DETAIL_MAX = 400
_M.DETAIL_MAX = DETAIL_MAX

local function str(v) return type(v) == "string" and v ~= "" and v or nil end

--- Text a provider sent, made safe to print: every control byte (an escape sequence a terminal
-- would obey, a carriage return that hides a line) becomes \xHH. For all of a provider's text
-- that reaches a message: its error detail, a body excerpt, a request id.
local function printable(s)
  return (s:gsub("[%c\127]", function(c) return ("\\x%02X"):format(c:byte()) end))
end
_M.printable = printable

local function list(items, fmt)
  local parts = {}
  for _, e in ipairs(items) do
    if type(e) == "table" then
      local p = fmt(e)
      if p then parts[#parts + 1] = p end
    end
  end
  return #parts > 0 and table.concat(parts, "; ") or nil
end

-- s with every live secret redacted (core.redact), where the core is loaded; redacted before any
-- cut, which would leave part of a secret that no redaction finds
local function redacted(s)
  local ok, core = pcall(require, "rotor.core")
  if ok and core.redact then return core.redact(s) end
  return s
end

function _M.detail(body)
  if type(body) ~= "table" then return nil end
  local d
  if str(body.error) or str(body.errorCode) then
    d = str(body.error) or body.errorCode
    local desc = str(body.error_description) or str(body.description) or str(body.message)
    if desc then d = d .. ": " .. desc end
  elseif str(body.title) then
    d = body.title
    if type(body.errors) == "table" and body.errors[1] == nil then
      local parts = {}
      for k, v in pairs(body.errors) do
        if type(k) == "string" then
          parts[#parts + 1] = k .. ": " .. (type(v) == "table" and table.concat(v, " ") or tostring(v))
        end
      end
      table.sort(parts)
      if #parts > 0 then d = d .. " " .. table.concat(parts, "; ") end
    end
  elseif str(body.__type) then
    d = body.__type:match("#(.+)$") or body.__type
    local m = str(body.message) or str(body.Message)
    if m then d = d .. ": " .. m end
  elseif str(body.message) then
    d = body.message
    if str(body.code) then d = body.code .. ": " .. d end
  elseif type(body.errors) == "table" and type(body.errors[1]) == "table" then
    d = list(body.errors, function(e)
      local s = tostring(e.code or e.field or "error") .. ": " .. tostring(e.message or "")
      if str(e.details) then s = s .. " (" .. e.details .. ")" end
      return s
    end)
  elseif type(body[1]) == "table" then
    d = list(body, function(e)
      if not (e.message or e.field) then return nil end
      return (str(e.field) and e.field .. ": " or "") .. tostring(e.message or "error")
    end)
  end
  if type(d) ~= "string" then return nil end
  d = redacted(d)
  if #d > DETAIL_MAX then d = d:sub(1, DETAIL_MAX) .. "..." end
  return printable(d)
end

-- the response headers providers put a request id in, in the order they are looked for
local REQUEST_ID_HEADERS = { "x-amzn-requestid", "inin-correlation-id", "x-request-id", "x-amz-request-id",
                             "x-correlation-id" }

--- The provider's request id from response headers (lower-case names), or nil.
function _M.request_id(headers)
  if type(headers) ~= "table" then return nil end
  for _, h in ipairs(REQUEST_ID_HEADERS) do
    if type(headers[h]) == "string" then return printable(headers[h]) end
  end
  return nil
end

--- A provider's error body as it came (for bodies no parser understood): whitespace folded,
-- every live secret redacted, at most max bytes (200).
function _M.excerpt(body, max)
  if type(body) ~= "string" or not body:find("%S") then return nil end
  local s = redacted((body:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")))
  max = max or 200
  if #s > max then s = s:sub(1, max) .. "..." end
  return printable(s)
end

return _M
