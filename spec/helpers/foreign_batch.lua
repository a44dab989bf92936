-- For http_spec: task 2's request is in flight while task 1 runs a batch from a coroutine that is
-- none of the loop's tasks (that batch ends later). Prints the status each task got. The
-- simulator: ROTOR_SIM_URL, ROTOR_SIM_CA; its faults delay the two paths (set by the spec).
local sched = require "rotor.sched"
local url, ca = os.getenv("ROTOR_SIM_URL"), os.getenv("ROTOR_SIM_CA")
local out = {}
sched.parallel({ 1, 2 }, function(k)
  if k == 2 then
    out[2] = sched.request { url = url .. "/genesys/login/oauth/token", method = "POST",
      body = "grant_type=client_credentials", cainfo = ca }.status
    return
  end
  sched.sleep(0.05)
  local co = coroutine.create(function()
    return sched.parallel({ 1 }, function()
      return sched.request { url = url .. "/genesys/api/v2/oauth/clients", cainfo = ca }.status
    end)[1]
  end)
  local _, status = coroutine.resume(co)
  out[1] = status
end)
print("DONE " .. tostring(out[1]) .. " " .. tostring(out[2]))
