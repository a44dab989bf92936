-- Group commits of one file, records FIRST to LAST, each waiting for the last (./build/rotor
-- spec/helpers/spare_race.lua DIR FIRST LAST), run by spec/helpers/spare_race.sh with
-- spec/helpers/spare_hold.c preloaded. Prints what the file holds at the end.
local core = require "rotor.core"
local sched = require "rotor.sched"
local d = assert(core.fs_dir(arg[1], true))
sched.parallel({ 1 }, function()
  for n = tonumber(arg[2]), tonumber(arg[3]) do assert(sched.durable("atomic", d, "x.json", "record " .. n, 384)) end
end)
io.write(core.fs_read(arg[1] .. "/x.json") or "(no file)", "\n")
