-- Rotate every Genesys OAuth client whose name matches ROTOR_GENESYS_PATTERN (a Lua pattern),
-- concurrently with rotor.parallel, one slot per client; prints a report, exits 1 on any failure.
local rotor, env = require "rotor", os.getenv
local pattern = assert(env("ROTOR_GENESYS_PATTERN"), "set ROTOR_GENESYS_PATTERN (a Lua pattern for client names)")
local gc = assert(rotor.genesys { region = env("ROTOR_GENESYS_REGION"), base_url = env("ROTOR_GENESYS_BASE_URL"),
  token_url = env("ROTOR_GENESYS_TOKEN_URL"), cainfo = env("ROTOR_CAINFO"),
  client_id = env("ROTOR_GENESYS_CLIENT_ID"), client_secret = env("ROTOR_GENESYS_CLIENT_SECRET") })
local store, todo, failed = assert(rotor.store.file(env("ROTOR_STORE") or "./secrets")), {}, 0
for _, c in ipairs(assert(gc:get_oauth_clients()).entities) do
  if c.id ~= gc.client_id and tostring(c.name):match(pattern) then todo[#todo + 1] = c end
end
local results, errs = rotor.parallel(todo, function(c)
  return rotor.rotate { slot = "genesys/" .. c.id, provider = gc, store = store, target = { client_id = c.id } }
end, { concurrency = tonumber(env("ROTOR_CONCURRENCY") or "8") })
for i, c in ipairs(todo) do
  if not results[i] then failed = failed + 1 end
  print(("%-32s %s"):format(c.name, results[i] and "rotated" or ("FAILED: " .. tostring(errs[i]))))
end
print(("%d clients matched, %d failed"):format(#todo, failed))
os.exit(failed > 0 and 1 or 0)
