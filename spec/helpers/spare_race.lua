-- Three group commits of one file, each waiting for the last (./build/rotor
-- spec/helpers/spare_race.lua DIR), run by spec/durable_spec.lua with spec/helpers/flock_delay.c
-- preloaded. Prints what the file holds at the end.
local core = require "rotor.core"
local sched = require "rotor.sched"
local d = assert(core.fs_dir(arg[1], true))
sched.parallel({ 1 }, function()
  for n = 1, 3 do assert(sched.durable("atomic", d, "x.json", "record " .. n, 384)) end
end)
io.write(core.fs_read(arg[1] .. "/x.json") or "(no file)", "\n")
