-- Notifications after a rotation: a Slack-compatible webhook ({"text": ...}) or a function.
--   notify = "https://hooks.slack.com/services/..."                 -- success and failure
--   notify = { webhook = url, on = "failure" | "success" | "always", cainfo=, timeout=, proxy= }
--   notify = function(event) ... end     -- event = { ok=, slot=, provider=, rotation=, step=, text= }
-- The text names the slot, provider, rotation id and the error (never a secret). Returns true |
-- nil, err; a failed notification never fails the rotation (rotation journals it).
local json = require "rotor.json"
local errors = require "rotor.errors"

local _M = {}

-- the fields of a notify table, and the check of rotor.client's (as for a provider's options) each
-- value takes, where there is one (fn and on are checked below)
local FIELD_NAMES = { "webhook", "fn", "on", "timeout", "connect_timeout", "cainfo", "proxy", "user_agent", "http2" }
local CHECKS = { webhook = "url", timeout = "seconds", connect_timeout = "seconds", cainfo = "cainfo", proxy = "string",
                 user_agent = "string", http2 = "boolean" }

--- A webhook URL as rotor shows it: its scheme and host, the rest (the credential) left out.
function _M.shown(url)
  local head = tostring(url):match("^(%a[%w+.-]*://[^/?#]*)")
  return head and (head .. "/...") or "(not shown)"
end

--- Check a notify spec where it is given (a config file, rotor.rotate): raises an error naming the
-- field and what it takes, so a typo or a wrong value never surfaces when a rotation has ended.
function _M.check(spec, level)
  level = (level or 1) + 1
  if spec == nil or type(spec) == "function" then return spec end
  local v = require("rotor.client").validators
  if type(spec) == "string" then
    local ok, why = v.url(spec)
    -- shown without its path: a webhook URL's path is its credential (Slack's /services/...)
    if not ok then error("notify: the webhook URL " .. _M.shown(spec) .. ": " .. why, level) end
    return spec
  end
  -- a misspelt field first: { webhok = ... } has no webhook because of it
  local unknown = type(spec) == "table" and require("rotor.keys").unknown_key(spec, FIELD_NAMES, "field", "notify.")
  if unknown then error(unknown, level) end
  if type(spec) ~= "table" or (type(spec.webhook) ~= "string" and type(spec.fn) ~= "function") then
    error("notify: a webhook URL, a function or { webhook = url, on = ... } expected", level)
  end
  for k, val in pairs(spec) do
    local check = CHECKS[k]
    if check then
      local ok, why = v[check](val)
      if ok == nil then error(("notify.%s: %s"):format(k, why), level) end
    end
  end
  if spec.fn ~= nil and type(spec.fn) ~= "function" then error("notify.fn: a function expected", level) end
  if spec.on ~= nil and spec.on ~= "failure" and spec.on ~= "success" and spec.on ~= "always" then
    error("notify.on: \"failure\", \"success\" or \"always\" expected", level)
  end
  return spec
end

--- The message text for an event.
function _M.text(event)
  if event.ok then
    return ("rotor: rotated %s (%s), rotation %s%s"):format(event.slot, event.provider or "?",
      event.rotation or "?", event.detail and (" — " .. event.detail) or "")
  end
  return ("rotor: rotation of %s (%s) FAILED at %s: %s"):format(event.slot, event.provider or "?",
    event.step or "?", tostring(event.error or "unknown error"))
end

--- Send event per spec. Returns true (also when nothing was due to be sent) | nil, err.
function _M.send(spec, event)
  if spec == nil then return true end
  event.text = event.text or _M.text(event)
  if type(spec) == "function" then
    local ok, r, e = pcall(spec, event)
    if not ok then return nil, errors.new { kind = "protocol", message = "notify hook raised: " .. tostring(r) } end
    if r == nil and e ~= nil then return nil, e end
    return true
  end
  if type(spec) == "string" then spec = { webhook = spec } end
  local on = spec.on or "always"
  if (on == "failure" and event.ok) or (on == "success" and not event.ok) then return true end
  if spec.fn then return _M.send(spec.fn, event) end
  local http = require "rotor.http"
  local res, err = http.request(http.with_transport({
    url = spec.webhook, method = "POST",
    headers = { { "Content-Type", "application/json" } },
    body = json.encode { text = event.text },
    timeout = spec.timeout or 15,
  }, spec), { provider = "notify", op = "webhook", retries = 2, max_wait = 30 })
  if not res then return nil, err end
  if type(res.status) == "number" and (res.status < 200 or res.status > 299) then
    return nil, errors.new { kind = "http", status = res.status, provider = "notify", op = "webhook",
                             message = "the webhook refused the notification" }
  end
  return true
end

return _M
