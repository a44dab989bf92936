-- The embedded default store: one JSON file per slot in a 0700 directory.
--
--   local store = rotor.store.file("./secrets")
--   store:get(slot)          -> record | false (no such slot) | nil, err
--   store:put(slot, record)  -> true | nil, err      (temp file, fsync, rename, directory fsync;
--                                                     inside rotor.parallel, the puts of all tasks
--                                                     group-committed off the event loop)
--   store:lock(slot)         -> lock (lock:unlock()) | nil, err (kind "locked" when held)
--   store:lock_client(key)   -> lock, claimed_by | nil, err   (a client's claim: rotor.record)
--   store:list()             -> { slot names } | nil, err
--   store:audit_path(), store:audit_key()   the audit trail and its fingerprint key (0600)
--   store:audit_tail(n), store:audit_read()  its last n bytes, its text (false: none yet)
--
-- A record is { slot=, provider=, versions={current=, pending=, previous=}, journal={...},
-- rotation=, last= }; each version { client_id, secret, created, expires, meta }. The secret is
-- plain text inside the 0600 file (this is the store) and a rotor.secret when read back.
local core = require "rotor.core"
local json = require "rotor.json"
local errors = require "rotor.errors"
local record_mod = require "rotor.record"
local sched = require "rotor.sched"
local seal = require "rotor.store.seal"

local naming = require "rotor.store.naming"
local split_journal = core.json_journal_split
local _M = {}

local Store = {}
Store.__index = Store
-- get checks every record it reads (record.validate), naming the file: rotation need not again
Store.checks_records = true
_M.class = Store

local VERSION_LABELS = { "current", "pending", "previous" }
_M.VERSION_LABELS = VERSION_LABELS

local MAX_SLOT = 200

--- Check a slot name: a non-empty string of at most 200 bytes, no control characters.
function _M.check_slot(slot, level)
  if type(slot) ~= "string" or slot == "" or #slot > MAX_SLOT or slot:find("%c") then
    error("store: a slot name (1-200 printable bytes) expected, got " .. type(slot), (level or 1) + 1)
  end
  return slot
end

--- The file name of a slot, and back (rotor.store.naming)
_M.encode = naming.encode
_M.decode = naming.decode

--- The slot a store's file (or etcd key) names, or nil when the name is not one rotor writes: it
-- does not decode to a valid slot name, or the slot would be written under another name. Such
-- a file is no slot's: listing skips it (rotor doctor names it), and no slot name with control
-- characters ever reaches a terminal.
function _M.slot_of(base)
  local slot = naming.decode(base)
  if slot == "" or #slot > MAX_SLOT or slot:find("%c") or naming.encode(slot) ~= base then return nil end
  return slot
end

-- the options of rotor.store.file(dir, opts)
local OPTIONS = { "journal_max", "read_only", "trusted", "key_file", "key_env", "old_key_files", "old_key_envs" }
local MIN_JOURNAL, MAX_JOURNAL = 20, 100000

--- A store's journal_max (the file and etcd stores): nil (200) or a whole number of entries, at
-- least enough for a few rotations (rotor doctor finds orphaned mints in them), at most max
-- (default MAX_JOURNAL; why_max says where a store's own bound comes from). true | nil, why.
function _M.check_journal_max(v, max, why_max)
  max = max or MAX_JOURNAL
  if v == nil or (type(v) == "number" and v == math.floor(v) and v >= MIN_JOURNAL and v <= max) then
    return true
  end
  return nil, ("journal_max: a whole number of entries from %d to %d expected%s, got %s"):format(MIN_JOURNAL,
    max, why_max or "", tostring(v))
end

--- The problems of a file store's options, as a list of strings (empty when they are fine). extra
-- lists other keys the caller's table may hold (a config file's kind and path).
function _M.check(opts, extra)
  local names = {}
  for _, n in ipairs(OPTIONS) do names[#names + 1] = n end
  for _, n in ipairs(extra or {}) do names[#names + 1] = n end
  local out = {}
  out[#out + 1] = require("rotor.keys").unknown_key(opts, names, "option")
  local ok, why = _M.check_journal_max(opts.journal_max)
  if not ok then out[#out + 1] = why end
  if opts.read_only ~= nil and type(opts.read_only) ~= "boolean" then
    out[#out + 1] = "read_only: true or false expected"
  end
  if opts.trusted ~= nil and type(opts.trusted) ~= "table" then
    out[#out + 1] = "trusted: an array of directory paths expected"
  elseif opts.trusted ~= nil then
    for i, t in ipairs(opts.trusted) do
      local bad = (type(t) ~= "string" or t == "") and "a directory path expected"
        or require("rotor.store").unexpanded(t)
      if bad then out[#out + 1] = ("trusted[%d]: %s"):format(i, bad) end
    end
  end
  return seal.problems(opts, out)
end

-- the OS's reason (detail) is part of the message: "cannot write slot x: No space left on device"
local function store_error(message, detail)
  if detail ~= nil and not message:find(tostring(detail), 1, true) then
    message = message .. ": " .. tostring(detail)
  end
  return errors.new { kind = "store", message = message, detail = detail }
end

--- rotor.store.file(dir[, opts]) -> store | nil, err. opts: journal_max, read_only (open an
-- existing store, or none, and never create, chmod or write anything), trusted (directories on
-- the way whose owner the caller vouches for). Without read_only the directory is created 0700
-- (mkdir -p) and tightened to 0700 if it exists. Either way the trust rule (doc/STORES.md) is
-- checked first: a directory rotor cannot trust is refused, naming the path and the reason.
function _M.new(dir, opts)
  if type(dir) ~= "string" or dir == "" then
    error("rotor.store.file: a directory path expected", 2)
  end
  local tilde = require("rotor.store").unexpanded(dir)
  if tilde then error("rotor.store.file: " .. tilde, 2) end
  if opts ~= nil and type(opts) ~= "table" then error("rotor.store.file: opts must be a table", 2) end
  opts = opts or {}
  local problems = _M.check(opts)
  if problems[1] then error("rotor.store.file: " .. table.concat(problems, "; "), 2) end
  dir = dir:gsub("(.)/+$", "%1")
  -- { key_file = | key_env = }: secrets sealed at rest (rotor.store.seal)
  local ring, kerr
  if seal.configured(opts) then
    ring, kerr = seal.keyring(opts)
    if not ring then return nil, kerr end
  end
  local self = setmetatable({ dir = dir, kind = "file", journal_max = opts.journal_max or 200,
                              read_only = opts.read_only or false, trusted = opts.trusted, ring = ring }, Store)
  local d, msg, errno = core.fs_dir(dir, not self.read_only, self.trusted)
  if d then
    self.fd = d
    if not self.read_only then
      local ok, cerr = d:chmod(448) -- 0700, through the descriptor
      if not ok then return nil, store_error("cannot set the store directory to 0700", cerr) end
    end
  elseif not (self.read_only and errno == 2) then -- ENOENT: a read-only view of no store
    return nil, store_error("refusing the store directory " .. dir, msg)
  end
  return self
end

-- the directory, or nil, err when this store may not write
local function writable(self, what)
  if self.read_only then
    return nil, store_error("the store " .. self.dir .. " was opened read-only: cannot " .. what)
  end
  return self.fd
end

function Store:__tostring()
  return "rotor.store.file(" .. self.dir .. ")"
end

local function file_name(slot, ext)
  return _M.encode(_M.check_slot(slot, 3)) .. ext
end

function Store:path(slot)
  return self.dir .. "/" .. file_name(slot, ".json")
end

--- The shell command that moves a slot's record aside, so that the next rotation starts the slot
-- afresh (rotor doctor's advice for a record that cannot be read). quote: the caller's quoting.
function Store:aside_command(slot, quote)
  local path = self:path(slot)
  return ("mv %s %s"):format(quote(path), quote(path .. ".corrupt"))
end

-- secrets in a record read from disk become rotor.secret values; split: its journal's entries as
-- text ({ "E1,...,En", n }: core.json_journal_split), kept as such until read
local function wrap(record, split)
  local versions = type(record.versions) == "table" and record.versions or {}
  record.versions = versions
  for _, label in ipairs(VERSION_LABELS) do
    local v = versions[label]
    if v == json.null then
      versions[label] = nil
    elseif type(v) == "table" and type(v.secret) == "string" then
      v.secret = core.secret(v.secret)
    end
  end
  if record.rotation == json.null then record.rotation = nil end
  if record.last == json.null then record.last = nil end
  if split then return record_mod.journal_from_text(record, split[1], split[2]) end
  if type(record.journal) ~= "table" then record.journal = {} end
  return record
end

-- how a secret is written into the store file (and only there): its plain text
local function reveal(v)
  if core.is_secret(v) then return v:reveal() end
  return v
end

--- A record a store read back for slot, made ready for its readers. record and jerr are what JSON
-- decoding gave (the value, or nil and the error). Its sealed secrets are opened with ring, it is
-- checked against the record's one schema (rotor.record.validate), and its secrets become
-- rotor.secret values. For every store that checks what it reads (the file and etcd stores).
-- Returns record | nil, err (a secret that cannot be opened) | nil, nil, why (not a valid record:
-- the caller's error names its file or key). split (optional): the record's journal entries as
-- text (see wrap), its journal then (record itself holding none).
function _M.open_record(ring, slot, record, jerr, split)
  if type(record) ~= "table" then return nil, nil, jerr and "malformed JSON" or "not an object" end
  local opened, serr = seal.open_versions(ring, record, slot)
  if not opened then return nil, serr end
  local valid, why = record_mod.validate(record)
  if not valid then return nil, nil, why end
  return wrap(record, split)
end

-- A record file's text decoded. as_text: its journal split off as the text of its entries when
-- the file is written as this store writes it (the journal first, entries of strings only); else,
-- and otherwise, decoded whole. record, jerr (json.decode's), { entries, count } | nil.
local function decode_record(text, as_text)
  local entries, count, rest
  if as_text then entries, count, rest = split_journal(text) end
  if entries then
    local record = json.decode(rest)
    if type(record) == "table" and record.journal == nil then return record, nil, { entries, count } end
  end
  local record, jerr = json.decode(text)
  return record, jerr
end

--- store:get(slot[, opts]) -> record | false | nil, err. opts.journal_as_text: the record's
-- journal may be kept as the texts of its entries, decoded when record.journal is first read
-- (rotor.record's journal functions change it; a rotation reads its slot so).
function Store:get(slot, opts)
  local name = file_name(slot, ".json")
  if not self.fd then return false end
  local text, msg = self.fd:read(name)
  if text == false then return false end
  if not text then return nil, store_error("cannot read slot " .. slot, msg) end
  local decoded, jerr, split = decode_record(text, type(opts) == "table" and opts.journal_as_text)
  local record, serr, why = _M.open_record(self.ring, slot, decoded, jerr, split)
  text = nil -- luacheck: ignore 311
  if record then return record end
  if serr then return nil, serr end
  return nil, store_error(("slot %s holds no valid record: %s (file %s); nothing was changed. Restore the "
    .. "file from a backup, or move it away to start the slot afresh (rotor doctor shows the slot)")
    :format(slot, why, self:path(slot)), why)
end

--- Keep only the last max entries of a record's journal (in the record itself: a store's writes
-- and the record in memory stay bounded). For every store.
function _M.trim_journal(record, max)
  local journal = record.journal
  if type(journal) == "table" then
    local n = #journal
    -- copied in C: a full journal is trimmed by one or two entries on every put
    if n > max then record.journal = table.move(journal, n - max + 1, n, 1, {}) end
  end
end

-- The text of a record's journal (its last max entries) without the brackets, as a rope (see
-- rotor.record.journal_rope), or nil when it is not a list: from the text it was read from when
-- it is kept so, else encoded (a secret in an entry is an error: leaf does not reach into the
-- journal).
local function journal_text(record, max)
  local rope = record_mod.journal_rope(record, max, json.encode)
  if rope then return rope end
  _M.trim_journal(record, max)
  local journal = record.journal
  if journal == nil or (type(journal) == "table" and next(journal) == nil) then return {} end
  -- flat: the entries hold only strings, no walk for secrets or empty arrays into each of them
  local text = type(journal) == "table" and json.encode(journal, nil, journal)
  return text and text:sub(1, 1) == "[" and { { text, 2, #text - 1 } } or nil
end

-- The file text of a record, as a rope (pieces joined only where it is written: a record holds its
-- journal, tens of kilobytes for a slot rotated for long): its journal first, so that the next
-- read can find it (decode_record), and how many bytes it takes ('{"journal":[...]': they hold no
-- secret, so that once the file is displaced only the bytes after them need zeroing; see
-- sched.durable). The record's own tables are sealed where the store seals; json.encode reveals
-- the secrets left as it walks them (one walk, no copy of the record).
local function encode_record(self, slot, record)
  local rope = journal_text(record, self.journal_max)
  local top = seal.record_to_write(self.ring, record, slot)
  if not rope then return json.encode(top, reveal), 0 end
  top.journal = nil
  local rest = json.encode(top, reveal)
  table.insert(rope, 1, '{"journal":[')
  rope[#rope + 1] = "]"
  local keep = 0
  for _, piece in ipairs(rope) do
    keep = keep + (type(piece) == "string" and #piece or piece[3] - piece[2] + 1)
  end
  rope[#rope + 1] = rest == "{}" and "}" or ","
  if rest ~= "{}" then rope[#rope + 1] = { rest, 2, #rest } end
  return rope, keep
end

function Store:put(slot, record)
  if type(record) ~= "table" then error("store:put: a record table expected", 2) end
  local name = file_name(slot, ".json")
  local d, werr = writable(self, "write slot " .. tostring(slot))
  if not d then return nil, werr end
  local ok, text, keep = pcall(encode_record, self, slot, record)
  if not ok then error("store:put: the record cannot be encoded: " .. tostring(text), 2) end
  local done, msg = sched.durable("atomic", d, name, text, 384, keep) -- 0600; group-committed in a batch
  if not done then return nil, store_error("cannot write slot " .. slot, msg) end
  return true
end

-- Take the lock file `name` for `what` ("slot S", or a client key): lock[, note] | nil, err, with
-- locked(" (pid P)" | "") the error when another process holds it.
local function take_lock(self, name, what, locked)
  local d, werr = writable(self, "lock " .. what)
  if not d then return nil, werr end
  local lock, why, pid = d:lock(name)
  if lock then return lock, why end
  if why == "locked" then return nil, locked(pid and (" (pid " .. tostring(pid) .. ")") or "") end
  return nil, store_error("cannot lock " .. what, why)
end

function Store:lock(slot)
  return take_lock(self, file_name(slot, ".lock"), "slot " .. tostring(slot), function(holder)
    return errors.new { kind = "locked", message = ("slot %s is locked by another rotor%s: a rotation of it is running "
      .. "now; nothing was done — run again once that one has finished"):format(slot, holder) }
  end)
end

--- store:lock_holder(slot) -> false (no rotor holds the slot's lock) | { pid = P } (pid when the
-- lock file names it) | nil, err. Creates nothing: only a lock file that exists is tried (rotor
-- doctor, on a store opened read-only).
function Store:lock_holder(slot)
  local name = file_name(slot, ".lock")
  if not self.fd or not core.fs_exists(self.dir .. "/" .. name) then return false end
  local lock, why, pid = self.fd:lock(name)
  if lock then
    lock:unlock()
    return false
  end
  if why == "locked" then return { pid = pid } end
  return nil, store_error("cannot try the lock of slot " .. tostring(slot), why)
end

--- store:lock_client(key) -> lock, claimed_by | nil, err (kind "locked" when held): the lock on a
-- client (record.client_key) that a slot's first rotation of it takes (rotor.record.claim_client).
-- claimed_by: the slot that the last holder named (lock:set_note(slot)), or nil. The lock file is
-- .client-<key>.lock: no slot's file name starts with a dot, and listing skips it.
function Store:lock_client(key)
  local name = ".client-" .. _M.encode(key) .. ".lock"
  if #name > 200 then name = ".client-" .. core.hmac_sha256_hex("rotor client lock", key) .. ".lock" end
  return take_lock(self, name, tostring(key), function(holder) return record_mod.client_locked(key, holder) end)
end

function Store:list()
  if not self.fd then return {} end
  local names, msg = self.fd:list()
  if not names then return nil, store_error("cannot list the store", msg) end
  local out, strays = {}, {}
  for _, n in ipairs(names) do
    -- temporary files are NAME.json.tmp.XXXXXXXXXXXX: never a .json name
    local base = n:match("^(.*)%.json$")
    if base then
      local slot = _M.slot_of(base)
      if slot then out[#out + 1] = slot else strays[#strays + 1] = n end
    end
  end
  table.sort(out)
  table.sort(strays)
  return out, strays
end

function Store:audit_path()
  return self.dir .. "/audit.log"
end

-- d:read or d:tail of the audit trail, opened as the append opens it: relative to the store
-- directory, following no link, a regular file only; false when there is none yet
local function read_trail(self, how, ...)
  if not self.fd then return false end
  local v, msg = self.fd[how](self.fd, "audit.log", ...)
  if v == nil then return nil, store_error("cannot read the audit trail", msg) end
  return v
end

--- The last n bytes of the audit trail (false when there is none yet).
function Store:audit_tail(n) return read_trail(self, "tail", n) end

--- The audit trail's text (false when there is none yet).
function Store:audit_read() return read_trail(self, "read") end

--- Append a line to the audit trail (O_NOFOLLOW, relative to the store directory, 0600).
-- later = true: returns at once a ticket whose ticket:wait() gives the result, the append queued for the
-- next group commit (see sched.durable_later), so that it can go to disk with the record put
-- that follows it.
function Store:audit_append(line, later)
  local d, werr = writable(self, "append to the audit trail")
  if not d then return nil, werr end
  local ticket = sched.durable_later("append", d, "audit.log", line, 384)
  local function wait()
    local ok, msg = ticket:wait()
    if not ok then return nil, store_error("cannot append to the audit trail", msg) end
    return true
  end
  if later then return { wait = function() return wait() end } end -- ticket:wait(), as sched's
  return wait()
end

--- The per-store key for audit fingerprints (64 hex chars in DIR/.audit-key, 0600), made once.
function Store:audit_key()
  if self._audit_key then return self._audit_key end
  local key, rerr = false, nil
  if self.fd then key, rerr = self.fd:read(".audit-key") end
  if key == nil then return nil, store_error("cannot read the audit key", rerr) end
  if not key or #key < 32 then
    local d, werr = writable(self, "make the audit key")
    if not d then return nil, werr end
    local fresh = core.random_hex(32)
    local ok, msg = d:write(".audit-key", fresh, 384)
    if not ok then return nil, store_error("cannot write the audit key", msg) end
    key = fresh
  end
  self._audit_key = key:gsub("%s+$", "")
  return self._audit_key
end

return _M
