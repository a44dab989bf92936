-- rotor.policy: when a slot is due for rotation, why, and when it next will be.
--
--   policy.due(record, { max_age_days=, before_expiry_days= }, now)
--     -> due (boolean), reason (string), info { age_days, expires_in_days, next_due, next_reason,
--        rule }
--
-- The rules, in order:
--   * an unfinished rotation, or no current secret stored: due now;
--   * an expired secret: due now;
--   * before_expiry_days (default 14): due that many days before the provider's expiry, when the
--     secret has one (Paylocity, SP-API, Spreetail pairs made with an expiry);
--   * max_age_days (default 90): due once the secret is that old. It applies to every secret with
--     no provider expiry (Genesys; Spreetail pairs without one), and to the others only when it is
--     set explicitly: a secret with an expiry is otherwise rotated ahead of that expiry alone.
-- Both are settable for a whole configuration and per slot; `false` turns a rule off.
local timefmt = require "rotor.timefmt"

local _M = {}

_M.DEFAULT_MAX_AGE_DAYS = 90
_M.DEFAULT_BEFORE_EXPIRY_DAYS = 14

local DAY = 86400
_M.MAX_DAYS = 36500 -- a hundred years: any later date is no date a rule can name

--- A rule's value: false (the rule off) or a number of days, 0 < days <= MAX_DAYS.
-- true | nil, why. For the config, the command line and rotor.due alike.
function _M.check_days(v)
  if v == false then return true end
  if type(v) ~= "number" or v ~= v or v <= 0 or v > _M.MAX_DAYS then
    return nil, ("a number of days above 0, at most %d (or false: rule off) expected"):format(_M.MAX_DAYS)
  end
  return true
end

local RULES = { "max_age_days", "before_expiry_days" }

--- Merge policies: later tables override earlier ones key by key (nil keeps, false turns off).
function _M.merge(...)
  local out = {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    if type(t) == "table" then
      for _, k in ipairs(RULES) do
        if t[k] ~= nil then out[k] = t[k] end
      end
    end
  end
  return out
end

local function rule_values(opts)
  local before, max_age = opts.before_expiry_days, opts.max_age_days
  local explicit_age = max_age ~= nil and max_age ~= false
  if before == nil then before = _M.DEFAULT_BEFORE_EXPIRY_DAYS end
  if max_age == nil then max_age = _M.DEFAULT_MAX_AGE_DAYS end
  if before == false then before = nil end
  if max_age == false then max_age = nil end
  return before, max_age, explicit_age
end

-- a rule's number of days as a person writes it: 0.00001, not 1e-05
local function days(v)
  local s = ("%.9f"):format(v):gsub("0+$", ""):gsub("%.$", "")
  return s
end

--- Is rec due? See the header for the rules.
function _M.due(rec, opts, now)
  opts = opts or {}
  if type(opts) ~= "table" then error("rotor.due: opts must be a table", 2) end
  local unknown = next(opts) ~= nil and require("rotor.keys").unknown_key(opts, RULES, "rule")
  if unknown then error("rotor.due: " .. unknown, 2) end
  for _, k in ipairs(RULES) do
    if opts[k] ~= nil then
      local ok, why = _M.check_days(opts[k])
      if not ok then error(("rotor.due: %s: %s, got %s"):format(k, why, tostring(opts[k])), 2) end
    end
  end
  now = now or timefmt.now()
  local before, max_age, explicit_age = rule_values(opts)
  local cur = rec.versions and rec.versions.current
  local info = {}
  local created_t, expires_t
  if cur then
    created_t = timefmt.parse(cur.created)
    expires_t = timefmt.parse(cur.expires)
    if created_t then info.age_days = (now - created_t) / DAY end
    if expires_t then info.expires_in_days = (expires_t - now) / DAY end
  end
  -- the candidate due times, each with its reason
  local cands = {}
  if before and expires_t then
    cands[#cands + 1] = { t = expires_t - before * DAY, rule = "before_expiry_days",
      reason = ("expires in %.1f days (before_expiry_days = %s)"):format(info.expires_in_days, days(before)) }
  end
  if max_age and created_t and (explicit_age or not expires_t) then
    cands[#cands + 1] = { t = created_t + max_age * DAY, rule = "max_age_days",
      reason = ("%.1f days old (max_age_days = %s)"):format(info.age_days, days(max_age)) }
  end
  local first
  for _, c in ipairs(cands) do
    if not first or c.t < first.t then first = c end
  end
  if first then
    info.next_due, info.next_reason, info.rule = first.t, first.rule, first.rule
  end
  if rec.rotation then
    info.next_due, info.rule = now, "unfinished"
    return true, "an unfinished rotation (" .. tostring(rec.rotation.id) .. ")", info
  end
  if not cur or not cur.secret then
    info.next_due, info.rule = now, "no_secret"
    return true, "no current secret stored", info
  end
  if expires_t and expires_t <= now then
    info.next_due, info.rule = now, "expired"
    return true, "expired", info
  end
  if first and first.t <= now then return true, first.reason, info end
  if max_age and not created_t and (explicit_age or not expires_t) then
    info.next_due, info.rule = now, "age_unknown"
    return true, "age unknown (max_age_days = " .. days(max_age) .. ")", info
  end
  if not first then return false, "no rule applies (no expiry known and max_age_days off)", info end
  return false, ("not due (next by %s on %s)"):format(first.rule, timefmt.iso(first.t):sub(1, 10)), info
end

return _M
