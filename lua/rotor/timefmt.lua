-- Timestamps as rotor stores them: ISO-8601 UTC strings; parsing of the providers' forms.
local _M = {}

local core = require "rotor.core"

--- Seconds since the epoch (wall clock).
function _M.now()
  return core.wallclock()
end

--- ISO-8601 UTC ("2024-06-21T12:34:56Z") of epoch seconds t (default now). The text of the last
-- second asked for is kept: a rotation stamps a dozen entries within one second, and os.date
-- (strftime, the time zone) costs more than the rest of an entry.
local last_second, last_text
function _M.iso(t)
  local second = math.floor(t or _M.now())
  if second ~= last_second then
    last_second, last_text = second, os.date("!%Y-%m-%dT%H:%M:%SZ", second)
  end
  return last_text
end

-- days from the civil date to 1970-01-01 (proleptic Gregorian), no dependence on the local zone
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local fl = math.floor
  local era = fl((y >= 0 and y or y - 399) / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = fl((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + fl(yoe / 4) - fl(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
_M.days_from_civil = days_from_civil

-- the numbers taken as times: epoch seconds up to 1e11 (the year 5138), milliseconds above it up
-- to 1e14; anything else (negative, larger, NaN) is no time: os.date cannot write it either
local MAX_SECONDS, MAX_MS = 1e11, 1e14

--- Epoch seconds of an ISO-8601 date or date-time (zone Z, +hh:mm or none = UTC), of a number
-- (epoch seconds, or milliseconds when it is too large to be seconds), or nil when unparseable.
function _M.parse(v)
  if type(v) == "number" then
    if v >= 0 and v <= MAX_SECONDS then return v end
    if v > MAX_SECONDS and v <= MAX_MS then return v / 1000 end
    return nil
  end
  if type(v) ~= "string" then return nil end
  local y, mo, d, rest = v:match("^%s*(%d%d%d%d)-(%d%d)-(%d%d)(.*)$")
  if not y then
    -- US style "MM/DD/YYYY[ hh:mm:ss]" (some Paylocity tools)
    local m2, d2, y2, rest2 = v:match("^%s*(%d%d?)/(%d%d?)/(%d%d%d%d)(.*)$")
    if not m2 then return nil end
    y, mo, d, rest = y2, m2, d2, rest2
  end
  local h, mi, s, frac = 0, 0, 0, nil
  local zone
  local hh, mm, tail = rest:match("^[T ](%d%d):(%d%d)(.*)$")
  if hh then
    h, mi = tonumber(hh), tonumber(mm)
    local ss, tail2 = tail:match("^:(%d%d)(.*)$")
    if ss then s, tail = tonumber(ss), tail2 end
    local f, tail3 = tail:match("^[%.,](%d+)(.*)$")
    if f then frac, tail = tonumber("0." .. f), tail3 end
    zone = tail
  else
    zone = rest
  end
  local offset = 0
  zone = zone:gsub("%s+$", "")
  if zone ~= "" and zone ~= "Z" and zone ~= "z" then
    local sign, zh, zm = zone:match("^([%+%-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(zh) * 60 + tonumber(zm)) * 60
    if sign == "-" then offset = -offset end
  end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or s > 60 then return nil end
  local t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
  if frac then t = t + frac end
  return t
end

--- v when it is a time parse reads (a string free of control bytes), else nil: a provider's
-- expiry, kept in a record and printed as it came.
function _M.checked(v)
  if _M.parse(v) == nil or (type(v) == "string" and v:find("[%c\127]")) then return nil end
  return v
end

return _M
