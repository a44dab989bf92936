-- rotor's command line. The host (csrc/main.c) runs `rotor script.lua` and `rotor -e CODE` itself
-- and hands everything else here: the subcommands, their help, the usage text and the version.
-- doc/CLI.md describes every command, the JSON it prints and the metrics.
--
-- Exit codes: 0 success, 1 a rotation failed (or `doctor`/`status` found something a person must
-- look at), 2 usage or configuration errors (nothing was run), 75 a slot was locked by another
-- rotor (and nothing else failed), 130 stopped on SIGINT/SIGTERM.
local json = require "rotor.json"
local timefmt = require "rotor.timefmt"
local policy = require "rotor.policy"
local config = require "rotor.config"
local record_mod = require "rotor.record"
local errors = require "rotor.errors"

local _M = {}

local EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
_M.EXIT_LOCKED = EXIT_LOCKED
_M.JSON_SCHEMA = 1

local function out(s) io.stdout:write(s) end
local function err(s) io.stderr:write(s) end

-- The commands, in the order `rotor help` lists them. usage: the synopsis lines; help: the rest.
local POLICY_FLAGS = "[--max-age-days N] [--before-expiry-days N]"
local COMMANDS = {
  { name = "status", summary = "every slot of a store: age, expiry, why due and when next, last outcome",
    usage = { "rotor status STORE|--config FILE [--format text|json|openmetrics] [--json] " .. POLICY_FLAGS },
    help = [[
STORE is a file store's directory; with --config FILE the config's store and due policies are used.
--format json prints the schema of doc/CLI.md (--json is the same); --format openmetrics prints
Prometheus/OpenMetrics text for node_exporter's textfile collector. Exits 1 when a slot's record
cannot be read (run `rotor doctor`), else 0.]] },
  { name = "due", summary = "only the slots due for rotation, with the reason",
    usage = { "rotor due STORE|--config FILE [--json] " .. POLICY_FLAGS },
    help = [[
Prints "SLOT<TAB>REASON" per due slot (or JSON). A slot whose record cannot be read is listed as
due with its error, and the exit code is then 1.]] },
  { name = "rotate", summary = "rotate the slots of a config file",
    usage = { "rotor rotate --config FILE [--slot NAME]... [--only-due] [--dry-run] [--json]" },
    help = [[
The whole config is checked first; any problem is listed (file, slot, key) and rotor exits 2 having
created, written and sent nothing. A new rotation first gets a token with the credential it would
use: when that fails, nothing is started or journalled. --only-due rotates only the slots
due by their policy; --dry-run prints each slot's plan and changes nothing. On SIGINT/SIGTERM no
further slot starts, running ones stop between two steps, and rotor exits 130: rerun the same
command to finish what was interrupted.]] },
  { name = "doctor", summary = "what needs a person: unreadable slots, stuck rotations, held locks, orphans",
    usage = { "rotor doctor STORE|--config FILE [--json]" },
    help = [[
Every finding comes with the command that resolves it. Exits 1 when something needs a person, 0
when the store is healthy.]] },
  { name = "help", summary = "this text, or one command's", usage = { "rotor help [COMMAND]" } },
  { name = "version", summary = "rotor's, Lua's and libcurl's versions", usage = { "rotor version" } },
  { name = "config-reference", summary = "the configuration reference (doc/CONFIG.md)",
    usage = { "rotor config-reference" } },
}
local BY_NAME = {}
for _, c in ipairs(COMMANDS) do BY_NAME[c.name] = c end

--- The usage text: the one source for `rotor`, `rotor help` and every usage error.
function _M.usage()
  local lines = {
    "usage: rotor SCRIPT.lua [ARGS...]   run a rotation script (exit 1 on error, 130 on a signal)",
    "       rotor -e CODE                run a chunk of Lua",
  }
  for _, c in ipairs(COMMANDS) do
    lines[#lines + 1] = ("       rotor %-22s %s"):format(c.name, c.summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "`rotor help COMMAND` or `rotor COMMAND --help` for a command's options; doc/CLI.md."
  lines[#lines + 1] = "Exit codes: 0 ok, 1 failed, 2 usage or config error, 75 locked, 130 interrupted."
  return table.concat(lines, "\n") .. "\n"
end

local function command_help(c)
  local s = "usage: " .. table.concat(c.usage, "\n       ") .. "\n\n" .. c.summary .. ".\n"
  if c.help then s = s .. c.help .. "\n" end
  return s
end

-- a word as a shell reads it back (quoted only when it must be)
local function q(s)
  if tostring(s):match("^[%w_./%%%-]+$") then return tostring(s) end
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function usage_error(cmd, msg)
  local c = BY_NAME[cmd]
  err("rotor " .. cmd .. ": " .. msg .. "\n" .. (c and ("usage: " .. table.concat(c.usage, "\n       ")
    .. "\n(`rotor help " .. cmd .. "` for more)\n") or _M.usage()))
  return EXIT_USAGE
end

-- A message as the command line prints it: no "rotor: " prefix (the caller adds its own), no
-- internal file paths, one line with no control byte a terminal would obey (a provider's text, a
-- client id or name, reaches messages and warnings).
local function clean(e)
  local s = tostring(e)
  s = s:gsub("^rotor: ", "")
  -- rotor's own source locations (not the user's config or script: those say where to look)
  s = s:gsub("[^%s:]*lua/rotor/[%w_/]+%.lua:%d+: ", "")
  return errors.printable(s)
end
_M.clean = clean

------------------------------------------------------------------------------------------------
-- Flags

-- spec = { ["--json"] = "bool", ["--slot"] = "multi", ["--config"] = "string", ... }
local function parse(args, first, spec)
  local o, pos = { _pos = {} }, first
  while pos <= #args do
    local a = args[pos]
    local name, inline = a:match("^(%-%-[%w%-]+)=(.*)$")
    name = name or a
    local kind = spec[name]
    if a:sub(1, 1) == "-" and #a > 1 and not kind then
      local names = {}
      for k in pairs(spec) do names[#names + 1] = k end
      table.sort(names)
      local hint = config.suggest(name, names)
      return nil, "unknown option " .. a .. (hint and ("; did you mean " .. hint .. "?") or "")
    end
    if kind == "bool" then
      o[name] = true
    elseif kind then
      local v = inline
      if v == nil then
        pos = pos + 1
        v = args[pos]
      end
      if v == nil then return nil, name .. " needs a value" end
      if kind == "days" then
        local days = tonumber(v)
        if not (days and policy.check_days(days)) then
          return nil, ("%s needs a number of days above 0, at most %d; got %s"):format(name, policy.MAX_DAYS, v)
        end
        v = days
      elseif type(kind) == "table" then
        if not kind[v] then
          local names = {}
          for k in pairs(kind) do names[#names + 1] = k end
          table.sort(names)
          return nil, ("%s: %s is not one of %s"):format(name, v, table.concat(names, ", "))
        end
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

------------------------------------------------------------------------------------------------
-- Store and config

local function store_name(store)
  if type(store) == "table" and store.kind == "file" and type(store.dir) == "string" then
    return "file store " .. config.absolute(store.dir)
  end
  if type(store) == "table" and type(store.describe) == "function" then return tostring(store:describe()) end
  return tostring(store)
end
_M.store_name = store_name

-- a config file's problems, one line each, and the count: EXIT_USAGE
local function config_problems(cmd, problems, path, outcome)
  for _, p in ipairs(problems) do err(config.format(p) .. "\n") end
  err(("rotor %s: %d problem(s) in %s; %s\n"):format(cmd, #problems, path, outcome))
  return EXIT_USAGE
end

-- The problems of a config file in what a read-only command takes from it: its store, its due
-- policies and its slots' names (every problem at the top, and a slot's due and slot keys), as
-- rotate finds them. What only a rotation needs (a provider's options and credentials, a target,
-- the environment variables they come from) is left to rotate: a monitoring host need not hold it.
local function read_problems(cfg, info)
  local found = {}
  for _, p in ipairs(config.validate(cfg, info)) do
    local key = type(p.key) == "string" and p.key or ""
    local mine = p.slot == nil and not key:find("^os%.getenv%(") or key:find("^due") or key:find("^slot$")
    if mine then found[#found + 1] = p end
  end
  return found
end

-- the store and due policies of a read-only command: STORE, or --config FILE
local function target_store(cmd, o)
  local cfg, info
  if o["--config"] then
    if #o._pos > 0 then return nil, usage_error(cmd, "a store directory or --config, not both") end
    local lerr
    cfg, info = config.load(o["--config"])
    if not cfg then
      err("rotor " .. cmd .. ": " .. clean(info) .. "\n")
      return nil, EXIT_USAGE
    end
    local problems = read_problems(cfg, info)
    if #problems > 0 then return nil, config_problems(cmd, problems, o["--config"], "nothing was read") end
    -- (a store path a shell would expand, ~ or $NAME, is one of those problems)
    local store
    if type(cfg.store) == "string" or (type(cfg.store) == "table" and cfg.store.kind == "file") then
      local dir = require("rotor.store").resolve(type(cfg.store) == "string" and cfg.store or cfg.store.path, info.dir)
      if type(dir) ~= "string" or not require("rotor.core").fs_exists(dir) then
        err("rotor " .. cmd .. ": no store at " .. tostring(dir) .. " (the store of " .. o["--config"] .. ")\n")
        return nil, EXIT_FAIL
      end
    end
    store, lerr = require("rotor.store").open(cfg.store, info.dir, { read_only = true })
    if not store then
      err("rotor " .. cmd .. ": " .. clean(lerr) .. "\n")
      return nil, EXIT_FAIL
    end
    return store, cfg
  end
  if #o._pos ~= 1 then return nil, usage_error(cmd, "one store directory (or --config FILE) expected") end
  local dir = o._pos[1]
  if dir == "" then
    return nil, usage_error(cmd, "a store directory expected, got an empty argument (is the variable that names it "
      .. "set?)")
  end
  local exists, kind = require("rotor.core").fs_exists(dir)
  if not exists then
    err("rotor " .. cmd .. ": no store at " .. dir .. "\n")
    return nil, EXIT_FAIL
  end
  if kind == "file" then
    return nil, usage_error(cmd, ("%s is a file, not a store directory; for the store of a config file: rotor %s "
      .. "--config %s"):format(dir, cmd, q(dir)))
  end
  local store, serr = require("rotor.store").file(dir, { read_only = true })
  if not store then
    err("rotor " .. cmd .. ": " .. clean(serr) .. "\n")
    return nil, EXIT_FAIL
  end
  return store, nil
end

-- the due policy of each slot: flags over the slot's own over the config's
local function policy_of(o, cfg)
  local flags = { max_age_days = o["--max-age-days"], before_expiry_days = o["--before-expiry-days"] }
  local per = {}
  if cfg and type(cfg.slots) == "table" then
    for _, e in ipairs(cfg.slots) do
      if type(e) == "table" and type(e.slot) == "string" then per[e.slot] = e.due end
    end
  end
  return function(slot)
    return policy.merge(cfg and cfg.due, per[slot], flags)
  end
end

------------------------------------------------------------------------------------------------
-- status, due

local function iso_or_null(t)
  if t == nil then return json.null end
  return timefmt.iso(math.floor(t))
end

local function round2(x)
  if x == nil then return json.null end
  local r = math.floor(x * 100 + 0.5) / 100
  return math.tointeger and math.tointeger(r) or r
end

local function nz(v)
  if v == nil then return json.null end
  return v
end

-- last success time and failures since it, from the record
local function history(rec)
  local last_ok, failures = nil, 0
  local j = rec.journal or {}
  for i = #j, 1, -1 do
    local e = j[i]
    -- journal entries are objects; their fields are taken as text only when they are text
    if e.step == "rotation" and e.outcome == "done" then
      last_ok = type(e.time) == "string" and e.time or nil
      break
    end
    if e.outcome == "failed" or e.outcome == "ambiguous" then failures = failures + 1 end
  end
  if not last_ok and rec.last and rec.last.outcome == "ok" then last_ok = rec.last.time end
  return last_ok, failures
end

local function interrupted_rotation(rec)
  local j = rec.journal or {}
  local e = j[#j]
  return rec.rotation ~= nil and e ~= nil and e.outcome == "interrupted"
end

-- one row per slot, every field present (json.null when unknown)
local function rows(store, policy_for)
  local names, e = store:list()
  if not names then return nil, e end
  local now = timefmt.now()
  local list = {}
  for _, name in ipairs(names) do
    local ok, rec, gerr = pcall(record_mod.read, store, name)
    if not ok then rec, gerr = nil, rec end
    local row = {
      slot = name, provider = json.null, client_id = json.null, created = json.null, expires = json.null,
      age_days = json.null, expires_in_days = json.null, due = true, due_reason = json.null,
      next_due = json.null, next_due_rule = json.null, state = "corrupted", rotation = json.null,
      rotation_step = json.null, rotation_started = json.null, pending_age_seconds = json.null,
      last_outcome = json.null, last_step = json.null, last_time = json.null, last_success = json.null,
      failures = 0, error = json.null,
    }
    if rec then
      local due, reason, info = policy.due(rec, policy_for(name), now)
      local cur = rec.versions and rec.versions.current or {}
      local last = rec.last or {}
      local last_ok, failures = history(rec)
      row.provider, row.client_id = nz(rec.provider), nz(cur.client_id)
      row.created, row.expires = nz(cur.created), nz(cur.expires)
      row.age_days, row.expires_in_days = round2(info.age_days), round2(info.expires_in_days)
      row.due, row.due_reason = due and true or false, reason
      row.next_due, row.next_due_rule = iso_or_null(info.next_due), nz(info.next_reason or info.rule)
      row.last_outcome, row.last_step, row.last_time = nz(last.outcome), nz(last.step), nz(last.time)
      row.last_success, row.failures = nz(last_ok), failures
      if rec.rotation then
        row.rotation, row.rotation_step = nz(rec.rotation.id), nz(rec.rotation.step)
        row.rotation_started = nz(rec.rotation.started)
        local st = timefmt.parse(rec.rotation.started)
        if st then row.pending_age_seconds = math.max(0, math.floor(now - st)) end
        row.state = interrupted_rotation(rec) and "interrupted" or "unfinished"
      elseif last.outcome == "failed" then
        row.state = "failed"
      elseif due then
        row.state = "due"
      else
        row.state = "ok"
      end
    else
      row.error = clean(gerr)
      row.due_reason = "the slot's record cannot be read (rotor doctor)"
    end
    list[#list + 1] = row
  end
  return list
end
_M.rows = rows

local function pad(s, n)
  s = tostring(s)
  if #s >= n then return s end
  return s .. (" "):rep(n - #s)
end

local function table_text(header, body)
  local widths = {}
  for i, h in ipairs(header) do widths[i] = #h end
  for _, r in ipairs(body) do
    -- a cell may hold what a provider sent (a client id, an error's text): printed as clean text
    for i, c in ipairs(r) do
      r[i] = clean(c)
      widths[i] = math.max(widths[i], #r[i])
    end
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

local function v(x) return x ~= json.null and x ~= nil end

local function days(x)
  if not v(x) then return "-" end
  return ("%.0fd"):format(x)
end

-- OpenMetrics text: the metric names are documented in doc/CLI.md
local METRICS = {
  { "rotor_slot_info", "gauge", "1 per slot; labels slot, provider, state" },
  { "rotor_secret_expiry_timestamp_seconds", "gauge",
    "when the current secret expires (Unix time), when the provider says" },
  { "rotor_last_success_timestamp_seconds", "gauge", "when the slot's last rotation finished (Unix time)" },
  { "rotor_next_due_timestamp_seconds", "gauge", "when the slot is next due by its policy (Unix time)" },
  { "rotor_slot_due", "gauge", "1 when the slot is due for rotation now" },
  { "rotor_rotation_pending_age_seconds", "gauge", "age of the slot's unfinished rotation (0 when none)" },
  { "rotor_rotation_failures", "gauge", "failed steps journalled since the slot's last successful rotation" },
  { "rotor_slot_corrupted", "gauge", "1 when the slot's record cannot be read" },
}
_M.METRICS = METRICS

local function label(s)
  return (tostring(s):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

local function openmetrics(list)
  local lines = {}
  local values = {}
  for _, m in ipairs(METRICS) do values[m[1]] = {} end
  for _, r in ipairs(list) do
    local base = ('slot="%s",provider="%s"'):format(label(r.slot), label(v(r.provider) and r.provider or "unknown"))
    local function add(name, x, extra)
      if x ~= nil then
        local t = values[name]
        t[#t + 1] = ("%s{%s%s} %s"):format(name, base, extra or "", x)
      end
    end
    local function ts(s)
      local t = v(s) and timefmt.parse(s)
      return t and ("%d"):format(math.floor(t)) or nil
    end
    add("rotor_slot_info", "1", (',state="%s"'):format(label(r.state)))
    add("rotor_secret_expiry_timestamp_seconds", ts(r.expires))
    add("rotor_last_success_timestamp_seconds", ts(r.last_success))
    add("rotor_next_due_timestamp_seconds", ts(r.next_due))
    add("rotor_slot_due", r.due and "1" or "0")
    add("rotor_rotation_pending_age_seconds", ("%d"):format(v(r.pending_age_seconds) and r.pending_age_seconds or 0))
    add("rotor_rotation_failures", ("%d"):format(r.failures or 0))
    add("rotor_slot_corrupted", r.state == "corrupted" and "1" or "0")
  end
  for _, m in ipairs(METRICS) do
    lines[#lines + 1] = ("# HELP %s %s"):format(m[1], m[3])
    lines[#lines + 1] = ("# TYPE %s %s"):format(m[1], m[2])
    for _, l in ipairs(values[m[1]]) do lines[#lines + 1] = l end
  end
  lines[#lines + 1] = "# EOF"
  return table.concat(lines, "\n") .. "\n"
end

local FORMATS = { text = true, json = true, openmetrics = true }

local function cmd_status(cmd, args)
  local only_due = cmd == "due"
  local o, perr = parse(args, 2, { ["--json"] = "bool", ["--max-age-days"] = "days",
    ["--before-expiry-days"] = "days", ["--config"] = "string",
    ["--format"] = (not only_due) and FORMATS or nil })
  if not o then return usage_error(cmd, perr) end
  if o["--json"] and o["--format"] and o["--format"] ~= "json" then
    return usage_error(cmd, "--json and --format " .. o["--format"] .. ": give one of them")
  end
  local store, cfg = target_store(cmd, o)
  if not store then return cfg end
  local list, lerr = rows(store, policy_of(o, cfg))
  if not list then
    err("rotor " .. cmd .. ": " .. clean(lerr) .. "\n")
    return EXIT_FAIL
  end
  local corrupted = 0
  for _, r in ipairs(list) do if r.state == "corrupted" then corrupted = corrupted + 1 end end
  local rc = corrupted > 0 and EXIT_FAIL or EXIT_OK
  if only_due then
    local keep = {}
    for _, r in ipairs(list) do if r.due then keep[#keep + 1] = r end end
    list = keep
  end
  local format = o["--format"] or (o["--json"] and "json") or "text"
  if format == "json" then
    out(json.encode { schema = _M.JSON_SCHEMA, store = store_name(store), generated = timefmt.iso(),
                      slots = json.array(list) } .. "\n")
  elseif format == "openmetrics" then
    out(openmetrics(list))
  elseif only_due then
    for _, r in ipairs(list) do out(r.slot .. "\t" .. clean(v(r.error) and r.error or r.due_reason) .. "\n") end
  else
    local body = {}
    for _, r in ipairs(list) do
      local last = v(r.last_outcome) and r.last_outcome or "-"
      if r.last_outcome == "failed" and v(r.last_step) then last = "failed at " .. r.last_step end
      if v(r.rotation) then
        -- the last finished rotation, then the one since (that reads as one story, in order)
        local now_ = ("%s at %s"):format(r.state, tostring(r.rotation_step))
        last = v(r.last_outcome) and (last .. ", then " .. now_) or now_
      end
      local due
      if r.state == "corrupted" then due = "?"
      elseif r.due then due = "yes: " .. tostring(r.due_reason)
      else due = "no, next " .. (v(r.next_due) and r.next_due:sub(1, 10) or "never") ..
        (v(r.next_due_rule) and (" (" .. r.next_due_rule .. ")") or "") end
      body[#body + 1] = {
        r.slot, v(r.provider) and r.provider or "?", days(r.age_days),
        v(r.expires) and tostring(r.expires):sub(1, 10) or "-", due,
        v(r.error) and ("CORRUPTED: " .. r.error .. (tostring(r.error):find("rotor doctor", 1, true) and ""
          or " (rotor doctor)")) or last,
      }
    end
    out("store: " .. store_name(store) .. "\n")
    out(table_text({ "SLOT", "PROVIDER", "AGE", "EXPIRES", "DUE", "LAST" }, body))
  end
  if corrupted > 0 and format ~= "openmetrics" then
    err(("rotor %s: %d slot(s) cannot be read; `rotor doctor` says what to do\n"):format(cmd, corrupted))
  end
  return rc
end

------------------------------------------------------------------------------------------------
-- doctor

local function orphans(rec)
  -- rotations whose mint intent never became a stored secret and that are no longer active
  local found, by = {}, {}
  local order = {}
  for _, e in ipairs(rec.journal or {}) do
    local r = e.rotation
    if type(r) == "string" then
      local t = by[r]
      if not t then
        t = { id = r }
        by[r] = t
        order[#order + 1] = r
      end
      if e.step == "rotation" and e.outcome == "start" and type(e.note) == "string" then t.strategy = e.note end
      if e.outcome == "intent" then t.intent = true end
      if e.step == "create" and e.outcome == "ok" then t.stored = true end
      if e.outcome == "ambiguous" then t.ambiguous = true end
      -- the slot's search by name found it, or ended
      if e.outcome == "orphan_deleted" or e.outcome == "search_ended" then t.resolved = true end
    end
  end
  -- a name the slot's runs search for: listed as unconfirmed_orphan instead
  for _, u in ipairs(type(rec.unfound) == "table" and rec.unfound or {}) do
    if by[u.rotation] then by[u.rotation].resolved = true end
  end
  local active = rec.rotation and rec.rotation.id
  for _, r in ipairs(order) do
    local t = by[r]
    if t.intent and not t.stored and t.ambiguous and not t.resolved and r ~= active
       and (t.strategy == "new_pair" or t.strategy == "new_client") then
      found[#found + 1] = t
    end
  end
  return found
end

local function cmd_doctor(args)
  local o, perr = parse(args, 2, { ["--json"] = "bool", ["--config"] = "string" })
  if not o then return usage_error("doctor", perr) end
  local store, cfg = target_store("doctor", o)
  if not store then return cfg end
  local rerun = o["--config"] and ("rotor rotate --config " .. q(o["--config"])) or "rotor rotate --config FILE"
  local findings = {}
  local function add(f) findings[#findings + 1] = f end
  local names, lerr = store:list()
  if not names then
    err("rotor doctor: " .. clean(lerr) .. "\n")
    return EXIT_FAIL
  end
  -- files (or keys) that name no slot: ignored by every command, named here, escaped
  for _, stray in ipairs(type(lerr) == "table" and lerr or {}) do
    local shown = errors.printable(stray)
    local command
    if store.kind ~= "file" or type(store.dir) ~= "string" then
      command = "remove it from the store by hand, once you know whose it is"
    elseif shown ~= stray then
      command = "move it out by hand (its name holds control characters, shown as \\xHH)"
    else
      command = "mv -- " .. q(store.dir .. "/" .. stray) .. " SOMEWHERE_ELSE"
    end
    add { slot = shown, problem = "stray", needs_person = false, command = command,
      message = "not a slot rotor wrote (the name spells no slot): every command ignores it; move it out of "
        .. "the store" }
  end
  local now = timefmt.now()
  local held = {}   -- record.client_key(provider, id) -> { [slot] = role } (record.note_holders)
  -- the store's command that moves a slot's record aside, when it has one
  local function aside_of(name)
    return type(store.aside_command) == "function" and store:aside_command(name, q) or nil
  end
  for _, name in ipairs(names) do
    local ok, rec, gerr = pcall(record_mod.read, store, name)
    if not ok then rec, gerr = nil, rec end
    if rec then record_mod.note_holders(held, name, rec) end
    -- a lock that a rotor holds: it is rotating the slot now (its rotation is not a stopped one)
    local running = false
    local who = type(store.lock_holder) == "function" and store:lock_holder(name)
    if type(who) == "table" then
      running = true
      local pid, host = who.pid, who.host
      add { slot = name, problem = "locked", needs_person = false,
        message = ("a rotor process%s holds the slot's lock: a rotation is running now"):format(
          pid and (" (pid " .. tostring(pid) .. (host and (" on " .. tostring(host)) or "") .. ")") or ""),
        command = pid and ("kill -TERM " .. tostring(pid) .. "   # " .. (host and ("on " .. tostring(host) .. ", ")
          or "") .. "only if that process is stuck; it stops between two steps") or "wait for it" }
    end
    if not rec and errors.is(gerr) and gerr.kind == "config" then
      -- this host cannot read a record that is whole (sealed under a key it is not given): moving
      -- it aside and rotating anew, as for a corrupted one, would kill the secret the rest of the
      -- fleet reads and store the new one under the wrong key
      add { slot = name, problem = "unreadable_here", needs_person = true,
        message = "this host cannot read the slot's record, which is not damaged: " .. clean(gerr)
          .. ". Do not move it aside or rotate it from this host",
        command = "give this host the sealing key named above (key_file / key_env, or old_key_files / "
          .. "old_key_envs for an older one), as on the hosts that read it; then rotor doctor again" }
    elseif not rec then
      local aside = aside_of(name)
      -- the store's own advice (which points at doctor) gives way to doctor's, with its command
      local why = clean(gerr):gsub("; nothing was changed%..*$", "")
      add { slot = name, problem = "corrupted", needs_person = true,
        message = "the slot's record cannot be read: " .. why
          .. ". Move it aside, restore it from a backup or rotate the slot anew from the provider's state",
        command = (aside and (aside .. " && ") or "") .. rerun .. " --slot " .. q(name) }
    else
      if rec.rotation and not running then
        local st = timefmt.parse(rec.rotation.started)
        local age = st and math.floor(now - st) or nil
        -- its pending secret refused at the last verify: a rerun verifies it again, and only a person
        -- can say that it will never work
        local last
        for _, e in ipairs(rec.journal or {}) do
          if e.rotation == rec.rotation.id then last = e end
        end
        local refused = rec.versions and rec.versions.pending and last and last.step == "verify"
          and last.outcome == "failed" and type(last.note) == "string"
          and last.note:find("was refused when verified", 1, true) ~= nil
        -- the rotation's last journal entry: a run that stopped for a person says there what to do
        -- (a Paylocity code of unknown state, an SP-API request with no message)
        local said = last and type(last.note) == "string" and last.note ~= ""
          and ("; its last entry: %s %s: %s"):format(tostring(last.step), tostring(last.outcome),
            errors.excerpt(last.note, 400)) or ""
        add { slot = name, problem = "unfinished_rotation", needs_person = true,
          message = ("rotation %s stopped at step %s%s%s%s"):format(tostring(rec.rotation.id),
            tostring(rec.rotation.step), age and (", started " .. age .. " s ago") or "",
            rec.versions and rec.versions.pending and ("; a new secret is stored as pending" .. (refused
              and ", and the provider refused it at the last verify" or "")) or "", said),
          command = rerun .. " --slot " .. q(name) .. (refused and ("   # if it is refused again and the provider "
            .. "will never honour it (ask them), set drop_pending = true in the slot's config for one run: it is "
            .. "dropped and a new secret minted") or "") }
      end
      for _, t in ipairs(orphans(rec)) do
        add { slot = name, problem = "orphan", needs_person = true,
          message = ("rotation %s (%s) may have minted a credential that was never stored; the provider "
            .. "may hold it, named with %s"):format(t.id, tostring(t.strategy), t.id),
          command = ("at the provider, look for a credential whose name holds %s; delete it unless a slot stores it "
            .. "(rotor status lists the slots' client ids)"):format(t.id) }
      end
      -- credentials a recovery did not find (record.unfound): searched for again by the slot's runs
      for _, u in ipairs(type(rec.unfound) == "table" and rec.unfound or {}) do
        local rotation = require "rotor.rotation"
        local until_t = rotation.unfound_until(u) or (now + rotation.UNFOUND_DAYS * 86400)
        add { slot = name, problem = "unconfirmed_orphan", needs_person = false,
          message = ("the create request of rotation %s had an unknown outcome (or its secret was dropped), and "
            .. "the provider then listed no %s named %s, so it was taken as not created. If the listing lagged, it "
            .. "exists, live and stored nowhere: %s"):format(tostring(u.rotation), tostring(u.what or "credential"),
            u.name, until_t > now and ("the slot's runs (strategy %s) search for that name until %s, each as it "
              .. "starts a rotation, and delete what no slot holds"):format(u.strategy,
              timefmt.iso(until_t):sub(1, 10))
            or "the search's window has passed: the slot's next run ends it"),
          command = ("nothing, or sooner: at the provider, delete the %s named %s that no slot stores (rotor status "
            .. "lists the slots' client ids)"):format(tostring(u.what or "credential"), u.name) }
      end
    end
  end
  -- one credential, one slot: two slots holding one client (two configs, or a slot no config names
  -- any more) kill each other's secrets
  local sorted = require("rotor.keys").sorted
  for _, key in ipairs(sorted(held)) do
    local slots = sorted(held[key])
    if #slots > 1 then
      local list = {}
      for i, slot in ipairs(slots) do list[i] = ("%s (%s)"):format(slot, held[key][slot]) end
      local last = slots[#slots]
      local aside = aside_of(last)
      add { slot = last, problem = "shared_credential", needs_person = true,
        message = ("%s is held by %d slots: %s. Rotating it in one kills the secret the others stored (or their "
          .. "clean-up deletes it)"):format(key, #slots, table.concat(list, ", ")),
        command = "keep one slot per credential: remove all but one of these slots from their configs, then move "
          .. "each removed slot's record aside" .. (aside and (" (" .. aside .. ")") or "") }
    end
  end
  local need = 0
  for _, f in ipairs(findings) do if f.needs_person then need = need + 1 end end
  if o["--json"] then
    out(json.encode { schema = _M.JSON_SCHEMA, store = store_name(store), healthy = need == 0,
                      findings = json.array(findings) } .. "\n")
  else
    out("store: " .. store_name(store) .. "\n")
    if #findings == 0 then out("healthy: " .. #names .. " slot(s), nothing to do\n") end
    for _, f in ipairs(findings) do
      out(("%s  %s: %s\n    fix: %s\n"):format(f.needs_person and "NEEDS A PERSON" or "note          ",
        f.slot, clean(f.message), clean(f.command)))
    end
  end
  return need > 0 and EXIT_FAIL or EXIT_OK
end

------------------------------------------------------------------------------------------------
-- rotate

local function progress_enabled()
  local core = require "rotor.core"
  local term = os.getenv("TERM")
  local nc = os.getenv("NO_COLOR")
  return core.isatty(2) and term ~= nil and term ~= "dumb" and (nc == nil or nc == "")
end

local function err_fields(e)
  local kind = type(e) == "table" and e.kind or "error"
  return { kind = kind, message = clean(e), step = type(e) == "table" and nz(e.step) or json.null }
end

-- The config of a rotate command, checked as a whole, and the slots it names (--slot): cfg, info,
-- entries | nil, exit code (the problems printed).
local function rotate_plan(o)
  local path = o["--config"]
  local cfg, info = config.load(path)
  if not cfg then
    err("rotor rotate: " .. clean(info) .. "\n")
    return nil, EXIT_USAGE
  end
  local problems = config.validate(cfg, info)
  local names = {}
  for _, e in ipairs(cfg.slots or {}) do names[e.slot] = true end
  local wanted
  if o["--slot"] and #problems == 0 then
    wanted = {}
    for _, s in ipairs(o["--slot"]) do
      wanted[s] = true
      if not names[s] then
        local list = {}
        for _, e in ipairs(cfg.slots) do list[#list + 1] = e.slot end
        local hint = config.suggest(s, list)
        problems[#problems + 1] = { file = path, key = "--slot", message = "no slot " .. s
          .. (hint and ("; did you mean " .. hint .. "?") or "") }
      end
    end
  end
  if #problems > 0 then return nil, config_problems("rotate", problems, path, "nothing was run") end
  local entries = {}
  for _, e in ipairs(cfg.slots) do
    if not wanted or wanted[e.slot] then entries[#entries + 1] = e end
  end
  return cfg, info, entries
end

-- Rotate one slot of a config run: res (res.skipped when not due) | nil, err.
local function rotate_slot(run, e)
  local rotor, core = require "rotor", require "rotor.core"
  local cfg, o = run.cfg, run.o
  if core.interrupted() then
    return nil, errors.new { kind = "interrupted", not_started = true,
                             message = "not started: rotor was stopped by a signal" }
  end
  local p, perr = config.make_provider(e.provider)
  if not p then return nil, perr end
  local dopts = policy.merge(cfg.due, e.due)
  if o["--only-due"] then
    local due, reason = rotor.due(e.slot, dopts, run.store)
    if due == nil then return nil, reason end
    if not due then return { slot = e.slot, skipped = true, reason = reason } end
  end
  local audit = e.audit
  if audit == nil then audit = cfg.audit end
  if type(audit) == "string" then audit = require("rotor.store").resolve(audit, run.info.dir) end
  local plan = {}
  local pok, res, rerr = pcall(rotor.rotate, {
    slot = e.slot, provider = p, store = run.store, target = e.target, strategy = e.strategy,
    deploy = config.make_deploy(e.deploy, run.info.dir), dry_run = o["--dry-run"] or false,
    wait = e.wait or cfg.wait, grace = e.grace, notify = e.notify or cfg.notify, audit = audit,
    force_mint = e.force_mint, drop_pending = e.drop_pending, consumers = e.consumers, visibility = e.visibility,
    retry_refused = e.retry_refused,
    print = function(line) plan[#plan + 1] = line end,
    -- --only-due decides again under the slot's lock, on the record then read
    only_if_due = o["--only-due"] and not o["--dry-run"] and function(rec) return rotor.due(rec, dopts) end or nil,
  })
  if not pok then res, rerr = nil, errors.new { kind = "config", message = clean(res) } end
  run.done = run.done + 1
  if run.show then
    local word = res and "ok" or (errors.is(rerr) and rerr.kind == "interrupted" and "INTERRUPTED" or "FAILED")
    io.stderr:write(("\r\27[K[%d/%d] %s %s"):format(run.done, run.total, e.slot, word))
    io.stderr:flush()
  end
  if res then res.plan_lines = plan end
  return res, rerr
end

-- One slot's entry of the report (the JSON schema of doc/CLI.md: every field present or null).
local function report_item(e, res, e2)
  local item = { slot = e.slot, provider = json.null, strategy = json.null, state = "failed", reason = json.null,
    client_id = json.null, expires = json.null, old_client_id = json.null, old_expires = json.null,
    rotation = json.null, plan = json.null, warnings = json.array(), error = json.null }
  local pspec = e.provider
  if config.is_provider_object(pspec) then item.provider = pspec.provider
  elseif type(pspec) == "table" then item.provider = nz(pspec.kind) end
  -- the strategy the slot runs (also for a slot skipped or failed before it started): the file's,
  -- else its provider's default
  local ok, strat = pcall(require("rotor.rotation").strategy, item.provider, e.strategy)
  if ok and type(strat) == "table" then item.strategy = nz(strat.name) end
  if res then
    if res.strategy ~= nil then item.strategy = res.strategy end
    if res.skipped then
      item.state, item.reason = "skipped", res.reason
    else
      item.state = res.dry_run and "planned" or "rotated"
      item.client_id, item.expires = nz(res.client_id), nz(res.expires)
      item.old_client_id, item.old_expires = nz(res.old_client_id), nz(res.old_expires)
      item.rotation = nz(res.rotation)
      if res.dry_run then item.plan = json.array(res.plan or {}) end
      for _, w in ipairs(res.warnings or {}) do item.warnings[#item.warnings + 1] = clean(w) end
    end
  else
    item.error = err_fields(e2)
    local kind = item.error.kind
    if kind == "locked" then
      item.state = "locked"
    elseif kind == "interrupted" then
      item.state = e2.not_started and "not_started" or "interrupted"
    end
  end
  item.plan_lines = res and res.plan_lines
  return item
end

local function print_report(report, interrupted)
  for _, r in ipairs(report) do
    if r.state == "skipped" then
      out(("skipped  %s: %s\n"):format(r.slot, tostring(r.reason)))
    elseif r.state == "planned" then
      for _, l in ipairs(r.plan_lines or {}) do out(l .. "\n") end
      out(("dry run  %s: nothing changed\n"):format(r.slot))
    elseif r.state == "rotated" then
      out(("rotated  %s: client %s, expires %s, old expires %s\n"):format(r.slot, clean(r.client_id),
        v(r.expires) and clean(r.expires) or "-", v(r.old_expires) and clean(r.old_expires) or "-"))
      for _, w in ipairs(r.warnings) do out("  warning: " .. tostring(w) .. "\n") end
    else
      local word = ({ locked = "LOCKED", interrupted = "INTERRUPTED",
        not_started = "NOT STARTED" })[r.state] or "FAILED"
      err(("%-11s %s: %s\n"):format(word, r.slot, r.error.message))
    end
  end
  if interrupted > 0 then
    err("rotor rotate: stopped by a signal; run the same command again to finish the interrupted slots\n")
  end
end

local function cmd_rotate(args)
  local o, perr = parse(args, 2, { ["--config"] = "string", ["--slot"] = "multi", ["--dry-run"] = "bool",
                                   ["--json"] = "bool", ["--only-due"] = "bool" })
  if not o then return usage_error("rotate", perr) end
  if not o["--config"] then return usage_error("rotate", "--config FILE expected") end
  if #o._pos > 0 then return usage_error("rotate", "unexpected argument " .. o._pos[1]) end
  local cfg, info, entries = rotate_plan(o)
  if not cfg then return info end
  local store, serr = require("rotor.store").open(cfg.store, info.dir, { read_only = o["--dry-run"] or nil })
  if not store then
    local msg = clean(serr)
    err("rotor rotate: " .. (msg:find("^store: ") and "" or "store: ") .. msg .. "\n")
    return EXIT_FAIL
  end
  local sname = store_name(store)
  if not o["--json"] then out("store: " .. sname .. "\n") end
  io.stdout:flush()
  local run = { cfg = cfg, info = info, o = o, store = store, done = 0, total = #entries,
                show = progress_enabled() and not o["--json"] and #entries > 1 }
  local results, errs = require("rotor").parallel(entries, function(e) return rotate_slot(run, e) end,
                                                  { concurrency = cfg.concurrency or 4 })
  if run.show then io.stderr:write("\r\27[K") end
  local report, count = {}, { failed = 0, locked = 0, interrupted = 0, not_started = 0 }
  for i, e in ipairs(entries) do
    local item = report_item(e, results[i], errs[i])
    if count[item.state] then count[item.state] = count[item.state] + 1 end
    report[#report + 1] = item
  end
  local interrupted = count.interrupted + count.not_started
  if o["--json"] then
    for _, r in ipairs(report) do r.plan_lines = nil end
    out(json.encode { schema = _M.JSON_SCHEMA, store = sname, config = o["--config"], dry_run = o["--dry-run"] or false,
      only_due = o["--only-due"] or false, interrupted = interrupted > 0, slots = json.array(report) } .. "\n")
  else
    print_report(report, interrupted)
  end
  if interrupted > 0 then return EXIT_INTERRUPTED end
  if count.failed > 0 then return EXIT_FAIL end
  if count.locked > 0 then return EXIT_LOCKED end
  return EXIT_OK
end

------------------------------------------------------------------------------------------------

local function version_text()
  local core = require "rotor.core"
  local ok, cv = pcall(function() return core.curl_version end)
  return ("rotor %s (%s, libcurl %s)\n"):format(tostring(core.version), _VERSION:gsub("^Lua ", "Lua "),
    tostring(ok and cv or "?"))
end

--- True when the host should hand args[1] to cli.main rather than run it as a script: every
-- command, and every word that is not a script (a path, a *.lua file, an existing file, "-").
function _M.owns(a1)
  if a1 == nil or a1 == "" or BY_NAME[a1] then return true end
  if a1 == "-" or a1:find("/", 1, true) or a1:match("%.lua$") then return false end
  if a1:sub(1, 1) == "-" then return true end
  -- looked up, not opened: an open of a FIFO of that name would wait for a writer
  return not require("rotor.core").fs_exists(a1)
end

--- cli.main(args) -> exit code. args[1] is the subcommand.
function _M.main(args)
  if type(args) ~= "table" then error("cli.main: an argument array expected", 2) end
  local cmd = args[1]
  if cmd == nil then
    err(_M.usage())
    return EXIT_USAGE
  end
  if cmd == "-h" or cmd == "--help" then
    out(_M.usage())
    return EXIT_OK
  end
  if cmd == "-v" or cmd == "--version" then cmd = "version" end
  local c = BY_NAME[cmd]
  if not c then
    if cmd:sub(1, 1) == "-" then
      err("rotor: unknown option '" .. cmd .. "'\n" .. _M.usage())
      return EXIT_USAGE
    end
    local names = {}
    for _, x in ipairs(COMMANDS) do names[#names + 1] = x.name end
    local hint = config.suggest(cmd, names)
    err(("rotor: unknown command %q%s (a script must exist or end in .lua)\n"):format(cmd,
      hint and ("; did you mean `rotor " .. hint .. "`?") or "") .. _M.usage())
    return EXIT_USAGE
  end
  for i = 2, #args do
    if args[i] == "--help" or args[i] == "-h" then
      out(command_help(c))
      return EXIT_OK
    end
  end
  if cmd == "help" then
    local topic = args[2]
    if topic == nil then
      out(_M.usage())
      return EXIT_OK
    end
    if not BY_NAME[topic] then
      local names = {}
      for _, x in ipairs(COMMANDS) do names[#names + 1] = x.name end
      local hint = config.suggest(topic, names)
      err(("rotor help: no command %q%s\n"):format(topic, hint and ("; did you mean " .. hint .. "?") or "")
        .. _M.usage())
      return EXIT_USAGE
    end
    out(command_help(BY_NAME[topic]))
    return EXIT_OK
  elseif cmd == "version" or cmd == "config-reference" then
    -- they take nothing: an argument is a mistake (rotor config-reference FILE?)
    if args[2] ~= nil then return usage_error(cmd, "unexpected argument " .. args[2]) end
    out(cmd == "version" and version_text() or (config.reference() .. "\n"))
    return EXIT_OK
  elseif cmd == "status" or cmd == "due" then
    return cmd_status(cmd, args)
  elseif cmd == "doctor" then
    return cmd_doctor(args)
  end
  return cmd_rotate(args)
end

_M.now = timefmt.now

return _M
