-- rotor.keys: the names a user may write in a table of options, and the closest one to a typo.
-- Pure Lua with no other rotor module: rotor.ngx uses it in nginx's own Lua VM.
--   keys.suggest(name, candidates) -> the closest candidate | nil
--   keys.unknown_key(t, names, what, prefix) -> "PREFIXKEY: unknown WHAT; did you mean ...?" | nil
--   keys.sorted(t) -> the keys of t, sorted (the names a schema table takes)
local _M = {}

function _M.sorted(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function distance(a, b)
  local la, lb = #a, #b
  local prev = {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    local cur = { [0] = i }
    for j = 1, lb do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[lb]
end

--- The candidate closest to name (nil when none is close).
function _M.suggest(name, candidates)
  if type(name) ~= "string" then return nil end
  local best, bd
  for _, c in ipairs(candidates) do
    local a, b = name:lower(), c:lower()
    local d = distance(a, b)
    -- a prefix (max_age for max_age_days) is as good as one typo
    if #a >= 3 and (b:sub(1, #a) == a or a:sub(1, #b) == b) then d = math.min(d, 1) end
    if not bd or d < bd then best, bd = c, d end
  end
  if bd and bd <= math.max(2, math.floor(#name / 3)) then return best end
  return nil
end

--- The first key of t (in sorted order) that is not one of names, as a problem: "PREFIXKEY:
-- unknown WHAT; did you mean PREFIXNAME?" (or the names it takes). nil when every key is known.
-- For every table of options a user writes (stores, sinks, notify).
function _M.unknown_key(t, names, what, prefix)
  prefix = prefix or ""
  local known, bad = {}, {}
  for _, n in ipairs(names) do known[n] = true end
  for k in pairs(t) do
    if not known[k] then bad[#bad + 1] = tostring(k) end
  end
  if #bad == 0 then return nil end
  table.sort(bad)
  local hint = _M.suggest(bad[1], names)
  return ("%s%s: unknown %s; %s"):format(prefix, bad[1], what, hint and ("did you mean " .. prefix .. hint .. "?")
    or ("known: " .. table.concat(names, ", ")))
end

return _M
