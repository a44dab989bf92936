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

return _M
