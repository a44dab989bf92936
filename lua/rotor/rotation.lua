-- Rotation: a staged, crash-safe, resumable workflow over one slot of a store.
--
--   create  -> mint the new secret; it is stored as `pending` (fsync) the moment it arrives
--   verify  -> obtain a fresh token with the pending credential
--   deploy  -> the user's hook pushes it to consumers (optional)
--   promote -> pending becomes current, current becomes previous
--   retire  -> provider specific (lua/rotor/strategies/<provider>.lua)
--
-- Every step is journalled in the slot (step, outcome, time, rotation id, a note — never a
-- secret) together with the state it produced, in one atomic store write. A rerun resumes at the
-- first step not done. The intent to mint is journalled before the minting request goes out; a
-- pending secret is never replaced by a second mint; a run that finds a mint of unknown outcome
-- hands over to the strategy's recover(), which says what it does or what a person must do.
--
-- Crash testing: ROTOR_CRASH_AT="<point>:<before|after>[,...]" makes the process SIGKILL itself at
-- that point (points: create, mint, verify, deploy, promote, retire, ack); ROTOR_CRASH_SLOT limits
-- it to one slot. Unset in normal use.
local core = require "rotor.core"
local errors = require "rotor.errors"
local timefmt = require "rotor.timefmt"
local audit_mod = require "rotor.audit"
local notify_mod = require "rotor.notify"
local store_mod = require "rotor.store"
local record_mod = require "rotor.record"
local bounds = require "rotor.bounds"

local _M = {}

local STEPS = { "create", "verify", "deploy", "promote", "retire" }
_M.STEPS = STEPS
local STEP_INDEX = {}
for i, s in ipairs(STEPS) do STEP_INDEX[s] = i end

-- mint states that leave the outcome of a minting request unknown
local UNKNOWN_MINT = { in_flight = true, ambiguous = true, requested = true }

local LABELS = record_mod.LABELS

--- Every text rotor writes (journal, audit, notifications, errors) passes through here: the bytes
-- of every secret this process holds, in each encoding, become <redacted>.
local function redact(s)
  if s == nil then return nil end
  return core.redact(tostring(s))
end
_M.redact = redact

--- The strategy interface: one table per strategy in lua/rotor/strategies/<provider>.lua, with
-- these hooks (doc/INTERNALS.md). The engine calls every hook unconditionally: what a strategy
-- leaves out is taken from STRATEGY_DEFAULTS. Action hooks return `true[, note]` or `nil, err`.
--   name                          the strategy's name
--   describe.create(ctx), describe.retire(ctx) -> text        the dry run's plan lines (required)
--   check(ctx)                    raise (error) on a bad target, before anything is read or sent
--   default_client_id(ctx) -> id  the client rotated when the slot holds none yet
--   own_credential(ctx) -> bool   is it the credential the provider object acts with?
--   refuse(ctx) -> nil | reason   refuse the rotation (nothing is sent), naming the safe way
--   create(ctx) -> version | nil, err     mint (after ctx:mint_intent); version = { client_id,
--                                 secret, expires, meta, note } (required)
--   recover(ctx, mint) -> version | false | nil, err   after a mint of unknown outcome: the secret
--                                 it minted, false when there is none to take over (mint anew)
--   recover_note(ctx, mint), next_run(ctx, mint), lost_note(ctx) -> text   for the journal and
--                                 the error: what recovery does, what the next run does after an
--                                 ambiguous mint, what losing a minted secret means
--   after_persist(ctx, version)   once the new secret is stored (SP-API: acknowledge the message)
--   cleanup(ctx)                  at the start of a run with no rotation in progress
--   retire(ctx) -> true, note | nil, err  the old credential (required)
--   retire_sends(ctx) -> bool     does retire send anything to the provider? When it does not (it
--                                 only edits the record), promote is stored with the end of the
--                                 rotation, one durable write fewer; when it does, promote is
--                                 durable before retire starts (default: true)
--   summary(ctx) -> text | nil    the last journal line of a finished rotation
-- Strategies change the record only through ctx (ctx:retire_previous, ctx:schedule_deletion, ...).
local STRATEGY_DEFAULTS = {
  check = function() end,
  default_client_id = function(ctx) return ctx.provider.client_id end,
  own_credential = function() return true end,
  refuse = function() return nil end,
  recover = function() return false end,
  recover_note = function() return "an earlier mint had an unknown outcome: recovering" end,
  next_run = function() return "The next run recovers as after an interrupted mint" end,
  after_persist = function() return true end,
  cleanup = function() return true end,
  summary = function() return nil end,
  retire_sends = function() return true end,
}
STRATEGY_DEFAULTS.lost_note = function(ctx, mint) return ctx.strategy.next_run(ctx, mint) end
local REQUIRED_HOOKS = { "create", "retire" }
local with_defaults = { __index = STRATEGY_DEFAULTS }

function _M.strategy(provider_name, name)
  local ok, mod = pcall(require, "rotor.strategies." .. tostring(provider_name))
  if not ok then error("rotate: no rotation strategies for provider " .. tostring(provider_name), 3) end
  name = name or mod.default
  local s = mod.strategies[name]
  if not s then
    local names = {}
    for k in pairs(mod.strategies) do names[#names + 1] = k end
    table.sort(names)
    error(("rotate: unknown strategy %q for %s (one of: %s)"):format(tostring(name), provider_name,
      table.concat(names, ", ")), 3)
  end
  if getmetatable(s) == nil then
    for _, h in ipairs(REQUIRED_HOOKS) do
      if type(s[h]) ~= "function" then error("rotate: strategy " .. name .. " has no " .. h .. " hook", 3) end
    end
    if type(s.describe) ~= "table" then error("rotate: strategy " .. name .. " has no describe table", 3) end
    setmetatable(s, with_defaults)
  end
  return s
end

------------------------------------------------------------------------------------------------
-- The context a run and its strategy share.

local Ctx = {}
Ctx.__index = Ctx

local function crash_points()
  local spec = os.getenv("ROTOR_CRASH_AT")
  if not spec or spec == "" then return nil end
  local set = {}
  for item in spec:gmatch("[^,%s]+") do set[item] = true end
  return set
end

--- Kill the process (SIGKILL) if ROTOR_CRASH_AT names this point, saying so on stderr first (the
-- crash spec checks that the process died there). A test hook only. "write:torn" leaves what a
-- kill inside the store's write of the slot file leaves: the old file, and beside it a temporary
-- file holding the first half of the new one (the write is temp file, fsync, rename).
function Ctx:crash(point, when)
  if not self.crash_at then return end
  local name = point .. ":" .. when
  if self.crash_at[name] then
    local only = os.getenv("ROTOR_CRASH_SLOT")
    if only == nil or only == "" or only == self.slot then
      if name == "write:torn" and type(self.store.path) == "function" then
        local function copy(v)
          if core.is_secret(v) then return tostring(v) end
          if type(v) ~= "table" then return v end
          local t = {}
          for k, x in pairs(v) do t[k] = copy(x) end
          return t
        end
        local text = require("rotor.json").encode(copy(self.record))
        core.fs_write_atomic(self.store:path(self.slot) .. ".tmp.crash1", text:sub(1, math.floor(#text / 2)), 384)
      end
      io.stdout:flush()
      io.stderr:write("rotor: crash point ", name, "\n")
      io.stderr:flush()
      core.kill_self()
    end
  end
end

--- Persist the record as it is now. While a freshly minted secret exists only in this process
-- (ctx.holding), a failing write is retried (write_retries times, backing off) before giving up.
-- A lease-based client lock (etcd) lapsed (or could not be kept alive): another rotor may have
-- claimed the client meanwhile. Claimed again, as the first time, before the record is written:
-- the new lock | nil, err (the claim is lost for good: the record is never written, it would hold
-- the client another slot holds now).
function Ctx:claim_again()
  self.client_lock:unlock()
  self.client_lock = nil
  local ok, again = record_mod.claim_client(self.store, self.client_key, self.slot, true, true)
  if not ok then
    self.claim_lost = again
    return nil, again
  end
  self.client_lock = again
  return again
end

function Ctx:persist()
  if self.claim_lost then return nil, self.claim_lost end
  local cl = self.client_lock
  if cl and cl.refresh and not cl:refresh(false) then
    local again, aerr = self:claim_again()
    if not again then return nil, aerr end
    cl = again
  end
  -- the client's lock must still hold when the record is written (a store that can check it does
  -- so in the write itself): a pause between the refresh above and the write outlasted the lease
  -- once, and two slots came to hold one client
  local function write() return self.store:put(self.slot, self.record, cl and { client_lock = cl } or nil) end
  local ok, err = write()
  if not ok and cl and errors.is(err) and err.client_lock_lost then
    local again, aerr = self:claim_again()
    if not again then return nil, aerr end
    cl = again
    ok, err = write()
  end
  local tries, delay = 0, self.opts.write_retry_delay or 0.5
  -- a fenced write (the slot's lock was lost) never succeeds: not retried
  while not ok and self.holding and tries < (self.opts.write_retries or 5)
    and not (errors.is(err) and err.kind == "fenced") do
    tries = tries + 1
    if self.log then self.log(("%s: store write failed (%s); retry %d"):format(self.slot, redact(err), tries)) end
    self:sleep(delay)
    delay = math.min(delay * 2, 8)
    ok, err = write()
  end
  if ok and cl then
    -- the stored record holds the client now (a slot's first claim of it: rotor.record.claim_client):
    -- the next first claim finds this slot through the lock's note
    cl:unlock()
    self.client_lock = nil
  end
  return ok, err
end

--- Append a journal entry, persist it with the state it describes, and audit it.
-- secret (optional) is fingerprinted into the audit trail; it never reaches the journal.
-- lazy = true: the entry is kept in memory, and written (with its audit line) by the next entry
-- that is not lazy. For entries whose loss in a crash only makes the rerun repeat idempotent
-- work (the start of a rotation, verify, deploy, retire's last line): half the durable writes.
function Ctx:journal(step, outcome, note, secret, client_id, lazy)
  local rot = self.record.rotation
  -- one line, no byte a terminal would obey: a note may carry a provider's text (a summary with
  -- the expiry it gave), and the journal is printed by status, doctor and the log hook
  note = note ~= nil and errors.printable(redact(note)) or nil
  local entry = {
    step = step, outcome = outcome, time = timefmt.iso(),
    rotation = (rot and rot.id) or self.rotation_id, note = note,
  }
  record_mod.journal_append(self.record, entry)
  self.steps[#self.steps + 1] = { step = step, outcome = outcome, note = note }
  if self.log then self.log(("%s: %s: %s%s"):format(self.slot, step, outcome, note and (" (" .. note .. ")") or "")) end
  local pending = self.audit_pending or {}
  self.audit_pending = pending
  pending[#pending + 1] = { slot = self.slot, provider = self.provider.provider, rotation = entry.rotation,
    step = step, outcome = outcome, note = note, secret = secret, client_id = client_id, time = entry.time }
  if lazy then return true end
  self.audit_pending = nil
  -- the audit lines are queued before the record: they reach the disk with it (one group commit)
  -- or before it, and one wait serves both. A trail elsewhere is written here, at once.
  local ticket, aerr
  if self.audit then
    local r, e = self.audit:write(pending, true)
    if type(r) == "table" then ticket = r elseif not r then aerr = e end
  end
  local ok, err = self:persist()
  if ticket then
    local aok, e = ticket:wait()
    if not aok then aerr = e end
  end
  if aerr and ok then self.audit_error = aerr end
  if not ok and self.audit then
    -- the trail already has these steps: say that the slot's record does not
    for _, a in ipairs(pending) do a.outcome = a.outcome .. " (not stored: the store write failed)" end
    self.audit:write(pending)
  end
  if not ok then return nil, err end
  return true
end

--- Journal the intent to mint (durably) before the minting request goes out. extra fields are
-- kept with it (e.g. a fingerprint of the Paylocity code). Returns true | nil, err; a strategy
-- must not mint when this fails.
-- the padding written with the mint intent (2 KiB, made once): the store shows it can hold a record as large as
-- the one that will carry the new secret before the minting request leaves
local RESERVE = string.rep("-", 2048)

function Ctx:mint_intent(op, extra)
  local mint = { state = "in_flight", op = op, time = timefmt.iso(), at = timefmt.now() }
  for k, v in pairs(extra or {}) do mint[k] = v end
  mint.reserve = RESERVE
  self.record.rotation.mint = mint
  local ok, err = self:journal("create", "intent", op)
  mint.reserve = nil
  if not ok then
    return nil, errors.with(err, { message = "nothing was sent: the store cannot write the slot before the "
      .. "mint (" .. tostring(err and err.message) .. ")" })
  end
  if self.lock and self.lock.before_mint then
    -- a lease-based lock (etcd) makes sure it outlives the minting request
    local po = self.provider.options or {}
    ok, err = self.lock:before_mint(self.opts.mint_budget or ((po.timeout or 30) + (po.connect_timeout or 10)))
    if not ok then return nil, err end
  end
  self:crash("mint", "before")
  self.holding = true
  return true
end

--- Delete, of a listing at the provider, only what this rotation minted: items whose name is
-- exactly the one recorded before the mint. Items that look like rotor's but cannot be
-- attributed to this rotation are reported (a warning), never deleted.
-- args: items, name_of(item), id_of(item), name (the recorded name), looks_like(name), delete(id)
-- Returns the number deleted | nil, err. When it deletes nothing after a mint of unknown outcome,
-- the name is kept in record.unfound: a listing may lag behind a create, and the slot's later runs
-- search for the name again (Ctx:search_unfound).
function Ctx:delete_attributed(args)
  local n = 0
  for _, item in ipairs(args.items) do
    local name, id = args.name_of(item), args.id_of(item)
    if type(name) == "string" and type(id) == "string" and not self:stored_client(id)
       and not self:retiring_client(id) then
      local elsewhere = name == args.name and self:held_elsewhere(id)
      if elsewhere then
        -- another slot of the store took it since (a person gave it to a slot): it is that slot's
        self.warnings[#self.warnings + 1] = ("%s %s (%s) carries the name this slot's mint used, but %s: left "
          .. "alone"):format(args.what, id, name, elsewhere)
      elseif name == args.name then
        local ok, derr = args.delete(id)
        if not ok and not (errors.is(derr) and derr.status == 404) then return nil, derr end
        self:journal("create", "orphan_deleted", ("deleted %s %s (%s), minted by this rotation"):format(
          args.what, id, name))
        n = n + 1
      elseif args.looks_like(name) then
        self.warnings[#self.warnings + 1] = ("%s %s (%s) looks like rotor's but this slot's journal does not "
          .. "prove it minted it: left alone"):format(args.what, id, name)
      end
    end
  end
  if self.searching then
    self.searching.found = n
  elseif n == 0 then
    self:note_unfound(args.name, args.what)
    local ok, err = self:journal("create", "not_found", ("the provider lists no %s named %s: taken as not "
      .. "created. A listing may lag behind a create, so the slot's runs search for that name again for %d days "
      .. "and delete what they find that no slot stores"):format(args.what, args.name, _M.UNFOUND_DAYS))
    if not ok then return nil, err end
  end
  return n
end

--- Keep name (a credential of kind what, made by the rotation in progress) for the slot's runs
-- to search for (record.unfound): once per name, its window counted from the first time.
function Ctx:note_unfound(name, what)
  local list = self.record.unfound or {}
  self.record.unfound = list
  for _, e in ipairs(list) do
    if e.name == name then return end
  end
  list[#list + 1] = { name = name, what = what, strategy = self.strategy.name,
                      rotation = self.record.rotation and self.record.rotation.id, since = timefmt.iso() }
end

-- How long the slot's runs keep searching for a credential a recovery did not find (days).
-- How long a provider's listing may lag behind a create is not documented: long enough that any
-- lag seen in practice (seconds) is far inside it, short enough that the search ends.
_M.UNFOUND_DAYS = 30

--- When the slot's search for an unfound entry ends: its `since` plus UNFOUND_DAYS, or nil when
-- `since` is no time (the one home of the window, for the search and for doctor).
function _M.unfound_until(entry)
  local since = timefmt.parse(entry.since)
  return since and since + _M.UNFOUND_DAYS * 86400
end

--- At the start of a run with no rotation in progress: search again for each credential a
-- recovery did not find (record.unfound), with the strategy's own recover(), which deletes one
-- it finds that no slot stores. An entry ends when its credential is found, or when it is not
-- found UNFOUND_DAYS after it was recorded. Entries of another strategy are not searched for: kept
-- for that window (doctor lists them), then ended. What ends is journalled with the rotation that
-- recorded the name. true | nil, err (the journal could not be written; a search that fails is a
-- warning, and the next run searches again).
function Ctx:search_unfound(now)
  local list = self.record.unfound
  if type(list) ~= "table" or #list == 0 then return true end
  local keep, ended = {}, {}
  local function past(e)
    local ends = _M.unfound_until(e)
    -- a time no one can read (a hand edit): the window starts now
    if not ends then e.since, ends = timefmt.iso(now), now + _M.UNFOUND_DAYS * 86400 end
    return ends <= now
  end
  for _, e in ipairs(list) do
    if e.strategy ~= self.strategy.name then
      -- recorded under another strategy, whose recover() knows its kind of credential: kept for its
      -- window (doctor lists it), then ended
      if past(e) then
        ended[#ended + 1] = { e, ("%s %s not searched for: the slot's strategy is %s now, not %s; the search has "
          .. "ended"):format(tostring(e.what), e.name, self.strategy.name, tostring(e.strategy)) }
      else
        keep[#keep + 1] = e
      end
    else
      -- what the search journals belongs to the rotation that recorded the name
      self.searching, self.rotation_id = { found = 0 }, e.rotation
      local pok, ok, err = pcall(self.strategy.recover, self, { name = e.name })
      local found = self.searching.found
      self.searching, self.rotation_id = nil, nil
      if not pok or ok == nil then
        keep[#keep + 1] = e
        self.warnings[#self.warnings + 1] = ("the search for %s %s (not found by rotation %s) failed: %s; the next "
          .. "run searches again"):format(tostring(e.what), e.name, tostring(e.rotation),
          redact(errors.is(err) and err.message or (pok and err) or ok))
      elseif found > 0 then
        ended[#ended + 1] = { e, ("%s %s found and deleted"):format(tostring(e.what), e.name) }
      elseif past(e) then
        ended[#ended + 1] = { e, ("%s %s still not listed after %d days: taken as never created"):format(
          tostring(e.what), e.name, _M.UNFOUND_DAYS) }
      else
        keep[#keep + 1] = e
      end
    end
  end
  if #ended == 0 then return true end
  self.record.unfound = #keep > 0 and keep or nil
  for i, x in ipairs(ended) do
    self.rotation_id = x[1].rotation
    local ok, err = self:journal("create", "search_ended", x[2], nil, nil, i < #ended)
    self.rotation_id = nil
    if not ok then return nil, err end
  end
  return true
end

--- Verify a candidate credential (a fresh token with exactly it), retrying as the verify step does:
-- true | nil, err (kind "auth" when the provider refuses it).
function Ctx:verify_candidate(client_id, secret)
  local attempts = self.opts.verify_attempts or 3
  local delay = self.opts.verify_delay or 1
  local ok, err
  for i = 1, attempts do
    ok, err = self.provider:verify { client_id = client_id, client_secret = secret }
    if ok then return true end
    -- a signal ends the verifying (its token request abandoned, or during the wait between two):
    -- the secret is stored already, and the next run verifies it again
    if errors.is(err) and err.kind == "interrupted" then return nil, err end
    if i < attempts and not self:sleep(delay * i, true) then
      return nil, errors.new { kind = "interrupted", message = ("stopped on a signal while waiting %g s to try "
        .. "the new secret again (attempt %d of %d)"):format(delay * i, i + 1, attempts) }
    end
  end
  return nil, err
end

--- A keyed fingerprint of a value (the audit key when there is one).
function Ctx:fingerprint(value)
  local key = (self.audit and self.audit.key) or "rotor-fingerprint"
  return core.hmac_sha256_hex(key, value)
end

--- A table kept with the rotation in progress (persisted with the next journal entry).
function Ctx:rotation_data(name)
  local rot = self.record.rotation
  rot[name] = rot[name] or {}
  return rot[name]
end

--- Set the state of the rotation's mint (see UNKNOWN_MINT); returns the mint record.
function Ctx:mint_state(state)
  local mint = self.record.rotation.mint
  mint.state = state
  return mint
end

--- The stored version under a label (current, pending, previous), or nil.
function Ctx:version(label)
  return self.record.versions[label]
end

--- Record what retiring did to the previous version: fields are set (expires, ...), dead = true
-- drops its secret (no reason to keep a dead one at rest), meta entries are merged.
-- Returns the version, or nil when there is none.
function Ctx:retire_previous(fields)
  local prev = self.record.versions.previous
  if not prev then return nil end
  prev.meta = type(prev.meta) == "table" and prev.meta or {}
  for k, v in pairs(fields or {}) do
    if k == "meta" then
      for mk, mv in pairs(v) do prev.meta[mk] = mv end
    elseif k == "dead" then
      if v then prev.secret = nil end
    elseif k == "expires" then
      prev.expires = timefmt.checked(v) or prev.expires  -- a provider's text that is no time: not kept
    else
      prev[k] = v
    end
  end
  return prev
end

--- Old clients whose deletion waits for a grace period: schedule one, list the due ones, and
-- mark one done (each change persisted with the next journal entry).
function Ctx:schedule_deletion(client_id, after)
  local list = self.record.retiring or {}
  self.record.retiring = list
  list[#list + 1] = { client_id = client_id, delete_after = after }
end

-- A client the slot holds as its current or pending credential is never deleted: its scheduled
-- deletion (left by a record edited or rolled back by hand) is cancelled, and that is journalled.
-- Returns the due entries | nil, err (the journal could not be written).
function Ctx:due_deletions(now)
  local due, live = {}, {}
  for _, r in ipairs(self.record.retiring or {}) do
    local label = self:stored_client(r.client_id, { "current", "pending" })
    if label then
      live[#live + 1] = { entry = r, label = label }
    elseif (timefmt.parse(r.delete_after) or 0) <= now then
      due[#due + 1] = r
    end
  end
  for _, l in ipairs(live) do
    self:deletion_done(l.entry)
    local ok, err = self:journal("retire", "kept", ("client %s is the slot's %s credential: its scheduled "
      .. "deletion is cancelled"):format(l.entry.client_id, l.label))
    if not ok then return nil, err end
  end
  return due
end

function Ctx:deletion_done(entry)
  local keep = {}
  for _, r in ipairs(self.record.retiring or {}) do
    if r ~= entry then keep[#keep + 1] = r end
  end
  self.record.retiring = keep
end

--- Does another slot of the store hold client_id (or can the store not tell)? Why, or false.
function Ctx:held_elsewhere(client_id)
  local key = record_mod.client_key(self.provider.provider, client_id)
  local ok, err = record_mod.claim_client(self.store, key, self.slot, false)
  if ok then return false end
  return errors.is(err) and err.kind == "config" and "another slot of the store holds it"
    or "the store could not tell whether another slot holds it"
end

--- Is client_id one the slot deletes after a grace period (record.retiring)?
function Ctx:retiring_client(client_id)
  for _, r in ipairs(self.record.retiring or {}) do
    if r.client_id == client_id then return true end
  end
  return false
end

--- The label of the stored version client_id belongs to (of labels, by default current, pending
-- and previous), or false.
function Ctx:stored_client(client_id, labels)
  for _, label in ipairs(labels or LABELS) do
    local v = self.record.versions[label]
    if v and v.client_id == client_id then return label end
  end
  return false
end

--- The client id being rotated: the stored current one, else the strategy's default.
function Ctx:client_id()
  local cur = self.record.versions.current
  if cur and cur.client_id then return cur.client_id end
  return self.strategy.default_client_id(self)
end

-- -> true | false (interruptible, and the host got SIGINT/SIGTERM: ended early)
function Ctx:sleep(s, interruptible)
  local slept = require("rotor.sched").sleep(s, interruptible)
  -- a leased lock (etcd) is kept alive across the waits of a step that writes nothing
  if self.lock and self.lock.refresh then self.lock:refresh(false) end
  return slept
end

------------------------------------------------------------------------------------------------
-- Steps. Each returns true | nil, err and is idempotent: it first checks whether its work is done.

local step = {}

function step.create(ctx)
  local rec, rot, strat = ctx.record, ctx.record.rotation, ctx.strategy
  local versions = rec.versions
  if versions.pending then
    -- never mint while a pending secret exists
    return ctx:journal("create", "done", "a pending secret is already stored")
  end
  local version, err
  if rot.mint and UNKNOWN_MINT[rot.mint.state] then
    ctx:journal("create", "recover", strat.recover_note(ctx, rot.mint))
    version, err = strat.recover(ctx, rot.mint)
    if version == nil then return nil, err end
  end
  if not version then
    version, err = strat.create(ctx)
    if version and not ((core.is_secret(version.secret) or (type(version.secret) == "string"
      and version.secret ~= "")) and type(version.client_id) == "string" and version.client_id ~= "") then
      -- a success that carries no secret or client id rotor can read (a record holding it could
      -- not be read back): something may have been minted
      version, err = nil, errors.new { kind = "ambiguous", message = "the minting call succeeded but its answer "
        .. "holds no secret or client id rotor can read" }
    end
    if not version then
      ctx.holding = nil
      if rot.mint and rot.mint.state == "in_flight" then
        rot.mint.state = (errors.is(err) and err.kind == "ambiguous") and "ambiguous" or "failed"
        if rot.mint.state == "ambiguous" then
          err = errors.with(err, { message = tostring(err.message or "") .. ". " .. strat.next_run(ctx, rot.mint) })
        end
      end
      return nil, err
    end
  end
  -- persist the secret the moment it is here, before anything else
  local now = timefmt.iso()
  versions.pending = {
    client_id = version.client_id, secret = version.secret, created = now,
    expires = timefmt.checked(version.expires), meta = version.meta or {}, rotation = rot.id,
  }
  if version.expires ~= nil and versions.pending.expires == nil then
    ctx.warnings[#ctx.warnings + 1] = ("the provider gave the new secret an expiry that is no time (%s): not "
      .. "kept"):format(redact(errors.printable(tostring(version.expires)):sub(1, 80)))
  end
  local mint_state = rot.mint and rot.mint.state
  if rot.mint then rot.mint.state = "done" end
  ctx:crash("write", "before")
  ctx:crash("write", "torn")
  local ok, perr = ctx:journal("create", "ok", version.note, version.secret, version.client_id)
  if not ok then
    -- the slot on disk still says the mint is of unknown outcome: the next run recovers from that
    record_mod.journal_drop_last(rec)
    table.remove(ctx.steps)
    if rot.mint then rot.mint.state = mint_state end
    versions.pending = nil
    ctx.holding = nil
    ctx.lost_minted = version   -- what rotate's end tells of it when the slot's lock was lost
    return nil, errors.with(perr, { kind = "ambiguous",
      message = "the new secret was minted but the store could not write it, even after retrying ("
        .. tostring(perr.message) .. "); the secret is lost. "
        .. strat.lost_note(ctx, rot.mint),
    })
  end
  ctx.holding = nil
  local aok, aerr = strat.after_persist(ctx, version)
  if not aok then ctx:journal("create", "warning", aerr) end
  return true
end

function step.verify(ctx)
  local p = ctx.record.versions.pending
  if not p then return ctx:journal("verify", "done", "already promoted") end
  local ok, err = ctx:verify_candidate(p.client_id, p.secret)
  if not ok and errors.is(err) and err.kind == "interrupted" then
    return nil, errors.with(err, { message = ("verifying the new credential %s stopped on a signal (%s); it stays "
      .. "pending and the next run verifies it again"):format(tostring(p.client_id), tostring(err.message)) })
  end
  if not ok then
    return nil, errors.with(err, {
      message = ("the new credential %s was refused when verified (%s); it stays pending and the "
        .. "next run verifies it again"):format(tostring(p.client_id), tostring(err and err.message)),
    })
  end
  return ctx:journal("verify", "ok", nil, p.secret, p.client_id, true)
end

function step.deploy(ctx)
  local p = ctx.record.versions.pending
  if not p then return ctx:journal("deploy", "done", "already promoted", nil, nil, true) end
  local hook = ctx.opts.deploy
  if hook == nil then return ctx:journal("deploy", "skipped", "no deploy hook", nil, nil, true) end
  local cur = ctx.record.versions.current
  local new = {
    slot = ctx.slot, provider = ctx.provider.provider, rotation = ctx.record.rotation.id,
    client_id = p.client_id, secret = p.secret, created = p.created, expires = p.expires,
    old_client_id = cur and cur.client_id or nil,
  }
  local pok, r, e = pcall(hook, new)
  if not pok then
    return nil, errors.new { kind = "store", op = "deploy", message = "the deploy hook raised an error: " .. tostring(r)
      .. "; the new secret stays pending and the next run deploys it again" }
  end
  if not r then
    local msg = errors.is(e) and e.message or tostring(e or "it returned false")
    -- a deploy command stopped on rotor's SIGINT/SIGTERM: the run was interrupted, nothing failed
    local kind = errors.is(e) and e.kind == "interrupted" and "interrupted" or "store"
    return nil, errors.new { kind = kind, op = "deploy", message = "the deploy hook failed: " .. msg
      .. "; the new secret stays pending and the next run deploys it again" }
  end
  return ctx:journal("deploy", "ok", nil, p.secret, p.client_id, true)
end

function step.promote(ctx)
  local v = ctx.record.versions
  if v.pending then
    v.previous = v.current
    v.current = v.pending
    v.pending = nil
    v.current.promoted = timefmt.iso()
    -- durable before a retire that calls the provider (the old credential may die there); else
    -- written with the end of the rotation: a crash before that repeats verify and deploy
    local ok, err = ctx:journal("promote", "ok", nil, v.current.secret, v.current.client_id,
                                not ctx.strategy.retire_sends(ctx))
    if not ok then return nil, err end
  else
    ctx:journal("promote", "done", "already promoted")
  end
  -- the provider object acts with the new secret when its own credential was rotated
  if ctx.own and v.current and v.current.secret then
    ctx.provider:set_credentials(v.current.client_id, v.current.secret)
  end
  return true
end

function step.retire(ctx)
  local ok, note_or_err = ctx.strategy.retire(ctx)
  if not ok then return nil, note_or_err end
  return ctx:journal("retire", "ok", note_or_err, nil, nil, true)
end

------------------------------------------------------------------------------------------------

-- time-ordered, with 64 random bits: unique across slots, stores and hosts sharing an account
local function new_rotation_id()
  return "r" .. os.date("!%Y%m%dT%H%M%SZ") .. "-" .. core.random_hex(8)
end

local function check_opts(o)
  if type(o) ~= "table" then error("rotate: an options table expected", 3) end
  local config = require "rotor.config"
  local unknown = config.unknown_key(o, config.ROTATE.order, "option")
  if unknown then error("rotate: " .. unknown, 3) end
  require("rotor.store.file").check_slot(o.slot, 3)
  if type(o.provider) ~= "table" or type(o.provider.provider) ~= "string" then
    error("rotate: provider must be a provider object (rotor.genesys{...}, ...)", 3)
  end
  store_mod.check(o.store, 3)
  if o.target ~= nil and type(o.target) ~= "table" then error("rotate: target must be a table", 3) end
  -- a target key the provider does not take is a typo: target.clientid must not rotate another client
  local known = config.PROVIDERS[o.provider.provider]
  if known and o.target then
    local bad = config.unknown_key(o.target, require("rotor.keys").sorted(known.target),
      "target key for " .. o.provider.provider, "target.")
    if bad then error("rotate: " .. bad, 3) end
  end
  if o.strategy ~= nil and type(o.strategy) ~= "string" then error("rotate: strategy must be a string", 3) end
  if o.deploy ~= nil then
    local mt = getmetatable(o.deploy)
    if type(o.deploy) ~= "function" and not (mt and mt.__call) then
      error("rotate: deploy must be a function (or a callable sink such as rotor.store.dotenv)", 3)
    end
  end
  for name in pairs(bounds.ROTATE) do
    if o[name] ~= nil then
      local ok, why = bounds.check(bounds.ROTATE, name, o[name])
      if not ok then error("rotate: " .. name .. ": " .. why, 3) end
    end
  end
  notify_mod.check(o.notify, 3)
  if o.consumers ~= nil and o.consumers ~= "none" then error('rotate: consumers must be "none" (or unset)', 3) end
  for _, k in ipairs { "force_mint", "drop_pending" } do
    if o[k] ~= nil and type(o[k]) ~= "boolean" then error("rotate: " .. k .. " must be true or false", 3) end
  end
end

-- The message of a rotation whose slot's lock was lost while it held a new secret it could not
-- store. A pause (SIGSTOP, a VM) after the lease was checked and before the minting request left:
-- another rotor took the slot over, then this request went out. `adoption` is what adopt_lost
-- made of the secret (or of the slot, when the request's outcome is unknown): { outcome =, err = }.
local function lost_after_fence(ctx, fenced, adoption)
  local v = ctx.lost_minted
  local base = tostring(fenced.head or fenced.message)
  local outcome = adoption.outcome
  local why = tostring(errors.is(adoption.err) and adoption.err.message or adoption.err)
  local again = "the slot again now, with the config or store of this run: rotor rotate --slot " .. ctx.slot
  if not v then
    -- a mint of unknown outcome, sent after the lock lapsed
    local sent = ". This rotor's minting request, sent after that, has an unknown outcome"
    if outcome == "slot_works" then
      return base .. sent .. "; the secret the slot holds still works, so nothing was lost"
    elseif outcome == "not_stored" then
      return base .. sent .. ", and the slot could not be checked (" .. why .. "). If its secret is refused now "
        .. "(a regenerate ends the one before), rotate " .. again
    end
    return base .. sent .. ", and whether the slot's secret still works could not be told: check the slot "
      .. "(rotor doctor), and rotate it again if its secret is refused"
  end
  if outcome == "new_client" then
    return base .. (". This rotor created credential %s after that and could not store it: no slot holds it. "
      .. "When rotor doctor lists its name as unconfirmed_orphan, the slot's later runs delete it; else delete it at "
      .. "the provider"):format(tostring(v.client_id))
  elseif outcome == "works" then
    return base .. ". A secret this rotor minted after that works, and the slot's secret does not (a regenerate "
      .. "ends the one before); storing it failed (" .. why .. "). Rotate " .. again
  elseif outcome == "not_stored" then
    return base .. ". This rotor minted a secret after that and could not store it (" .. why .. "). If the slot's "
      .. "secret is refused now (a regenerate ends the one before), rotate " .. again
  elseif outcome == "slot_works" then
    return base .. ". The secret this rotor minted after that is not stored, and not needed: the slot's own "
      .. "secret works. Nothing was lost"
  elseif outcome == "refused" then
    return base .. ". The secret this rotor minted before that no longer works (a later mint replaced it): "
      .. "nothing was lost; the rotor holding the slot finished the rotation"
  end
  return base .. ". This rotor minted a secret it could not store, and could not tell whether it or the slot's "
    .. "secret works: check the slot (rotor doctor), and rotate it again if its secret is refused"
end

local function empty_record(slot, provider)
  return { slot = slot, provider = provider.provider, versions = {}, journal = {} }
end

local function open_audit(o)
  if o.audit == false then return nil end
  if type(o.audit) == "table" and type(o.audit.write) == "function" then return o.audit end
  if type(o.audit) == "string" then return audit_mod.open { path = o.audit } end
  if type(o.audit) == "table" then return audit_mod.open(o.audit) end
  if type(o.store.audit_trail) == "function" then return o.store:audit_trail() end
  if type(o.store.audit_path) == "function" then return audit_mod.open(o.store) end
  return nil
end

local function result(ctx)
  local v = ctx.record.versions
  local cur, prev = v.current or {}, v.previous or {}
  return {
    slot = ctx.slot, provider = ctx.provider.provider, strategy = ctx.strategy.name,
    client_id = cur.client_id, version = cur.rotation, rotation = cur.rotation,
    created = cur.created, expires = cur.expires,
    old_client_id = prev.client_id, old_expires = prev.expires,
    steps = ctx.steps, warnings = ctx.warnings,
  }
end

--- The plan of a run, as lines of text (dry run).
local function plan(ctx)
  local lines = {}
  local rec, strat = ctx.record, ctx.strategy
  local rot = rec.rotation
  local first = 1
  local dropping = ctx.opts.drop_pending and rot and rec.versions.pending
  if dropping then
    lines[#lines + 1] = ("drop_pending: try the pending secret of %s once more; if the provider refuses it, drop it "
      .. "and resume at create (a new one is minted)"):format(tostring(rec.versions.pending.client_id))
  end
  if rot then
    first = dropping and 1 or STEP_INDEX[rot.step] or 1
    lines[#lines + 1] = ("resume rotation %s at step %s"):format(rot.id, dropping and "create" or rot.step)
  else
    for _, e in ipairs(rec.unfound or {}) do
      if e.strategy == strat.name then
        lines[#lines + 1] = ("search for the %s named %s (not found by rotation %s) and delete it if no slot holds "
          .. "it"):format(tostring(e.what), e.name, tostring(e.rotation))
      end
    end
    lines[#lines + 1] = "start a new rotation (" .. strat.name .. ")"
  end
  for i = first, #STEPS do
    local s = STEPS[i]
    local text
    if s == "create" then
      if dropping then
        text = "if it was dropped: " .. strat.describe.create(ctx)
      elseif rec.versions.pending then
        text = "a pending secret is stored: nothing is minted"
      elseif rot and rot.mint and UNKNOWN_MINT[rot.mint.state] then
        text = "an earlier mint had an unknown outcome: "
          .. strat.recover_note(ctx, rot.mint)
      else
        text = strat.describe.create(ctx)
      end
    elseif s == "verify" then
      text = "obtain a fresh token with the new credential"
    elseif s == "deploy" then
      text = ctx.opts.deploy and "run the deploy hook with the new credential" or "no deploy hook: nothing to do"
    elseif s == "promote" then
      text = "pending becomes current, current becomes previous"
      if ctx.own then text = text .. "; the provider object then acts with the new secret" end
    else
      text = strat.describe.retire(ctx)
    end
    lines[#lines + 1] = s .. ": " .. text
  end
  return lines
end

local function notify(ctx, ok, err, failed_step)
  if ctx.opts.notify == nil then return end
  local rot = ctx.record and (ctx.record.rotation or ctx.record.last) or {}
  -- the rotation's outcome is settled: nothing a notification does (not even an error raised in
  -- it) changes what is reported
  local pok, sent, nerr = pcall(notify_mod.send, ctx.opts.notify, {
    ok = ok, slot = ctx.slot, provider = ctx.provider.provider, rotation = rot.id or rot.rotation,
    step = failed_step, error = err and redact(err) or nil,
    detail = ok and redact(ctx.strategy.summary(ctx)) or nil,
  })
  if not pok then sent, nerr = nil, redact(sent) end
  if not sent then ctx.warnings[#ctx.warnings + 1] = "notification failed: " .. tostring(nerr) end
end

-- Does the provider honour version v's secret? true, false (refused), or nil, err (could not tell).
local function honoured(ctx, v)
  if type(v) ~= "table" or v.secret == nil or type(v.client_id) ~= "string" then return false end
  local ok, err = ctx:verify_candidate(v.client_id, v.secret)
  if ok then return true end
  if errors.is(err) and err.kind == "auth" then return false end
  return nil, err
end

-- Drop the slot's pending secret, refused by the provider, and take the rotation back to create,
-- which then mints anew. The mint's record is kept (state "dropped"): a strategy may refuse to
-- send its input again (Paylocity's emailed code). A credential of its own (a new client or pair)
-- is searched for by the name rotor recorded before its mint (record.unfound), never one the
-- provider's answer gave: a search deletes every credential of that name no slot holds.
-- why: the journal note, "%s" the pending client. true | nil, err.
local function forget_pending(ctx, why)
  local rec = ctx.record
  local p, rot = rec.versions.pending, rec.rotation
  local cur = rec.versions.current
  local own_client = not (cur and cur.client_id == p.client_id)
  local mint = rot.mint
  local name = own_client and mint and type(mint.name) == "string" and mint.name ~= "" and mint.name or nil
  if name then
    ctx:note_unfound(name, "credential")
  end
  rec.versions.pending = nil
  rot.step = "create"
  if mint then mint.state = "dropped" end
  return ctx:journal("create", "dropped", why:format(tostring(p.client_id)) .. (own_client and (name
    and ("; credential %s (%s) is deleted by the slot's later runs"):format(p.client_id, name)
    or ("; delete credential %s at the provider"):format(p.client_id)) or ""))
end

-- drop_pending: a person's word that the slot's pending secret will never work (a mint answered
-- 200 whose secret the provider refuses: every run failed verify, and none would mint while it
-- was pending). Tried once more: refused, it is dropped and the rotation mints anew; working, it
-- is kept; unknown, the run stops. A credential of its own (a new client or pair) is searched for
-- by name and deleted by the slot's later runs (record.unfound). true | nil, err.
local function drop_pending(ctx)
  local p = ctx.record.versions.pending
  local works, err = honoured(ctx, p)
  if works then
    ctx.warnings[#ctx.warnings + 1] = ("drop_pending: the pending secret of %s works: kept (remove drop_pending "
      .. "from the slot's options)"):format(tostring(p.client_id))
    return true
  elseif works == nil then
    return nil, errors.with(err, { message = ("drop_pending: could not tell whether the pending secret of %s "
      .. "works (%s); nothing was dropped"):format(tostring(p.client_id), tostring(errors.is(err) and err.message
      or err)) })
  end
  return forget_pending(ctx, "drop_pending: the pending secret of %s is refused: dropped, and a new one is minted")
end

-- Under the slot's lock again, a secret this process minted under a lock it lost (ctx.adopt, see
-- adopt_lost). When it works and neither the slot's pending nor its current secret does (its
-- request ended them), it becomes the pending secret of the rotation in progress, or of a new
-- one, and the steps from verify finish that rotation. Without a secret (ctx.adopt.version nil:
-- the mint's outcome is unknown), when nothing the slot holds works, the run rotates the slot
-- again ("repaired"). ctx.adopt.outcome says what was done: "adopted", "repaired", "slot_works",
-- "refused" or "unknown"; the last three leave the slot as it is.
-- true | nil, err (the record could not be written).
local function adopt(ctx)
  local rec, a = ctx.record, ctx.adopt
  local v, versions = a.version, ctx.record.versions
  for _, label in ipairs { "pending", "current" } do
    local have = versions[label]
    if have then
      local works = honoured(ctx, have)
      if works ~= false then
        a.outcome = works and "slot_works" or "unknown"
        return true
      end
    end
  end
  if not v then
    -- a mint of unknown outcome went out, and nothing the slot holds works: rotate it again (a
    -- pending secret refused is dropped first: no run would mint while it is there)
    if versions.pending then
      local ok, err = forget_pending(ctx, "the pending secret of %s is refused after a mint of unknown outcome "
        .. "went out when this rotor's lock had lapsed: dropped, and a new one is minted")
      if not ok then return nil, err end
    end
    a.outcome = "repaired"
    return true
  end
  local works = honoured(ctx, v)
  if not works then
    a.outcome = works == false and "refused" or "unknown"
    return true
  end
  local now = timefmt.iso()
  local rot = rec.rotation
  if not rot then
    rot = { id = new_rotation_id(), strategy = ctx.strategy.name, started = now }
    rec.rotation = rot
    ctx:journal("rotation", "start", ctx.strategy.name, nil, nil, true)
  end
  rot.step = "verify"
  rot.mint = rot.mint or { op = "adopt", time = now }
  rot.mint.state = "done"
  a.outcome = "works"
  local replaced = versions.pending
  versions.pending = { client_id = v.client_id, secret = v.secret, created = now, expires = timefmt.checked(v.expires),
                       meta = v.meta or {}, rotation = rot.id }
  local ok, err = ctx:journal("create", "adopted", ("a secret minted by rotation %s after its lock lapsed, which it "
    .. "could not store: it works, and the slot's %s secret is refused; stored as pending"):format(
    tostring(a.rotation), replaced and "pending" or "current"), v.secret, v.client_id)
  if not ok then return nil, err end
  a.outcome = "adopted"
  return true
end

local function run(ctx)
  -- the journal kept as text where the store can: the rotation only appends to it
  local rec, err = record_mod.read(ctx.store, ctx.slot, { journal_as_text = true })
  if rec == nil then return nil, err end
  if not rec then rec = empty_record(ctx.slot, ctx.provider) end
  ctx.record = rec
  if rec.provider and rec.provider ~= ctx.provider.provider then
    return nil, errors.new { kind = "config", message = ("slot %s holds a %s credential, not %s"):format(
      ctx.slot, tostring(rec.provider), ctx.provider.provider) }
  end
  rec.provider = ctx.provider.provider
  -- (a secret minted under a lock that lapsed is stored whatever the policy says: see adopt)
  if ctx.opts.only_if_due and not ctx.opts.dry_run and not ctx.adopt then
    -- decided again under the lock, on the record as it is now
    local due, reason = ctx.opts.only_if_due(rec)
    if not due then ctx.skipped = reason or "not due"; return true end
  end
  local strat = ctx.strategy
  local rot = rec.rotation
  if rot and rot.strategy ~= strat.name then
    return nil, errors.new { kind = "config", message = ("slot %s has an unfinished %s rotation (%s); finish it "
      .. "with strategy = %q first"):format(ctx.slot, tostring(rot.strategy), tostring(rot.id),
      tostring(rot.strategy)) }
  end
  if ctx.opts.drop_pending and rot and rec.versions.pending and not ctx.opts.dry_run then
    local dok, derr = drop_pending(ctx)
    if not dok then return nil, derr end
  end
  ctx.own = strat.own_credential(ctx)
  if not rec.versions.pending then
    -- invariant: never mint where an answer lost on the way could not be recovered from
    local why_not = strat.refuse(ctx)
    if why_not then
      return nil, errors.new { kind = "config", message = ("slot %s: %s; nothing was sent"):format(ctx.slot, why_not) }
    end
  end
  local client = not rot and ctx:client_id()
  if type(client) == "string" and client ~= "" then
    -- one credential, one slot: no other slot of the store holds the client (rotor.record)
    local key = record_mod.client_key(ctx.provider.provider, client)
    -- the slot's first rotation of the client claims it under the store's lock on it, held until
    -- the slot's record as stored holds the client (Ctx:persist)
    local ok, held = record_mod.claim_client(ctx.store, key, ctx.slot, not ctx.opts.dry_run,
      not record_mod.clients(rec)[key])
    if not ok then return nil, held end
    if not ctx.opts.dry_run then ctx.client_key = key end
    if held ~= nil then ctx.client_lock = held end
  end
  local cur = rec.versions.current
  -- the store, not the bootstrap configuration, holds the live credential
  if ctx.own and cur and cur.secret and not ctx.opts.dry_run then
    ctx.provider:set_credentials(cur.client_id, cur.secret)
  end
  if ctx.opts.dry_run then
    ctx.plan = plan(ctx)
    return true
  end
  if ctx.adopt then
    local aok, aerr = adopt(ctx)
    if not aok then return nil, aerr end
    if ctx.adopt.outcome ~= "adopted" and ctx.adopt.outcome ~= "repaired" then
      ctx.skipped = "nothing to store"
      return true
    end
    rot = rec.rotation
  end
  if not rot and type(ctx.provider.token) == "function" then
    -- a missing credential, a wrong URL or an unreachable host fails here, before anything is
    -- journalled: a slot is never marked as failed by a run that could not have started
    local tok, terr = ctx.provider:token()
    if not tok then
      -- a token request abandoned on a signal: the slot was not started (rotor rotate reports so)
      local stopped = errors.is(terr) and terr.kind == "interrupted" or nil
      return nil, errors.with(terr, { slot = ctx.slot, not_started = stopped, message = ("%s: %s; nothing was started")
        :format(ctx.slot, tostring(errors.is(terr) and terr.message or terr)) })
    end
  end
  if not rot then
    local sok, serr = ctx:search_unfound(timefmt.now())
    if not sok then ctx.warnings[#ctx.warnings + 1] = tostring(serr) end
    local cok, cerr = strat.cleanup(ctx)
    if not cok then ctx.warnings[#ctx.warnings + 1] = tostring(cerr) end
  end
  if not rot then
    if not cur then
      -- the credential in use before rotor's first rotation: recorded (without its secret) so that
      -- promote keeps it as `previous` and retire can act on it
      rec.versions.current = { client_id = strat.default_client_id(ctx), meta = { imported = true } }
    end
    rot = { id = new_rotation_id(), strategy = strat.name, started = timefmt.iso(), step = "create" }
    rec.rotation = rot
    local ok, jerr = ctx:journal("rotation", "start", strat.name, nil, nil, true)
    if not ok then return nil, jerr end
  elseif not (ctx.adopt and ctx.adopt.outcome == "adopted") then
    ctx:journal("rotation", "resume", "at step " .. tostring(rot.step), nil, nil, true)
  end
  for i = STEP_INDEX[rot.step] or 1, #STEPS do
    local name = STEPS[i]
    rot.step = name
    if core.interrupted() then
      -- SIGINT/SIGTERM in the rotor host: stop between steps, never inside one
      ctx:journal(name, "interrupted", "stopped on a signal before this step")
      return nil, errors.new { kind = "interrupted", slot = ctx.slot, step = name, rotation = rot.id,
        message = ("%s: stopped on a signal before step %s; the next run resumes there"):format(ctx.slot, name) }
    end
    ctx:crash(name, "before")
    local pok, ok, serr = pcall(step[name], ctx)
    if not pok then
      -- a Lua error inside a step (a bug, or a value of an unexpected shape): a failure like any other
      ok, serr = nil, errors.new { kind = "internal", message = "unexpected error: " .. redact(ok) }
    end
    if not ok then
      local kind = errors.is(serr) and serr.kind or "protocol"
      -- a step stopped by a signal (a deploy command passed it on) is interrupted, as between steps
      if kind ~= "interrupted" then
        rec.last = { rotation = rot.id, outcome = "failed", step = name, time = timefmt.iso() }
      end
      -- The slot's first rotation failed at create and nothing was minted (no mint, or one refused
      -- outright): the slot gives up the client it had only taken from the target, and the
      -- rotation, so that the next run starts afresh from the target as it is then. Kept, a
      -- mistyped target.client_id would be the slot's for good, correcting it would change nothing.
      local imported = rec.versions.current
      local afresh = name == "create" and kind ~= "interrupted" and kind ~= "ambiguous" and not rec.versions.pending
        and type(imported) == "table" and type(imported.meta) == "table" and imported.meta.imported
        and imported.secret == nil and not (rot.mint and (UNKNOWN_MINT[rot.mint.state] or rot.mint.state == "dropped"))
      if afresh then
        ctx.rotation_id = rot.id
        rec.rotation, rec.versions.current = nil, nil
      end
      ctx:journal(name, (kind == "ambiguous" or kind == "interrupted") and kind or "failed",
                  errors.is(serr) and serr.message or tostring(serr))
      ctx.failed_step = name
      if not errors.is(serr) then serr = errors.new { kind = "protocol", message = tostring(serr) } end
      local tail = afresh and ("; nothing was minted. The slot holds no client yet: the next run starts afresh "
        .. "from the target (check %s: %s)"):format(ctx.target.client_id == imported.client_id and "target.client_id"
        or "the client id", tostring(imported.client_id)) or ""
      return nil, errors.with(serr, { slot = ctx.slot, step = name, rotation = rot.id,
        message = ("%s: %s failed: %s%s"):format(ctx.slot, name, tostring(serr.message), tail) })
    end
    rot.step = STEPS[i + 1] or "done"
    ctx:crash(name, "after")
  end
  rec.rotation = nil
  rec.last = { rotation = rot.id, outcome = "ok", time = timefmt.iso(), strategy = strat.name }
  ctx.rotation_id = rot.id
  local ok, ferr = ctx:journal("rotation", "done", strat.summary(ctx))
  if not ok then return nil, ferr end
  return true
end

local rotate

-- How long a rotor whose lock lapsed waits for the slot's lock to store the secret it minted then
-- (s): the rotor that took the slot over is finishing a rotation, which takes seconds.
_M.ADOPT_WAIT = 60

-- A rotation whose lock lapsed holds a secret it minted and could not store (ctx.lost_minted), or
-- sent a mint whose outcome is unknown. For a strategy that gives the slot's client a new secret,
-- its request may have ended the secret the slot holds now: it takes the slot's lock again
-- (waiting up to ADOPT_WAIT for the rotor holding it) and, when nothing the slot holds works,
-- stores its secret there, or rotates the slot again when it has none (adopt).
-- -> res of that run (a finished rotation) | nil, adoption { outcome =, err = }: "new_client" (a
-- credential of its own, not the slot's client), "not_stored" (the lock or the record could not be
-- had: err), "works" (it works and the slot's does not, but writing it failed: err), "adopted" (stored
-- as pending; the rest of that rotation failed: err), or adopt's other outcomes
local function adopt_lost(o, ctx)
  local v = ctx.lost_minted
  if v and not ctx:stored_client(v.client_id, { "current" }) then return nil, { outcome = "new_client" } end
  local a = { version = v, rotation = ctx.record.rotation and ctx.record.rotation.id }
  local deadline = core.now() + _M.ADOPT_WAIT
  local res, err
  while true do
    res, err = rotate(o, a)
    if res or not (errors.is(err) and err.kind == "locked") or core.now() >= deadline then break end
    if not require("rotor.sched").sleep(1, true) then break end
  end
  if not res then a.err = err end
  a.outcome = a.outcome or "not_stored"
  if res and (a.outcome == "adopted" or a.outcome == "repaired") then return res end
  return nil, a
end

function rotate(o, adopting)
  check_opts(o)
  local strat = _M.strategy(o.provider.provider, o.strategy)
  local ctx = setmetatable({
    slot = o.slot, provider = o.provider, store = o.store, target = o.target or {}, opts = o,
    strategy = strat, steps = {}, warnings = {}, crash_at = crash_points(),
    log = type(o.log) == "function" and o.log or nil, adopt = adopting,
  }, Ctx)
  strat.check(ctx)
  if o.dry_run then
    local ok, err = run(ctx)
    if not ok then return nil, err end
    local out = type(o.print) == "function" and o.print or function(line) io.stdout:write(line, "\n") end
    for _, line in ipairs(ctx.plan) do out("[dry run] " .. o.slot .. ": " .. line) end
    local res = result(ctx)
    res.dry_run, res.plan = true, ctx.plan
    return res
  end
  local lock, lerr = o.store:lock(o.slot)
  if not lock then return nil, lerr end
  ctx.lock = lock
  local aerr
  ctx.audit, aerr = open_audit(o)
  if aerr then
    lock:unlock()
    return nil, aerr
  end
  local pok, ok, err = pcall(run, ctx)
  if ctx.client_lock then ctx.client_lock:unlock() end
  if ctx.client_key then record_mod.release_client(o.store, ctx.client_key, o.slot, ctx.record) end
  if not pok and errors.is(ok) and ok.kind == "config" then
    -- a strategy's error of kind config, raised where a value is first needed (a new slot's client):
    -- the caller's to fix; nothing was started, so nothing is journalled
    err = errors.with(ok, { slot = o.slot, message = ("%s: %s"):format(o.slot, redact(ok.message)) })
    ok = nil
  elseif not pok then
    -- a Lua error outside the steps: journalled, `last` set and notified like any failure
    err = errors.new { kind = "internal", slot = o.slot, message = ("%s: unexpected error: %s"):format(
      o.slot, redact(ok)) }
    ok = nil
    local rec = ctx.record
    if type(rec) == "table" and type(rec.journal) == "table" then
      rec.last = { rotation = rec.rotation and rec.rotation.id, outcome = "failed",
                   step = rec.rotation and rec.rotation.step, time = timefmt.iso() }
      pcall(ctx.journal, ctx, "rotation", "failed", err.message)
    end
  end
  lock:unlock()
  if ok and ctx.skipped then return { slot = o.slot, skipped = true, reason = ctx.skipped } end
  if not ok and lock.fenced then
    local message
    local frot = ctx.record and ctx.record.rotation
    -- (once: the run that adopts or repairs, fenced in turn, only says so)
    if not adopting and (ctx.lost_minted or (frot and frot.mint and frot.mint.state == "ambiguous")) then
      local res, adoption = adopt_lost(o, ctx)
      local what = ctx.lost_minted and ("this run's lock on the slot lapsed while it minted, and another rotor "
        .. "rotated the slot meanwhile; the secret minted then works and the slot's did not, so it was stored as "
        .. "pending under the lock taken again") or ("this run's lock on the slot lapsed while it minted (the "
        .. "outcome is unknown), and another rotor rotated the slot meanwhile; then nothing the slot held worked, so "
        .. "it was rotated again under the lock taken again")
      if res then
        res.warnings[#res.warnings + 1] = what .. " (rotation " .. tostring(res.rotation) .. ")"
        return res
      elseif adoption.outcome == "adopted" or adoption.outcome == "repaired" then
        -- stored; the rest of that rotation failed, and its error (already notified) says what follows
        return nil, errors.with(adoption.err, { message = what .. ". Then: " .. tostring(errors.is(adoption.err)
          and adoption.err.message or adoption.err) })
      end
      message = lost_after_fence(ctx, lock.fenced, adoption)
    end
    err = errors.with(lock.fenced, { step = ctx.failed_step, message = message })
  end
  if not ok then
    err = errors.with(err, { message = redact(errors.is(err) and err.message or err),
                             detail = errors.is(err) and redact(err.detail) or nil })
    notify(ctx, false, err, ctx.failed_step)
    return nil, err
  end
  notify(ctx, true)
  local res = result(ctx)
  if ctx.audit_error then res.warnings[#res.warnings + 1] = "audit: " .. tostring(ctx.audit_error) end
  local dies = require("rotor.config").old_dies(ctx.provider.provider, strat.name)
  if dies and o.deploy == nil and o.consumers ~= "none" then
    res.warnings[#res.warnings + 1] = ("strategy %s: the old secret stopped working %s and no deploy hook handed "
      .. "the new one to its consumers (set deploy, or consumers = \"none\" when nothing else uses it)")
      :format(strat.name, dies)
  end
  return res
end

--- rotor.rotate{ slot, provider, store, target, strategy, deploy, dry_run, wait, audit, notify,
--                grace, force_mint, verify_attempts, log } -> res | nil, err
function _M.rotate(o)
  return rotate(o)
end

------------------------------------------------------------------------------------------------

--- rotor.due(slot_record_or_name, { max_age_days=, before_expiry_days= }, store)
-- -> due (boolean), reason (string), info { age_days, expires_in_days, next_due, rule }.
-- The rules are rotor.policy's (lua/rotor/policy.lua, doc/CONFIG.md).
function _M.due(slot, opts, store)
  local rec = slot
  if type(slot) == "string" then
    if store == nil then error("rotor.due: a store is needed to look up slot " .. slot, 2) end
    local err
    rec, err = record_mod.read(store, slot)
    if rec == nil then return nil, err end
    if not rec then return true, "no such slot: never rotated", {} end
  elseif type(slot) ~= "table" then
    error("rotor.due: a slot record or a slot name expected", 2)
  end
  return require("rotor.policy").due(rec, opts)
end

return _M
