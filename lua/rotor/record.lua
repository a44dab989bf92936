-- The slot record: its one schema, checked whenever a record is read, whatever the store.
--
--   { slot = <string>, provider = <string>, schema = 1,
--     versions = { current = V, pending = V, previous = V },      -- each optional
--     journal = { { step=, outcome=, time=, rotation=, note= }, ... },         -- objects (of strings)
--     rotation = { id=, strategy=, started=, step=, mint = { state=, op=, time=, at=<number>, ... } } | nil,
--     last = { rotation=, outcome=, step=, time=, strategy= } | nil,          -- strings, each optional
--     retiring = { { client_id=, delete_after= }, ... } | nil,                -- both set, strings
--     unfound = { { name=, strategy=, since=, what=, rotation= }, ... } | nil } -- strings, first 3 set
--   V = { client_id = <string>, secret = <secret>, created=, expires=, promoted=, rotation=, meta = {} }
--   (client_id and secret are never empty; a pending version holds both)
--
-- validate(record) -> true | nil, "<field>: <problem>" (the first problem found).
-- read(store, slot[, opts]) -> record | false (no such slot) | nil, err: store:get, the record checked.
-- journal_append(rec, entry), journal_drop_last(rec): a rotation's changes to rec.journal, which
-- may be kept as text (journal_from_text, journal_rope: the file store's; see below).
local core = require "rotor.core"

local _M = {}

local LABELS = { "current", "pending", "previous" }
_M.LABELS = LABELS

local STEPS = { create = true, verify = true, deploy = true, promote = true, retire = true, done = true }

-- types: "string", "secret string", ... (a secret is a rotor.secret value); the parsed sets are
-- kept, one per spelling
local type_sets = {}
local function opt(v, types)
  if v == nil then return true end
  local set = type_sets[types]
  if not set then
    set = {}
    for t in types:gmatch("%a+") do set[t] = true end
    type_sets[types] = set
  end
  return set[type(v)] == true or (set.secret == true and core.is_secret(v))
end

local VERSION_FIELDS = { client_id = "string", secret = "secret string", created = "string",
                         expires = "string number", promoted = "string", rotation = "string", meta = "table" }
-- what rotor writes in these entries is text; a reader prints, compares and parses them as such
local LAST_FIELDS = { rotation = "string", outcome = "string", step = "string", time = "string", strategy = "string" }
local RETIRING_FIELDS = { client_id = "string", delete_after = "string" }
local UNFOUND_FIELDS = { name = "string", strategy = "string", since = "string", what = "string", rotation = "string" }
local ROTATION_FIELDS = { started = "string" }
local MINT_FIELDS = { op = "string", time = "string", at = "number" }

-- the first field of t whose value is not of its type: nil, "<at>.<field>: ... expected, found ..."
local function check_fields(t, fields, at)
  for k, types in pairs(fields) do
    if not opt(t[k], types) then
      return nil, ("%s.%s: %s expected, found %s"):format(at, k, types:gsub(" ", " or "), type(t[k]))
    end
  end
  return true
end

local function non_empty(t, k, at)
  if t[k] == "" then return nil, ("%s.%s: empty"):format(at, k) end
  return true
end

local function check_version(label, v)
  local at = "versions." .. label
  if type(v) ~= "table" then return nil, at .. ": an object expected, found " .. type(v) end
  local ok, why = check_fields(v, VERSION_FIELDS, at)
  if not ok then return nil, why end
  ok, why = non_empty(v, "secret", at)
  if ok then ok, why = non_empty(v, "client_id", at) end
  if not ok then return nil, why end
  -- a pending version is a minted credential waiting to be verified and deployed: it is both
  if label == "pending" then
    for _, k in ipairs { "client_id", "secret" } do
      if v[k] == nil then return nil, ("%s.%s: missing"):format(at, k) end
    end
  end
  return true
end

-- an optional array of objects, each checked against fields (when given); required names fields
-- that must be set
local function array_of(v, at, fields, required)
  if v == nil then return true end
  if type(v) ~= "table" then return nil, at .. ": an array expected, found " .. type(v) end
  for i = 1, #v do
    local e = v[i]
    if type(e) ~= "table" then return nil, ("%s[%d]: an object expected, found %s"):format(at, i, type(e)) end
    if fields then
      local here = ("%s[%d]"):format(at, i)
      local ok, why = check_fields(e, fields, here)
      if not ok then return nil, why end
      for _, k in ipairs(required or {}) do
        if e[k] == nil or e[k] == "" then return nil, ("%s.%s: missing"):format(here, k) end
      end
    end
  end
  return true
end

function _M.validate(rec)
  if type(rec) ~= "table" then return nil, "the record: an object expected, found " .. type(rec) end
  for _, k in ipairs { "slot", "provider" } do
    if not opt(rec[k], "string") then return nil, k .. ": a string expected, found " .. type(rec[k]) end
  end
  local versions = rec.versions
  if versions ~= nil then
    if type(versions) ~= "table" then return nil, "versions: an object expected, found " .. type(versions) end
    for _, label in ipairs(LABELS) do
      if versions[label] ~= nil then
        local ok, why = check_version(label, versions[label])
        if not ok then return nil, why end
      end
    end
  end
  -- a journal entry's fields are not checked one by one: a full journal (200 entries) is read with
  -- its slot every time, and that check cost 15 times the rest of the schema (50 µs against 15 µs
  -- per read here). The readers of its fields (status's history, doctor's orphans) take only text.
  local ok, why = array_of(rec.journal, "journal")
  if not ok then return nil, why end
  ok, why = array_of(rec.retiring, "retiring", RETIRING_FIELDS, { "client_id", "delete_after" })
  if ok then ok, why = array_of(rec.unfound, "unfound", UNFOUND_FIELDS, { "name", "strategy", "since" }) end
  if not ok then return nil, why end
  local rot = rec.rotation
  if rot ~= nil then
    if type(rot) ~= "table" then return nil, "rotation: an object expected, found " .. type(rot) end
    if type(rot.id) ~= "string" or rot.id == "" then return nil, "rotation.id: a string expected" end
    if type(rot.strategy) ~= "string" then return nil, "rotation.strategy: a string expected" end
    if type(rot.step) ~= "string" or not STEPS[rot.step] then
      return nil, "rotation.step: one of create, verify, deploy, promote, retire expected, found "
        .. tostring(rot.step)
    end
    if rot.mint ~= nil and (type(rot.mint) ~= "table" or type(rot.mint.state) ~= "string") then
      return nil, "rotation.mint: an object with a state expected"
    end
    ok, why = check_fields(rot, ROTATION_FIELDS, "rotation")
    if ok and rot.mint then ok, why = check_fields(rot.mint, MINT_FIELDS, "rotation.mint") end
    if not ok then return nil, why end
  end
  if rec.last ~= nil then
    if type(rec.last) ~= "table" then return nil, "last: an object expected, found " .. type(rec.last) end
    ok, why = check_fields(rec.last, LAST_FIELDS, "last")
    if not ok then return nil, why end
  end
  return true
end

--- How a client of a provider is named where slots are compared: "genesys client ID".
function _M.client_key(provider, id)
  return ("%s client %s"):format(tostring(provider), tostring(id))
end

--- The clients a record (one read, and so checked by validate) holds on to, as
-- { [client_key(provider, id)] = role }: its current and pending credentials, and those it will
-- delete (role "retiring"). Another slot that rotated one of them would kill the secret this one
-- stored, or lose its client to this one's clean-up.
function _M.clients(rec)
  local out = {}
  for _, e in ipairs(rec.retiring or {}) do out[_M.client_key(rec.provider, e.client_id)] = "retiring" end
  local versions = rec.versions or {}
  for _, label in ipairs { "pending", "current" } do
    local v = versions[label]
    if v and v.client_id then out[_M.client_key(rec.provider, v.client_id)] = label end
  end
  return out
end

--- Add the clients slot's record rec holds on to (clients(rec)) to holders, { [client_key] =
-- { [slot] = role } }, and return them: how rotor doctor and the one-slot index below find two
-- slots holding one client.
function _M.note_holders(holders, slot, rec)
  local clients = _M.clients(rec)
  for key, role in pairs(clients) do
    local h = holders[key] or {}
    holders[key] = h
    h[slot] = role
  end
  return clients
end

------------------------------------------------------------------------------------------------
-- One credential, one slot. Two slots rotating one client kill each other's secrets: the second
-- rotation's mint replaces the secret the first stored and handed out. A rotation checks, before
-- anything is sent, that no other slot of its store holds the client it rotates (record.clients)
-- and that no other rotation in this process is rotating it now (a claim, held until it ends).
-- What the store's slots hold is read once per store object and kept: then, at most every
-- HOLDERS_FRESH seconds, the store is listed again and only slots new since (or that held nothing)
-- are read, those gone forgotten; the slots this process rotates are noted as each rotation
-- ends. A slot keeps its client id for life (a strategy that makes new clients makes fresh ids),
-- so what was read stays true. A store that cannot list its slots (exec, dotenv) is not checked.

local HOLDERS_FRESH = 5
-- store -> { at = (when listed), slots = { [slot] = clients | false }, by_key = { [key] = { [slot] = role } },
--            seq = (notes made), noted = { [slot] = seq of its last note } }
local indexes = setmetatable({}, { __mode = "k" })
-- store -> { [key] = slot }: the rotations of this process in flight (apart from the index, which
-- tasks of a batch may refresh at once while a store's listing and reads wait on the network)
local claims_of = setmetatable({}, { __mode = "k" })

-- note what slot's record rec (nil: none, or unreadable) holds, in place of what it held
local function index_note(ix, slot, rec)
  for key in pairs(ix.slots[slot] or {}) do
    local h = ix.by_key[key]
    h[slot] = nil
    if next(h) == nil then ix.by_key[key] = nil end
  end
  ix.slots[slot] = rec and _M.note_holders(ix.by_key, slot, rec) or false
  ix.seq = ix.seq + 1
  ix.noted[slot] = ix.seq
end

-- the store's index, listed again when it is older than HOLDERS_FRESH | nil, err
local function index_of(store)
  local ix = indexes[store]
  local now = core.now()
  if ix and now - ix.at <= HOLDERS_FRESH then return ix end
  if not ix then
    ix = { slots = {}, by_key = {}, at = -math.huge, seq = 0, noted = {} }
    indexes[store] = ix
  end
  -- a store's listing and reads may wait (etcd), while a rotation of this process notes its slot:
  -- what was noted since this listing began is newer than what it finds
  local began = ix.seq
  local names, lerr = store:list()
  if not names then return nil, lerr end
  local listed = {}
  for _, name in ipairs(names) do
    listed[name] = true
    if not ix.slots[name] then
      -- a record that cannot be read is doctor's (and refuses its own slot's rotations)
      local ok, rec = pcall(_M.read, store, name, { journal_as_text = true })
      if (ix.noted[name] or 0) <= began then index_note(ix, name, ok and rec or nil) end
    end
  end
  for name in pairs(ix.slots) do
    if not listed[name] and ix.noted[name] <= began then
      index_note(ix, name, nil)
      ix.slots[name], ix.noted[name] = nil, nil
    end
  end
  ix.at = now
  return ix
end

-- A slot's first claim of a client (its record does not hold it yet) is the one the index cannot
-- settle alone: another rotor may be starting a slot for the same client now, or may have written
-- one since this process last listed the store. So it is made under the store's lock on the client
-- (store:lock_client, held by one rotor at a time, on any host sharing the store), and the lock
-- carries a note, the slot that claimed the client last: that slot's record is read again before
-- the check, and the note names this slot before the lock is given back. The caller keeps the lock
-- until its slot's record holds the client (written, durable), then unlocks: the next first claim
-- then finds that record through the note.

--- The error of a store whose lock on client key (store:lock_client) another rotor holds; holder:
-- " (pid P ...)" naming it, or ""; lapse (optional): how a lock whose holder died ends, when it
-- does not end with its process (" (...)").
function _M.client_locked(key, holder, lapse)
  return require("rotor.errors").new { kind = "locked", message = ("%s is being claimed by another rotor%s: it is "
    .. "starting a rotation of it in another slot now; nothing was done%s. Keep one slot per credential"):format(key,
    holder, lapse or "") }
end

-- the check of claim_client; last: the slot a client lock's note names
local function claim(store, key, slot, claim_it, last)
  local errors = require("rotor.errors")
  local ix, lerr = index_of(store)
  if not ix then
    return nil, errors.new { kind = "store", message = ("slot %s: cannot list the store to check that no other "
      .. "slot holds the client it rotates: %s; nothing was sent"):format(slot, tostring(errors.is(lerr)
      and lerr.message or lerr)) }
  end
  if last and last ~= slot then
    -- the slot that claimed the client last, as it is now (it may have been written since the listing)
    local pok, rec, rerr = pcall(_M.read, store, last, { journal_as_text = true })
    if not pok or rec == nil then
      rerr = pok and rerr or rec
      return nil, errors.new { kind = "store", message = ("slot %s: cannot read slot %s, which claimed %s before, "
        .. "to check that it no longer holds it: %s; nothing was sent"):format(slot, last, key,
        tostring(errors.is(rerr) and rerr.message or rerr)) }
    end
    index_note(ix, last, rec or nil)
  end
  local claims = claims_of[store] or {}
  claims_of[store] = claims
  local other, what = claims[key], "is rotating it now, in this process"
  if other == slot then other = nil end
  if not other then
    for s, role in pairs(ix.by_key[key] or {}) do
      if s ~= slot then
        other = s
        what = role == "retiring" and "will delete it (its clean-up after a rotation)"
          or ("stored a secret for it (its %s credential), which rotating it here would kill"):format(role)
        break
      end
    end
  end
  if other then
    return nil, errors.new { kind = "config", message = ("slot %s: %s is also held by slot %s of this store: that "
      .. "slot %s. Nothing was sent. Keep one slot per credential, rotated from one config or script; if slot %s "
      .. "is no longer used, move its record aside (rotor doctor shows both)"):format(slot, key, other, what, other) }
  end
  if claim_it ~= false then claims[key] = slot end
  return true
end

--- Claim client key (client_key) in store for slot: true[, lock] | nil, err (kind "config" when
-- another slot holds it or another rotation of this process is rotating it; "locked" when another
-- rotor is making a first claim of it now; "store" when the store cannot be listed or read).
-- Nothing to check (true) for a store that cannot list its slots. claim_it = false: check only.
-- first = true: the slot's first claim of the client (above); the lock is returned, to unlock.
function _M.claim_client(store, key, slot, claim_it, first)
  if type(store) ~= "table" or type(store.list) ~= "function" then return true end
  if not (first and claim_it ~= false and type(store.lock_client) == "function") then
    return claim(store, key, slot, claim_it)
  end
  -- what this process knows refuses first (another slot, another rotation of the process): kind config
  local known, kerr = claim(store, key, slot, false)
  if not known then return nil, kerr end
  local errors = require("rotor.errors")
  local lock, claimed_by = store:lock_client(key)
  if not lock then
    return nil, errors.with(claimed_by, { message = ("slot %s: %s"):format(slot,
      tostring(errors.is(claimed_by) and claimed_by.message or claimed_by)) })
  end
  local ok, err = claim(store, key, slot, true, claimed_by)
  local noted, nerr
  if ok then noted, nerr = lock:set_note(slot) end
  if noted then return true, lock end
  lock:unlock()
  if not ok then
    -- the claim this rotor made in the index goes with it
    return nil, err
  end
  _M.release_client(store, key, slot)
  return nil, errors.new { kind = errors.is(nerr) and nerr.kind or "store", message = ("slot %s: cannot note its "
    .. "claim of %s: %s; nothing was sent"):format(slot, key, tostring(errors.is(nerr) and nerr.message or nerr)) }
end

--- The end of slot's rotation of client key: its claim dropped, what its record rec holds noted.
function _M.release_client(store, key, slot, rec)
  local claims, ix = claims_of[store], indexes[store]
  if claims and claims[key] == slot then claims[key] = nil end
  if ix and type(rec) == "table" then index_note(ix, slot, rec) end
end

------------------------------------------------------------------------------------------------
-- A journal kept as text. The file store hands back a record's journal as the text of its entries,
-- split off the file without decoding them (core.json_journal_split), and decodes them only when
-- record.journal is read; a rotation appends to it (journal_append) and the store writes it back
-- from that text (journal_rope). A slot rotated for long carries hundreds of entries, read once
-- and written three times per rotation: decoding and encoding them cost two thirds of the
-- rotation's CPU time, and a string per entry (with a joined copy of them per write) still more
-- than the rest of the store's work. Only a rotation reads its slot so (store:get(slot,
-- { journal_as_text = true })); there record.journal is the list, decoded on first use.

local lazy = setmetatable({}, { __mode = "k" })
-- record -> { text = "E1,...,En", first = (where the entries kept start: the oldest are dropped
--             from the front), count = (how many are kept), texts = { encoded entries appended
--             since }, added = { entries not yet encoded } }

-- the entries kept of the text read, as a list (raises on a text that does not decode: the store
-- splits only texts that do)
local function decode_text(rec, l)
  local list, err = require("rotor.json").decode("[" .. l.text:sub(l.first) .. "]")
  if type(list) ~= "table" then
    error(("the journal of slot %s cannot be decoded: %s"):format(tostring(rawget(rec, "slot")), tostring(err)), 4)
  end
  return list
end

-- the list, decoded once, in place of the text
local function decode_journal(rec)
  local l = lazy[rec]
  lazy[rec] = nil
  setmetatable(rec, nil)
  local list = l.count > 0 and decode_text(rec, l) or {}
  for _, t in ipairs(l.texts) do list[#list + 1] = require("rotor.json").decode(t) end
  for _, e in ipairs(l.added) do list[#list + 1] = e end
  rawset(rec, "journal", list)
  return list
end

local LAZY_MT = { __index = function(rec, k)
  if k == "journal" and lazy[rec] then return decode_journal(rec) end
end }

--- Keep text, count entries "E1,...,En" (core.json_journal_split), as rec's journal.
function _M.journal_from_text(rec, text, count)
  lazy[rec] = { text = text, first = 1, count = count, texts = {}, added = {} }
  return setmetatable(rec, LAZY_MT)
end

-- rec's journal kept as text, or nil (a plain list, or one assigned since)
local function kept(rec)
  local l = lazy[rec]
  if l and rawget(rec, "journal") ~= nil then
    lazy[rec] = nil
    setmetatable(rec, nil)
    return nil
  end
  return l
end

--- Append entry to rec's journal.
function _M.journal_append(rec, entry)
  local l = kept(rec)
  if l then
    l.added[#l.added + 1] = entry
  else
    local j = rec.journal
    j[#j + 1] = entry
  end
end

--- Remove the last entry of rec's journal (one a failed write did not keep).
function _M.journal_drop_last(rec)
  local l = kept(rec)
  if l and #l.added > 0 then
    l.added[#l.added] = nil
  elseif l and #l.texts > 0 then
    l.texts[#l.texts] = nil
  else
    -- the last entry is one read with the record: the list, decoded (seldom: an entry appended
    -- since is the one a failed write leaves)
    table.remove(rec.journal)
  end
end

--- The text of rec's journal entries, only the last max, without the brackets, as a rope (an
-- array of pieces: strings, or { text, i, j } for text:sub(i, j); see core.durable_start), when
-- it is kept as text; the entries appended since are encoded now, with encode(entry) -> text.
-- nil for a plain list.
function _M.journal_rope(rec, max, encode)
  local l = kept(rec)
  if not l then return nil end
  local texts = l.texts
  for _, e in ipairs(l.added) do texts[#texts + 1] = encode(e) end
  l.added = {}
  local over = l.count + #texts - max
  if over > 0 then
    -- the oldest go first: from the text read, then from those appended
    local k = math.min(over, l.count)
    if k > 0 then
      l.first = core.json_journal_skip(l.text, l.first, k)
      l.count = l.count - k
    end
    if over > k then
      texts = table.move(texts, over - k + 1, #texts, 1, {})
      l.texts = texts
    end
  end
  local rope = {}
  if l.count > 0 then rope[1] = l.first == 1 and l.text or { l.text, l.first, #l.text } end
  for _, t in ipairs(texts) do
    if rope[1] then rope[#rope + 1] = "," end
    rope[#rope + 1] = t
  end
  return rope
end

--- A slot's record as every reader takes it (rotation, status, due, doctor, rotor.ngx): store:get,
-- then the schema checked, unless the store checks every record it returns itself
-- (store.checks_records: the file and etcd stores, whose errors name the file or the key). A
-- custom store's malformed record is an error naming the slot and the problem, never a record
-- the reader trips over. opts (optional) go to store:get. Returns record | false (no such slot) |
-- nil, err.
function _M.read(store, slot, opts)
  local rec, err = store:get(slot, opts)
  if not rec or store.checks_records then return rec, err end
  local valid, why = _M.validate(rec)
  if valid then return rec end
  local mt = getmetatable(store)
  local name = type(mt) == "table" and mt.__tostring and tostring(store) or "a store of one's own"
  return nil, require("rotor.errors").new { kind = "store", slot = slot, message = ("slot %s in %s holds no "
    .. "valid record: %s; nothing was changed. Repair or remove the slot's record in that store (rotor doctor "
    .. "shows the slot)"):format(slot, name, why) }
end

return _M
