-- rotor's command line (the host runs `rotor script.lua` itself and hands subcommands here):
--
--   rotor status <store-dir> [--json] [--max-age-days N] [--before-expiry-days N]
--   rotor due <store-dir> [--json] [--max-age-days N] [--before-expiry-days N]
--   rotor rotate --config <file.lua> [--slot NAME]... [--dry-run] [--only-due] [--json]
--   rotor help
--
-- The config file returns { store = <store or dir>, slots = { { slot=, provider=<provider object
-- or { kind="genesys", options={...} }>, target=, strategy=, deploy=, wait=, grace= }, ... },
-- concurrency = 4, notify = ..., due = { max_age_days=, before_expiry_days= } }.
-- Exit codes: 0 success, 1 a rotation failed, 2 usage, 75 a slot was locked by another rotor
-- (and nothing else failed).
local json = require "rotor.json"
local timefmt = require "rotor.timefmt"

local _M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
_M.EXIT_LOCKED = EXIT_LOCKED

local USAGE = [[
usage: rotor <script.lua> [args]        run a rotation script
       rotor status <store-dir> [--json] [--max-age-days N] [--before-expiry-days N]
       rotor due <store-dir> [--json] [--max-age-days N] [--before-expiry-days N]
       rotor rotate --config <file.lua> [--slot NAME]... [--dry-run] [--only-due] [--json]
       rotor help
]]

local function out(s) io.stdout:write(s) end
local function err(s) io.stderr:write(s) end

-- Parse flags: spec = { ["--json"] = "bool", ["--slot"] = "multi", ["--config"] = "string", ... }
local function parse(args, first, spec)
  local o, pos = { _pos = {} }, first
  while pos <= #args do
    local a = args[pos]
    local name, inline = a:match("^(%-%-[%w%-]+)=(.*)$")
    name = name or a
    local kind = spec[name]
    if a:sub(1, 2) == "--" and not kind then return nil, "unknown option " .. a end
    if kind == "bool" then
      o[name] = true
    elseif kind then
      local v = inline
      if v == nil then
        pos = pos + 1
        v = args[pos]
      end
      if v == nil then return nil, name .. " needs a value" end
      if kind == "number" then
        v = tonumber(v)
        if not v then return nil, name .. " needs a number" end
      end
      if kind == "multi" then
        o[name] = o[name] or {}
        table.insert(o[name], v)
      else
        o[name] = v
      end
    else
      table.insert(o._pos, a)
    end
    pos = pos + 1
  end
  return o
end

local function due_opts(o, defaults)
  defaults = defaults or {}
  local d = { max_age_days = o["--max-age-days"] or defaults.max_age_days,
              before_expiry_days = o["--before-expiry-days"] or defaults.before_expiry_days }
  if d.max_age_days == nil and d.before_expiry_days == nil then d.before_expiry_days = 14 end
  return d
end

-- read_only: status, due and --dry-run create, chmod and write nothing
local function open_store(dir, read_only)
  return require("rotor.store").file(dir, { read_only = read_only or nil })
end

local function days(x)
  if x == nil then return "-" end
  return ("%.0fd"):format(x)
end

-- one status row per slot
local function rows(store, dopts)
  local rotation = require "rotor.rotation"
  local names, e = store:list()
  if not names then return nil, e end
  local list = {}
  for _, name in ipairs(names) do
    local rec, gerr = store:get(name)
    if rec then
      local due, reason, info = rotation.due(rec, dopts)
      local cur = rec.versions.current or {}
      local last = rec.last or {}
      list[#list + 1] = {
        slot = name, provider = rec.provider, client_id = cur.client_id,
        created = cur.created, expires = cur.expires,
        age_days = info.age_days, expires_in_days = info.expires_in_days,
        due = due, due_reason = reason,
        pending = rec.versions.pending ~= nil, rotation = rec.rotation and rec.rotation.id or nil,
        rotation_step = rec.rotation and rec.rotation.step or nil,
        last_outcome = last.outcome, last_step = last.step, last_time = last.time,
      }
    else
      list[#list + 1] = { slot = name, error = tostring(gerr) }
    end
  end
  return list
end

local function pad(s, n)
  s = tostring(s)
  if #s >= n then return s end
  return s .. (" "):rep(n - #s)
end

local function table_text(header, body)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = #h end
  for _, r in ipairs(body) do
    for i, c in ipairs(r) do widths[i] = math.max(widths[i], #tostring(c)) end
  end
  local lines = {}
  local function line(r)
    local cells = {}
    for i, c in ipairs(r) do cells[i] = (i == #r) and tostring(c) or pad(c, widths[i]) end
    lines[#lines + 1] = table.concat(cells, "  ")
  end
  line(header)
  for _, r in ipairs(body) do line(r) end
  return table.concat(lines, "\n") .. "\n"
end

local function cmd_status(args, only_due)
  local o, perr = parse(args, 2, { ["--json"] = "bool", ["--max-age-days"] = "number",
                                   ["--before-expiry-days"] = "number" })
  if not o or #o._pos ~= 1 then
    err("rotor " .. args[1] .. ": " .. (perr or "one store directory expected") .. "\n" .. USAGE)
    return EXIT_USAGE
  end
  local dir = o._pos[1]
  local core = require "rotor.core"
  if not core.fs_exists(dir) then
    err("rotor " .. args[1] .. ": no store at " .. dir .. "\n")
    return EXIT_FAIL
  end
  local store, serr = open_store(dir, true)
  if not store then
    err("rotor " .. args[1] .. ": " .. tostring(serr) .. "\n")
    return EXIT_FAIL
  end
  local list, lerr = rows(store, due_opts(o))
  if not list then
    err("rotor " .. args[1] .. ": " .. tostring(lerr) .. "\n")
    return EXIT_FAIL
  end
  if only_due then
    local keep = {}
    for _, r in ipairs(list) do if r.due then keep[#keep + 1] = r end end
    list = keep
  end
  if o["--json"] then
    out(json.encode(json.array(list)) .. "\n")
    return EXIT_OK
  end
  if only_due then
    for _, r in ipairs(list) do out(r.slot .. "\t" .. tostring(r.due_reason) .. "\n") end
    return EXIT_OK
  end
  local body = {}
  for _, r in ipairs(list) do
    local last = r.last_outcome or "-"
    if r.last_outcome == "failed" and r.last_step then last = "failed at " .. r.last_step end
    if r.rotation then last = last .. " (unfinished, at " .. tostring(r.rotation_step) .. ")" end
    body[#body + 1] = {
      r.slot, r.provider or "?", days(r.age_days),
      r.expires and tostring(r.expires):sub(1, 10) or "-",
      r.error and "?" or (r.due and ("yes: " .. tostring(r.due_reason)) or "no"),
      r.error or last,
    }
  end
  out(table_text({ "SLOT", "PROVIDER", "AGE", "EXPIRES", "DUE", "LAST" }, body))
  return EXIT_OK
end

-- a provider object from a config entry: an object, or { kind=, options= } / { kind=, ...options }
local function make_provider(spec)
  if type(spec) == "table" and type(spec.provider) == "string" and type(spec.verify) == "function" then
    return spec
  end
  if type(spec) ~= "table" or type(spec.kind) ~= "string" then
    return nil, "provider must be a provider object or { kind = \"genesys\", options = {...} }"
  end
  local rotor = require "rotor"
  local ctor = rotor[spec.kind]
  if type(ctor) ~= "function" then return nil, "unknown provider kind " .. spec.kind end
  local opts = spec.options
  if opts == nil then
    opts = {}
    for k, v in pairs(spec) do if k ~= "kind" then opts[k] = v end end
  end
  return ctor(opts)
end

local function load_config(path)
  local chunk, lerr = loadfile(path)
  if not chunk then return nil, lerr end
  local ok, cfg = pcall(chunk)
  if not ok then return nil, tostring(cfg) end
  if type(cfg) ~= "table" or type(cfg.slots) ~= "table" then
    return nil, path .. " must return { store = ..., slots = { ... } }"
  end
  return cfg
end

local function progress_enabled()
  local core = require "rotor.core"
  local term = os.getenv("TERM")
  return core.isatty(2) and term ~= nil and term ~= "dumb"
end

local function cmd_rotate(args)
  local o, perr = parse(args, 2, { ["--config"] = "string", ["--slot"] = "multi", ["--dry-run"] = "bool",
                                   ["--json"] = "bool", ["--only-due"] = "bool" })
  if not o or not o["--config"] or #o._pos > 0 then
    err("rotor rotate: " .. (perr or "--config <file.lua> expected") .. "\n" .. USAGE)
    return EXIT_USAGE
  end
  local cfg, cerr = load_config(o["--config"])
  if not cfg then
    err("rotor rotate: cannot load the configuration: " .. tostring(cerr) .. "\n")
    return EXIT_USAGE
  end
  local store = cfg.store
  if type(store) == "string" then
    local serr
    store, serr = open_store(store, o["--dry-run"])
    if not store then
      err("rotor rotate: " .. tostring(serr) .. "\n")
      return EXIT_FAIL
    end
  end
  if store == nil then
    err("rotor rotate: the configuration has no store\n")
    return EXIT_USAGE
  end
  local wanted
  if o["--slot"] then
    wanted = {}
    for _, s in ipairs(o["--slot"]) do wanted[s] = true end
  end
  local entries = {}
  for i, e in ipairs(cfg.slots) do
    if type(e) ~= "table" or type(e.slot) ~= "string" then
      err(("rotor rotate: slots[%d] needs a slot name\n"):format(i))
      return EXIT_USAGE
    end
    if not wanted or wanted[e.slot] then entries[#entries + 1] = e end
  end
  if wanted then
    for s in pairs(wanted) do
      local found = false
      for _, e in ipairs(entries) do if e.slot == s then found = true end end
      if not found then
        err("rotor rotate: no slot " .. s .. " in " .. o["--config"] .. "\n")
        return EXIT_USAGE
      end
    end
  end
  local rotor = require "rotor"
  local show = progress_enabled() and not o["--json"] and #entries > 1
  local done, total = 0, #entries
  local function run_one(e)
    local p, perr2 = make_provider(e.provider)
    if not p then return nil, perr2 end
    local dopts = e.due or cfg.due
    if o["--only-due"] and not o["--dry-run"] then
      local due, reason = rotor.due(e.slot, dopts, store)
      if not due then return { slot = e.slot, skipped = true, reason = reason } end
    end
    local res, rerr = rotor.rotate {
      slot = e.slot, provider = p, store = store, target = e.target, strategy = e.strategy,
      deploy = e.deploy, dry_run = o["--dry-run"] or false, wait = e.wait or cfg.wait,
      grace = e.grace, notify = e.notify or cfg.notify, audit = e.audit or cfg.audit,
      force_mint = e.force_mint,
    }
    done = done + 1
    if show then
      io.stderr:write(("\r\27[K[%d/%d] %s %s"):format(done, total, e.slot, res and "ok" or "FAILED"))
      io.stderr:flush()
    end
    return res, rerr
  end
  local results, errs = rotor.parallel(entries, run_one, { concurrency = cfg.concurrency or 4 })
  if show then io.stderr:write("\r\27[K") end
  local failed, locked = 0, 0
  local report = {}
  for i, e in ipairs(entries) do
    local res, e2 = results[i], errs[i]
    local item = { slot = e.slot }
    if res then
      item.ok = true
      item.skipped = res.skipped
      item.reason = res.reason
      item.dry_run = res.dry_run
      item.client_id, item.expires, item.old_expires = res.client_id, res.expires, res.old_expires
      item.rotation = res.rotation
      item.warnings = res.warnings
    else
      item.ok = false
      local kind = type(e2) == "table" and e2.kind or "error"
      item.error = { kind = kind, message = tostring(e2) }
      if kind == "locked" then locked = locked + 1 else failed = failed + 1 end
    end
    report[#report + 1] = item
  end
  if o["--json"] then
    out(json.encode(json.array(report)) .. "\n")
  else
    for _, r in ipairs(report) do
      if r.ok and r.skipped then
        out(("skipped  %s: not due (%s)\n"):format(r.slot, tostring(r.reason)))
      elseif r.ok and r.dry_run then
        out(("dry run  %s: nothing changed\n"):format(r.slot))
      elseif r.ok then
        out(("rotated  %s: client %s, expires %s, old expires %s\n"):format(r.slot, tostring(r.client_id),
          tostring(r.expires or "-"), tostring(r.old_expires or "-")))
        for _, w in ipairs(r.warnings or {}) do out("  warning: " .. tostring(w) .. "\n") end
      else
        err(("%s  %s: %s\n"):format(r.error.kind == "locked" and "LOCKED " or "FAILED ", r.slot, r.error.message))
      end
    end
  end
  if failed > 0 then return EXIT_FAIL end
  if locked > 0 then return EXIT_LOCKED end
  return EXIT_OK
end

--- cli.main(args) -> exit code. args[1] is the subcommand.
function _M.main(args)
  if type(args) ~= "table" then error("cli.main: an argument array expected", 2) end
  local cmd = args[1]
  if cmd == nil or cmd == "help" or cmd == "-h" or cmd == "--help" then
    out(USAGE)
    return cmd == nil and EXIT_USAGE or EXIT_OK
  elseif cmd == "status" then
    return cmd_status(args, false)
  elseif cmd == "due" then
    return cmd_status(args, true)
  elseif cmd == "rotate" then
    return cmd_rotate(args)
  end
  err("rotor: unknown command " .. tostring(cmd) .. "\n" .. USAGE)
  return EXIT_USAGE
end

_M.now = timefmt.now

return _M
