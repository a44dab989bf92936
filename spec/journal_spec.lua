-- A record's journal kept as text by the file store: split off the file without decoding
-- (core.json_journal_split), decoded only when record.journal is read, appended to and written
-- back from its text (the oldest entries dropped with core.json_journal_skip). Whatever the split
-- accepts must be JSON that cjson reads as the same entries; a record read either way is the same
-- record.
local core = require "rotor.core"
local json = require "rotor.json"
local record = require "rotor.record"
local stores = require "rotor.store"

local split = core.json_journal_split
local AS_TEXT = { journal_as_text = true }   -- as a rotation reads its slot

local function tmpdir() return require("spec.helpers.sim").tmpdir("journal") end

-- notes that JSON must escape, and text beyond ASCII
local NOTES = { 'a "quoted" note', "back\\slash and a/slash", "tab\there, newline\nthere", "caf\195\169 \226\130\172",
  "\1 a control byte", "", "]}{[,:" }

local function entries(n, from)
  local list = {}
  for i = 1, n do
    local k = (from or 0) + i
    list[i] = { step = "create", outcome = "ok", time = ("2026-01-01T00:00:%02dZ"):format(k % 60),
                rotation = "r-" .. k, note = NOTES[k % #NOTES + 1] .. " #" .. k }
  end
  return list
end

local function slot_record(journal)
  return { provider = "genesys", journal = journal, last = { outcome = "ok" },
    versions = { current = { client_id = "c1", secret = core.secret("s3cr3t-value"), created = "2026-01-01T00:00:00Z",
                             meta = {} } } }
end

describe("a journal kept as text by the file store", function()
  local dir, store
  before_each(function()
    dir = tmpdir() .. "/secrets"
    store = assert(stores.file(dir))
  end)

  it("reads back as written, decoded only when read, and writes back with what was appended", function()
    local written = entries(30)
    -- one entry with a control byte cannot be split: the first read decodes the whole file
    assert(store:put("s", slot_record(written)))
    local text = core.fs_read(store:path("s"))
    assert.equal('{"journal":[', text:sub(1, 12))
    local rec = assert(store:get("s", AS_TEXT))
    assert.equal("c1", rec.versions.current.client_id)
    assert.same(written, rec.journal)
    -- without the control byte: split, kept as text until read
    written = entries(30)
    for _, e in ipairs(written) do e.note = e.note:gsub("%c", "") end
    assert(store:put("s", slot_record(written)))
    rec = assert(store:get("s", AS_TEXT))
    assert.is_nil(rawget(rec, "journal"))
    assert.same(written, rec.journal)                         -- decoded on first read
    assert.is_table(rawget(rec, "journal"))
    -- any other reader gets the journal decoded
    assert.same(written, rawget(assert(store:get("s")), "journal"))
    -- a rotation's appends, a write, and a write after a dropped entry
    rec = assert(store:get("s", AS_TEXT))
    local more = entries(3, 30)
    for _, e in ipairs(more) do record.journal_append(rec, e) end
    assert(store:put("s", rec))
    record.journal_append(rec, { step = "verify", outcome = "dropped" })
    record.journal_drop_last(rec)
    record.journal_append(rec, { step = "verify", outcome = "ok" })
    assert(store:put("s", rec))
    assert.is_nil(rawget(rec, "journal"))                     -- never decoded on the way
    local want = {}
    for _, e in ipairs(written) do want[#want + 1] = e end
    for _, e in ipairs(more) do want[#want + 1] = e end
    want[#want + 1] = { step = "verify", outcome = "ok" }
    assert.same(want, rec.journal)
    local back = assert(store:get("s", AS_TEXT))
    assert.same(want, back.journal)
    -- the file is the same JSON as a whole-record encoding would write
    local whole = json.decode(core.fs_read(store:path("s")))
    assert.same(want, whole.journal)
    assert.equal("s3cr3t-value", whole.versions.current.secret)
    assert.equal("s", whole.slot)
  end)

  it("keeps only the store's last journal_max entries, from its texts", function()
    store = assert(stores.file(dir, { journal_max = 20 }))
    local written = entries(20)
    assert(store:put("s", slot_record(written)))
    local rec = assert(store:get("s", AS_TEXT))
    for _, e in ipairs(entries(5, 20)) do record.journal_append(rec, e) end
    assert(store:put("s", rec))
    local got = assert(store:get("s", AS_TEXT)).journal
    assert.equal(20, #got)
    assert.equal("r-6", got[1].rotation)
    assert.equal("r-25", got[20].rotation)
    -- puts one after another: the entries appended by each are kept as text, the oldest dropped
    -- first from the text read, then from those appended, never decoding the journal
    rec = assert(store:get("s", AS_TEXT))
    for n = 1, 3 do
      for _, e in ipairs(entries(4, 25 + (n - 1) * 4)) do record.journal_append(rec, e) end
      assert(store:put("s", rec))
    end
    for _, e in ipairs(entries(30, 37)) do record.journal_append(rec, e) end
    assert(store:put("s", rec))
    record.journal_append(rec, { step = "verify", outcome = "ok", rotation = "r-68" })
    assert(store:put("s", rec))
    assert.is_nil(rawget(rec, "journal"))
    -- a put that fails after its entry was encoded: the entry dropped is that one
    record.journal_append(rec, { step = "promote", outcome = "lost" })
    local real = core.durable_start
    core.durable_start = function() error("the disk is gone") end
    local ok = pcall(require("rotor.sched").parallel, { 1 }, function() assert(store:put("s", rec)) end)
    core.durable_start = real
    assert.is_false(ok)
    record.journal_drop_last(rec)
    assert.is_nil(rawget(rec, "journal"))
    got = assert(store:get("s", AS_TEXT)).journal
    assert.equal(20, #got)
    assert.equal("r-49", got[1].rotation)
    assert.equal("r-67", got[19].rotation)
    -- (the failed put had already dropped r-49 from the record in memory: the next write would)
    local mine = rec.journal
    assert.same(got[20], mine[#mine])
    for _, e in ipairs(mine) do assert.not_equal("lost", e.outcome) end
  end)

  it("writes a journal assigned in place of the kept one, and refuses a secret in an appended entry", function()
    assert(store:put("s", slot_record(entries(4))))
    local rec = assert(store:get("s", AS_TEXT))
    rec.journal = { { step = "by", outcome = "hand" } }
    assert(store:put("s", rec))
    assert.same({ { step = "by", outcome = "hand" } }, assert(store:get("s", AS_TEXT)).journal)
    rec = assert(store:get("s", AS_TEXT))
    local secret = core.secret("never-in-a-journal")
    record.journal_append(rec, { step = "x", note = secret })
    local ok, err = pcall(store.put, store, "s", rec)
    assert.is_false(ok)
    assert.matches("cannot be encoded", tostring(err))
    assert.is_nil(tostring(err):find("never-in-a-journal", 1, true))
    assert.is_nil(core.fs_read(store:path("s")):find("never-in-a-journal", 1, true))
    secret:close()
  end)

  it("reads a file written with the journal elsewhere, or with entries of other kinds, whole", function()
    local rec = slot_record(nil)
    rec.slot, rec.schema = "s", 1
    rec.versions.current.secret = "plain"
    for _, journal in ipairs {
      { { step = "a", n = 1 } },                          -- a number
      { { step = "a", more = { "x" } } },                 -- a nested value
      { { step = "a", note = "\\ud83d\\ude00" } },        -- text, not an escape
    } do
      rec.journal = nil
      local rest, jtext = json.encode(rec), json.encode(journal)
      -- the journal last, or first
      local last = rest:sub(1, -2) .. ',"journal":' .. jtext .. "}"
      local first = '{"journal":' .. jtext .. "," .. rest:sub(2)
      for _, t in ipairs { last, first } do
        assert(core.fs_write_atomic(store:path("s"), t, 384))
        local got = assert(store:get("s", AS_TEXT))
        assert.same(journal, got.journal)
        assert.equal("plain", got.versions.current.secret:reveal())
      end
    end
    -- a surrogate pair escaped: cjson's to decode, not the split's
    assert(core.fs_write_atomic(store:path("s"), '{"journal":[{"note":"\\ud83d\\ude00"}],"slot":"s","provider":"p"}',
      384))
    assert.equal("\240\159\152\128", assert(store:get("s", AS_TEXT)).journal[1].note)
  end)
end)

describe("core.json_journal_split", function()
  -- what the file store takes from a split (the entries' text, their count, and a rest that decodes
  -- to a record holding no journal: else it decodes the text whole) compared with what cjson reads
  -- from the whole text; and each entry skipped from the front leaves the text of those after it
  local function same_as_cjson(text)
    local etext, count, rest = split(text)
    if not etext then return true end
    if type(etext) ~= "string" or type(count) ~= "number" or count % 1 ~= 0 or type(rest) ~= "string" then
      return false, "split returned " .. type(etext) .. ", " .. type(count) .. ", " .. type(rest)
    end
    local r = json.decode(rest)
    if type(r) ~= "table" or r.journal ~= nil then return true end
    local whole = json.decode(text)
    if type(whole) ~= "table" then return false, "split accepted what cjson refuses" end
    local list, lerr = json.decode("[" .. etext .. "]")
    if type(list) ~= "table" then return false, "the entries do not decode: " .. tostring(lerr) end
    local journal = whole.journal
    if #list ~= #journal or count ~= #journal then return false, "entry count" end
    local at = 1
    for k = 1, count do
      at = core.json_journal_skip(etext, at, 1)
      local after = json.decode("[" .. etext:sub(at) .. "]")
      if type(after) ~= "table" or #after ~= count - k then return false, "skipping entry " .. k end
    end
    if at ~= #etext + 1 then return false, "skipping every entry ends at " .. at end
    if count > 0 and core.json_journal_skip(etext, 1, count) ~= at then return false, "skip of all at once" end
    for i, e in ipairs(list) do
      if type(e) ~= "table" then return false, "entry " .. i .. " not an object" end
      for k, v in pairs(e) do
        if type(v) ~= "string" or journal[i][k] ~= v then return false, "entry " .. i .. " field " .. k end
      end
      for k in pairs(journal[i]) do if e[k] == nil then return false, "entry " .. i .. " lost " .. k end end
    end
    for k, v in pairs(r) do
      if type(v) ~= "table" and whole[k] ~= v then return false, "rest field " .. k end
    end
    for k in pairs(whole) do
      if k ~= "journal" and r[k] == nil then return false, "rest lost " .. k end
    end
    return true
  end

  it("splits only what cjson reads as the same entries (random texts and their mutations)", function()
    math.randomseed(20261203)
    local alphabet = { '"', "\\", "/", "u", "d", "8", "0", "{", "}", "[", "]", ",", ":", " ", "a", "\n", "\1",
      "\255", "b", "n", "t", "f", "e", "x" }
    local accepted, tried = 0, 0
    for _ = 1, 3000 do
      local n = math.random(0, 4)
      local list = {}
      for i = 1, n do
        local note = {}
        for j = 1, math.random(0, 12) do note[j] = alphabet[math.random(#alphabet)] end
        list[i] = { step = "s" .. i, note = table.concat(note) }
      end
      local rest = json.encode({ slot = "x", provider = "p", n = math.random(1, 9) })
      local text = '{"journal":' .. (n > 0 and json.encode(list) or "[]") .. "," .. rest:sub(2)
      for m = 0, 3 do
        local t = text
        for _ = 1, m do
          local at = math.random(1, #t)
          local how = math.random(3)
          local c = alphabet[math.random(#alphabet)]
          if how == 1 then t = t:sub(1, at - 1) .. c .. t:sub(at + 1)
          elseif how == 2 then t = t:sub(1, at - 1) .. c .. t:sub(at)
          else t = t:sub(1, at - 1) .. t:sub(at + 1) end
        end
        tried = tried + 1
        if split(t) then accepted = accepted + 1 end
        local ok, why = same_as_cjson(t)
        assert(ok, ("%s: %q"):format(tostring(why), t))
      end
    end
    -- the generator reaches both sides
    assert.is_true(accepted > tried / 10, ("%d of %d accepted"):format(accepted, tried))
    assert.is_true(accepted < tried, "nothing refused")
  end)

  it("finds a quote, a backslash or a control byte wherever it stands in a long string",
    function()
    local raw = { ['"'] = true, ["\\"] = true, ["\1"] = false, ["\31"] = false, ["\127"] = true, ["\200"] = true,
                  [" "] = true, ["\t"] = false }
    for c, accepted in pairs(raw) do
      for at = 1, 40 do
        -- written as the store writes it (escaped), and with the byte left raw in the string
        local note = ("n"):rep(at - 1) .. c .. ("x"):rep(41 - at)
        local written = '{"journal":[{"step":"s","note":' .. json.encode(note) .. '}],"slot":"x"}'
        assert.truthy(split(written), ("%q at %d"):format(c, at))
        local rawtext = '{"journal":[{"step":"s","note":"' .. note .. '"}],"slot":"x"}'
        local ok, why = same_as_cjson(rawtext)
        assert(ok, ("%s: %q"):format(tostring(why), rawtext))
        -- a raw quote ends the string early; a raw backslash escapes what follows
        local expect = accepted and c ~= '"' and c ~= "\\"
        assert.equal(expect or nil, split(rawtext) and true, ("raw %q at %d"):format(c, at))
      end
    end
  end)

  it("refuses what it cannot vouch for", function()
    for _, t in ipairs {
      '{"slot":"x","journal":[]}', '{"journal":[{"a":1}]}', '{"journal":[{"a":"\\ud800"}]}',
      '{"journal":[{"a":"\1"}]}', '{"journal":[{"a":"b" }]}', '{"journal":[{"a":"b"},]}',
      '{"journal":[{"a":"b"}]}x', '{"journal":[{"a":"b\\x"}]}', '{"journal":[{"a":"b\\u00"}]}', '{"journal":[[]]}',
    } do
      assert.is_nil(split(t), t)
    end
    local etext, count, rest = split('{"journal":[{"a":"b\\"}"},{}],"slot":"x"}')
    assert.equal('{"a":"b\\"}"},{}', etext)
    assert.equal(2, count)
    assert.equal('{"slot":"x"}', rest)
    assert.equal(#'{"a":"b\\"}"},' + 1, core.json_journal_skip(etext, 1, 1))
    assert.equal(#etext + 1, core.json_journal_skip(etext, 1, 2))
    -- fewer entries than asked for, or no entry where it starts: an error, never a guess
    assert.has_error(function() core.json_journal_skip(etext, 1, 3) end)
    assert.has_error(function() core.json_journal_skip(etext, 2, 1) end)
    etext, count, rest = split('{"journal":[]}')
    assert.equal("", etext)
    assert.equal(0, count)
    assert.equal("{}", rest)
  end)
end)
