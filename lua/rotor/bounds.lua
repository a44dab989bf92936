-- rotor.bounds: the numeric options rotor takes from its users, with the least and the most each
-- takes. A value beyond them is a typo rather than a wish (wait = 1e9 would hold a slot's lock for
-- ever, verify_attempts = 0 would fail every rotation as "refused", rotor.ngx's check_interval =
-- 1e9 would keep a gateway on a secret rotated away). Pure Lua (no rotor.core), so that rotor.ngx
-- loads it in nginx as rotor.rotate, config files and the providers do.
--
--   bounds.check(bounds.ROTATE, "wait", v)  -> true | nil, why (naming the bounds)
local _M = {}

-- rotor.rotate's numeric options (a config file's slot and top-level keys, and SP-API's receive)
_M.ROTATE = {
  wait = { 0, 86400, what = "seconds" },                  -- SP-API: a day at most
  visibility = { 1, 43200, what = "seconds" },            -- SQS's own bounds
  retry_refused = { 0, 86400, what = "seconds" },         -- SP-API: a day at most
  grace = { 0, 366 * 86400, what = "seconds" },           -- a year
  verify_attempts = { 1, 100, whole = true, what = "attempts" },
  verify_delay = { 0, 3600, what = "seconds" },
  write_retries = { 0, 1000, whole = true, what = "retries" },
  write_retry_delay = { 0, 3600, what = "seconds" },
  mint_budget = { 1, 86400, what = "seconds" },
}

-- rotor.ngx.new's: how early a token is refreshed (a margin beyond the token's life would fetch
-- one per request), how stale the slot's secret may get (after a rotation that killed the old one,
-- the gateway fails until it reads the new one), how long a token request may hold the others,
-- how long a failure answers for everyone, and the waiters' sleep step (0 would spin the worker)
_M.NGX = {
  margin = { 0, 600, what = "seconds" },
  check_interval = { 0, 60, what = "seconds" },
  lock_timeout = { 1, 3600, what = "seconds" },
  fail_hold = { 0, 60, what = "seconds" },
  poll = { 0.001, 1, what = "seconds" },
}

-- the times a provider's options, a notification and a store command take, whatever their name:
-- a transfer's or a command's time limit (what libcurl is given; rotor's core takes at most a
-- day), and a span that may be none (a bound on retry waits, a token's margin: a Retry-After of days
-- under max_wait = 1e9 would hold a run for as long)
_M.TIME_LIMIT = { 0, 86400, above = true, what = "seconds" }
_M.SPAN = { 0, 86400, what = "seconds" }

--- within(b, v) -> true | nil, why: v within the bounds b ({ least, most, whole=, above=, what= };
-- above: more than least, not least itself).
function _M.within(b, v)
  local ok = type(v) == "number" and v == v and (b.above and v > b[1] or not b.above and v >= b[1]) and v <= b[2]
    and (not b.whole or v == math.floor(v))
  if ok then return true end
  local range = b.above and ("above %s, at most %s"):format(b[1], b[2]) or ("from %s to %s"):format(b[1], b[2])
  return nil, ("%s %s %s expected, got %s"):format(b.whole and "a whole number of" or "a number of",
    b.what, range, type(v) == "number" and ("%.17g"):format(v) or type(v))
end

--- check(set, name, v) -> true | nil, why: v within set[name]'s bounds.
function _M.check(set, name, v)
  return _M.within(set[name], v)
end

return _M
