-- make mutants: break one safety behaviour at a time in a scratch copy of the working tree and run
-- the specs that exist to catch it. Every mutant must be killed (its specs fail); one that survives
-- is a guard that cannot fail. Prints a table; exits 1 when a mutant survives or no longer applies.
--
-- usage: lua5.4 spec/mutants.lua [NAME_PATTERN]      (from the top of the tree, after `make all`)
--
-- Each mutation is a literal text replacement that must match exactly once in its file (several
-- alternatives may be given: the code it targets is still changing); the copy is made under
-- build/mutants/ from the files git knows (tracked and untracked, not ignored), with the built
-- core and host copied in (a mutation of csrc/ builds them again in the copy). Before the
-- mutants, the specs run once on an unmutated copy: a spec that fails there cannot kill anything,
-- and the table says so.
local BUSTED = "lua5.4 /usr/bin/busted --cpath='./build/5.4/?.so' "
  .. "--lpath='./?.lua;./lua/?.lua;./lua/?/init.lua'"

-- { name, behaviour, mutation, file, { {from, to}, ... alternatives }, { specs }, optional = true
--   when the code it targets may not be in this tree }
local function m(name, behaviour, what, file, alts, specs, optional)
  return { name, behaviour, what, file, alts, specs, optional = optional }
end
local CRASH = "spec/crash_spec.lua"
-- core.spawn_start's two guards that keep writing a deploy command's input from waiting on it: the
-- pipe sized for the input, and the write made non-blocking (the refusal between them, as it is)
local INPUT_GUARDS = table.concat({
  "    if ((room < 0 || (size_t)room < inlen) &&",
  "        (inlen > INT_MAX || fcntl(pfd[1], F_SETPIPE_SZ, (int)inlen) < (int)inlen)) {",
  "        int err = errno;",
  "        close(pfd[0]);",
  "        close(pfd[1]);",
  "        lua_pushnil(L);",
  "        lua_pushfstring(L,",
  "                        \"cannot start %s: its input (%d bytes) is more than a pipe can hold here \"",
  "                        \"(%s)\",",
  "                        argv[0], (int)(inlen > INT_MAX ? INT_MAX : inlen), strerror(err));",
  "        return 2;",
  "    }",
  "    if (fcntl(pfd[1], F_SETFL, O_NONBLOCK) != 0) {",
}, "\n")

-- Ctx:persist's two ways of claiming a client again whose lock lapsed: when its lease is
-- refreshed, and when the write finds the lock gone (the mutant turns both off)
local PERSIST_CLAIM = table.concat({
  "  if cl and cl.refresh and not cl:refresh(false) then",
  "    local again, aerr = self:claim_again()",
  "    if not again then return nil, aerr end",
  "    cl = again",
  "  end",
  "  -- the client's lock must still hold when the record is written (a store that can check it does",
  "  -- so in the write itself): a pause between the refresh above and the write outlasted the lease",
  "  -- once, and two slots came to hold one client",
  "  local function write() return self.store:put(self.slot, self.record, cl and { client_lock = cl } or nil) end",
  "  local ok, err = write()",
  "  if not ok and cl and errors.is(err) and err.client_lock_lost then",
}, "\n")

-- errors.detail's redaction, then its cut (the mutant swaps them)
local REDACT_THEN_CUT = "  d = redacted(d)\n"
  .. "  if #d > DETAIL_MAX then d = d:sub(1, DETAIL_MAX) .. \"...\" end"

local MUTANTS = {
  m("crash-ignored", "crash injection works", "ROTOR_CRASH_AT ignored (Ctx:crash returns at once)",
    "lua/rotor/rotation.lua",
    { { "function Ctx:crash(point, when)\n", "function Ctx:crash(point, when)\n  do return end\n" } },
    { CRASH }),
  m("recovery-remints", "recovery instead of blind re-minting", "recover() replaced by a plain re-mint",
    "lua/rotor/rotation.lua", {
      { "version, err = strat.recover(ctx, rot.mint)\n    if version == nil",
        "version, err = false, nil\n    if version == nil" },
      { "version, err = strat.recover(ctx, rot.mint)", 'version, err = "mint", nil' },
    },
    { CRASH }),
  m("mint-warm", "a mint goes on a fresh connection", "fresh_connect = nil in client.lua",
    "lua/rotor/client.lua", {
      { "fresh_connect = opts.mint or nil", "fresh_connect = nil" },
      { "fresh_connect = (opts.mint and self.options.mint_fresh_connection) or nil", "fresh_connect = nil" },
    }, { "spec/mint_connection_spec.lua" }),
  m("mint-twice", "a mint on a warm connection is sent at most once", "the at-most-once guard off (once = nil)",
    "lua/rotor/client.lua", { { "once = opts.mint or nil", "once = nil" } },
    { "spec/mint_connection_spec.lua", "spec/http_spec.lua" }),
  m("redact-noop", "secrets are redacted from errors", "core.redact (the one redaction, C) returns its input",
    "csrc/secret.c",
    { { "    const char *msg = luaL_checklstring(L, 1, &mlen);\n",
        "    const char *msg = luaL_checklstring(L, 1, &mlen);\n    if (mlen > 0) {\n        lua_settop(L, 1);\n"
        .. "        return 1;\n    }\n" } },
    { "spec/redaction_spec.lua", "spec/safety_spec.lua" }),
  m("redact-raw-only", "secrets are redacted in every form", "core.redact cuts the raw secret only",
    "csrc/secret.c",
    { { "    for (int i = 0; i < nforms; i++) {\n        int dup = forms[i].len < REDACT_KEY;",
        "    for (int i = 0; i < 1; i++) {\n        int dup = forms[i].len < REDACT_KEY;" },
      { "    for (int i = 0; i < REDACT_FORMS; i++) {\n        int dup = forms[i].len < REDACT_KEY;",
        "    for (int i = 0; i < 1; i++) {\n        int dup = forms[i].len < REDACT_KEY;" },
      { "    for (int i = 0; i < REDACT_FORMS; i++) {\n        failed |= forms[i].text.failed;",
        "    for (int i = 0; i < 1; i++) {\n        failed |= forms[i].text.failed;" },
      { "        for (int i = 0; i < REDACT_FORMS; i++) {\n            /* a form equal",
        "        for (int i = 0; i < 1; i++) {\n            /* a form equal" } },
    { "spec/redaction_spec.lua", "spec/core_spec.lua" }),
  m("verify-ok", "the verify step", "Client:verify always succeeds",
    "lua/rotor/client.lua",
    { { "function Client:verify(creds)\n", "function Client:verify(creds)\n  do return true end\n" } },
    { "spec/verify_spec.lua" }),
  m("verify-skipped", "the verify step", "step.verify never asks the provider",
    "lua/rotor/rotation.lua",
    { { "ok, err = self.provider:verify { client_id = client_id, client_secret = secret }",
        "ok, err = true, nil" },
      { "ok, err = ctx.provider:verify { client_id = p.client_id, client_secret = p.secret }",
        "ok, err = true, nil" } },
    { "spec/verify_spec.lua" }),
  m("unlock-early", "the lock is held for the whole rotation", "unlock right after locking",
    "lua/rotor/rotation.lua",
    { { "  if not lock then return nil, lerr end\n", "  if not lock then return nil, lerr end\n  lock:unlock()\n" } },
    { "spec/lock_spec.lua" }),
  m("pending-guard-off", "never re-mint over a pending secret", "the pending guard disabled",
    "lua/rotor/rotation.lua", { { "  if versions.pending then\n", "  if false and versions.pending then\n" },
      { "  if versions.pending then\n    -- never mint while a pending secret exists",
        "  if false and versions.pending then\n    -- never mint while a pending secret exists" } },
    { "spec/pending_guard_spec.lua", CRASH }),
  m("leakscan-raw-only", "the leak scan searches every encoding", "only the raw value searched",
    "spec/helpers/leakforms.lua",
    { { "function _M.forms(v)\n", 'function _M.forms(v)\n  do return { { v, "raw" } } end\n' } },
    { "spec/leakscan_spec.lua" }),
  m("leakscan-empty-passes", "the leak scan fails when it scanned nothing", "the empty-scan check removed",
    "spec/leakscan.lua", { { "if scanned == 0 then", "if false then" } },
    { "spec/leakscan_spec.lua" }),
  m("backoff-doubled", "retries back off by base * 2^(n-1)", "the backoff twice as long",
    "lua/rotor/http.lua", { { "return cap / 2 + jitter() * cap / 2", "return cap + jitter() * cap" } },
    { "spec/http_spec.lua" }),
  m("pacing-slow", "pacing waits no longer than the rate needs", "the pacing interval doubled",
    "lua/rotor/http.lua",
    { { "local interval = (limit.per or 1) / limit.rate", "local interval = 2 * (limit.per or 1) / limit.rate" } },
    { "spec/http_spec.lua" }),
  m("no-retry-unsent", "a request that was never sent is retried", "no retry of unsent requests",
    "lua/rotor/http.lua",
    { { "if not res.sent and attempt <= retries", "if not res.sent and attempt <= retries - 100" } },
    { "spec/proxy_spec.lua" }),
  m("spares-unlocked", "a put stays whole when its slot is written again at once",
    "a group empties its spares without taking their lock (the next group may be writing one)",
    "csrc/durable.c", { { "if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fstat(fd, held) != 0 ||",
      "if (fstat(fd, held) != 0 ||" } }, { "spec/durable_spec.lua" }),
  m("spares-unchecked", "a spare is emptied only while it is still the spare",
    "a group empties a spare it opened even after another group swapped that file in",
    "csrc/durable.c", { { "held->st_dev != named.st_dev || held->st_ino != named.st_ino ||",
      "held->st_dev != named.st_dev ||" } }, { "spec/durable_spec.lua" }),
  m("spare-not-displaced", "a spare is emptied only by the group that displaced it",
    "a group empties whatever file is the spare by then: maybe the record the next group displaced, not yet durable",
    "csrc/durable.c", { { "st.st_dev == it->gone_dev &&\n            st.st_ino == it->gone_ino && st.st_size != 0) {",
      "st.st_size != 0) {" } }, { "spec/durable_spec.lua" }),
  m("spare-kept", "keeps no copy of a displaced record",
    "a group leaves the record it displaced in the spare (no zeros written over it)",
    "csrc/durable.c", { { "    while (at < size) {", "    while (at < 0) {" } }, { "spec/durable_spec.lua" }),
  m("spare-keeps-changed", "zeroes a displaced file whole when this process did not write it, or it changed since",
    "a displaced file keeps the start its writer noted even after it was changed in place",
    "csrc/durable.c", { { "k->size != st->st_size ||\n        k->mtime.tv_sec != st->st_mtim.tv_sec || "
      .. "k->mtime.tv_nsec != st->st_mtim.tv_nsec) {", "k->size != st->st_size) {" } }, { "spec/durable_spec.lua" }),
  m("spare-keeps-secrets", "keeps only the journal of a displaced record it wrote",
    "a displaced record keeps its versions too (the start kept is the whole file)",
    "csrc/durable.c", { { "k->keep = it->keep < it->written.st_size ? it->keep : it->written.st_size;",
      "k->keep = it->written.st_size;" } }, { "spec/durable_spec.lua" }),
  m("spare-not-cut", "a write into a longer spare is cut to its own length",
    "a record written into a spare keeps the spare's longer tail of zeros",
    "csrc/durable.c", { { "(it->spare_size > (off_t)it->len && ftruncate(it->fd, (off_t)it->len) != 0)",
      "(it->spare_size < 0 && ftruncate(it->fd, (off_t)it->len) != 0)" } }, { "spec/durable_spec.lua" }),
  m("kept-post", "a bodiless request on a handle kept after a POST sends no body size",
    "a kept handle stays a POST (its method not set back to GET)",
    "csrc/http.c", { { "            curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L);\n", "" } },
    { "spec/http_spec.lua" }),
  m("connections-dropped", "a batch keeps its HTTP/1.1 connections while it thins out",
    "libcurl's own connection cache size (four per transfer in flight)",
    "csrc/http.c", { { "    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS,\n"
      .. "                      maxconn > 0 ? (long)maxconn : (long)MAXCONNECTS_DEFAULT);\n",
      "    if (maxconn > 0) {\n        curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, (long)maxconn);\n    }\n" } },
    { "spec/http_spec.lua" }),
  m("batch-connections-dropped", "a top-level batch leaves its connections to the next one",
    "each rotor.parallel opens its connections anew (its multi handle is dropped when it ends)",
    "lua/rotor/sched.lua", { { "  if ok and not outer and l.ntransfers == 0 then kept_multi = l.multi end\n", "" } },
    { "spec/http_spec.lua" }),
  m("foreign-loop-shares-multi", "a batch started in a coroutine of its own inside a task has transfers of its own",
    "it takes the running loop's multi handle (each loop collects and drops the other's results)",
    "lua/rotor/sched.lua", { { "  local m = kept_multi or core.multi()\n",
      "  local m = loop and loop.multi or kept_multi or core.multi()\n" } },
    { "spec/http_spec.lua" }),
  m("fork-keeps-worker", "a forked child runs group commits on a thread of its own",
    "after fork() the child queues its groups to the parent's durable-write thread",
    "csrc/durable.c", { { "if (w->running && w->pid != pid) {", "if (0) {" } }, { "spec/durable_spec.lua" }),
  m("durable-takes-signals", "asynchronous signals stay off the durable-write thread",
    "the durable thread is started with the loop's signal mask (signals not blocked)",
    "csrc/durable.c", { { "        sigfillset(&quiet);", "        sigemptyset(&quiet);" } },
    { "spec/durable_spec.lua" }),
  m("group-late", "a group commit starts when the previous one ends, before its writers run on",
    "the queued writes wait until no task is ready (no flush when a group is collected)",
    "lua/rotor/sched.lua", { { "  -- the woken tasks run\n  durable_flush(l)\n", "  -- the woken tasks run\n" } },
    { "spec/durable_spec.lua" }),
  m("easy-same-ca", "a kept easy handle does not carry a CA bundle into the next transfer",
    "every kept handle is taken for one set up with the wanted CA bundle and proxy",
    "csrc/http.c", { { "    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);",
      "    return 1;" } }, { "spec/http_spec.lua" }),
  m("easy-not-reset", "a kept easy handle does not carry a rarer option into the next transfer",
    "a handle is kept as it is after a fresh-connection, at-most-once, signed or custom-method transfer",
    "csrc/http.c", { { "    /* a client certificate and its key (PEM files), for servers that require one */\n",
      "    x->rare = 0;\n    /* a client certificate and its key (PEM files), for servers that require one */\n" } },
    { "spec/http_spec.lua" }),
  m("record-unchecked", "every reader gets a valid record or an error naming it",
    "rotor.record.read hands back what a store of one's own returned, unchecked",
    "lua/rotor/record.lua", { { "  if not rec or store.checks_records then return rec, err end",
      "  do return rec, err end" } }, { "spec/cli_spec.lua", "spec/rotation_unit_spec.lua" }),
  m("record-fields-unchecked", "a record's fields are of the kinds rotor writes, or the record is refused",
    "rotor.record.validate checks no field's kind", "lua/rotor/record.lua",
    { { "local function check_fields(t, fields, at)\n  for k, types in pairs(fields) do",
        "local function check_fields(t, fields, at)\n  do return true end\n  for k, types in pairs(fields) do" } },
    { "spec/cli_spec.lua", "spec/rotation_unit_spec.lua" }),
  m("retiring-deletes-live", "a scheduled deletion never deletes the slot's current or pending client",
    "due deletions are taken as scheduled, whoever holds the client now", "lua/rotor/rotation.lua",
    { { '    local label = self:stored_client(r.client_id, { "current", "pending" })',
        "    local label = false" } },
    { "spec/rotation_unit_spec.lua" }),
  m("notify-unchecked", "a notify spec is checked field by field before anything runs",
    "notify.check looks at no field of a notify table", "lua/rotor/notify.lua",
    { { "  for k, val in pairs(spec) do\n    local check = CHECKS[k]",
        "  for k, val in pairs({}) do\n    local check = CHECKS[k]" } },
    { "spec/config_spec.lua", "spec/rotation_unit_spec.lua" }),
  m("options-unknown-taken", "an option a user misspells is named, never ignored",
    "rotor.keys.unknown_key finds no unknown key", "lua/rotor/keys.lua",
    { { "  if #bad == 0 then return nil end", "  do return nil end" } },
    { "spec/store_spec.lua", "spec/config_spec.lua" }),
  m("numbers-unbounded", "a numeric option beyond its bounds is refused before anything runs",
    "rotor.bounds checks a number's type only (rotor.rotate's, a config file's, rotor.ngx's, a provider's)",
    "lua/rotor/bounds.lua",
    { { "v == v and (b.above and v > b[1] or not b.above and v >= b[1]) and v <= b[2]\n"
        .. "    and (not b.whole or v == math.floor(v))", "v == v" } },
    { "spec/rotation_unit_spec.lua", "spec/config_spec.lua", "spec/store_spec.lua" }),
  m("journal-split-loose", "a journal kept as text holds only what cjson reads as the same entries",
    "the split takes any escape in a string", "csrc/json.c",
    { { '} else if (strchr("\\"\\\\/bfnrt", c) == NULL || c == \'\\0\') {', "} else if (0) {" } },
    { "spec/journal_spec.lua" }),
  m("journal-scan-blind", "a journal kept as text holds only what cjson reads as the same entries",
    "the eight-bytes-at-a-time scan does not see control bytes", "csrc/json.c",
    { { "((b - ones) & ~b) | ((v - ones * 0x20) & ~v)", "((b - ones) & ~b)" } },
    { "spec/journal_spec.lua" }),
  m("journal-trim-short", "a slot's journal keeps its last journal_max entries, the file one valid record",
    "the oldest entries are cut one short of journal_max from the text read", "lua/rotor/record.lua",
    { { "l.first = core.json_journal_skip(l.text, l.first, k)",
        "l.first = core.json_journal_skip(l.text, l.first, k - 1)" } },
    { "spec/journal_spec.lua" }),
  m("shared-across-configs", "one credential, one slot: a client another slot of the store holds is not rotated",
    "a rotation no longer looks at the store's other slots", "lua/rotor/record.lua",
    { { "    for s, role in pairs(ix.by_key[key] or {}) do", "    for s, role in pairs({}) do" } },
    { "spec/cli_spec.lua", "spec/safety_spec.lua" }),
  m("holders-listing-forgets", "keeps what a rotation noted while a listing that began before it was under way",
    "a listing drops a slot noted after it began (not listed: taken as gone)", "lua/rotor/record.lua",
    { { "    if not listed[name] and ix.noted[name] <= began then", "    if not listed[name] then" } },
    { "spec/rotation_unit_spec.lua" }),
  m("holders-listing-stale", "keeps what a rotation noted over what a listing that began before it read meanwhile",
    "a listing's read of a slot replaces a newer note of it", "lua/rotor/record.lua",
    { { "      if (ix.noted[name] or 0) <= began then index_note(ix, name, ok and rec or nil) end",
      "      index_note(ix, name, ok and rec or nil)" } }, { "spec/rotation_unit_spec.lua" }),
  m("shared-in-batch", "a second slot for the same credential in the same batch is refused",
    "a rotation claims nothing: two rotations of one process may rotate one client at once", "lua/rotor/record.lua",
    { { "  if claim_it ~= false then claims[key] = slot end", "" } },
    { "spec/rotation_spec.lua" }),
  m("claim-across-processes", "two rotors starting new slots for one client at once mint once",
    "a slot's first claim of a client takes no lock on it", "lua/rotor/rotation.lua",
    { { "      not record_mod.clients(rec)[key])", "      false)" } }, { "spec/safety_spec.lua" }),
  m("claim-lock-early", "the lock on a client is kept until the slot's record holds it",
    "the lock is given back as soon as the claim is checked", "lua/rotor/rotation.lua",
    { { "    if held ~= nil then ctx.client_lock = held end", "    if held ~= nil then held:unlock() end" } },
    { "spec/safety_spec.lua" }),
  m("claim-unlock-before-stored", "the lock on a client is kept until the slot's first write is on disk",
    "the lock is given back just before that write", "lua/rotor/rotation.lua",
    { { "  local ok, err = self.store:put(self.slot, self.record)\n  local tries",
        "  if cl then cl:unlock() end\n  local ok, err = self.store:put(self.slot, self.record)\n  local tries" },
      { "  local ok, err = write()\n", "  if cl then cl:unlock() end\n  local ok, err = write()\n" } },
    { "spec/safety_spec.lua" }),
  m("claim-lapsed-kept", "a client's lock whose lease lapsed is claimed again before the slot's first write",
    "a lapsed lease goes unnoticed (neither the lease's refresh nor the write's check of the lock claims again)",
    "lua/rotor/rotation.lua",
    { { PERSIST_CLAIM, (PERSIST_CLAIM:gsub("if cl and cl%.refresh and not cl:refresh%(false%) then", "if false then")
                                     :gsub("if not ok and cl and errors%.is%(err%) and err%.client_lock_lost then",
                                           "if false then")) } },
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("claim-lost-written", "a rotation whose claim was lost writes no record (it would hold the client too)",
    "its failure is journalled into the slot's record", "lua/rotor/rotation.lua",
    { { "  if self.claim_lost then return nil, self.claim_lost end\n", "" } },
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("claim-etcd-note-unfenced", "an etcd client lock's note is written only while the lock is its writer's",
    "the note is written whoever holds the lock", "lua/rotor/store/etcd.lua",
    { { '    compare = { { key = b64(self.key), target = "CREATE", result = "EQUAL", '
        .. 'create_revision = self.token } },\n'
        .. "    success = { { request_put = { key = b64(self.claim_key)",
        "    success = { { request_put = { key = b64(self.claim_key)" } },
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("claim-note-unread", "a slot written since this rotor listed the store is found through the lock's note",
    "the slot the note names is not read again", "lua/rotor/record.lua",
    { { "  if last and last ~= slot then", "  if false then" } }, { "spec/safety_spec.lua" }),
  m("claim-note-unwritten", "a first claim names its slot on the client's lock",
    "the note is never written", "lua/rotor/record.lua",
    { { "  if ok then noted, nerr = lock:set_note(slot) end", "  noted = ok" } },
    { "spec/safety_spec.lua" }),
  m("claim-note-lost", "a lock file's note outlives the holders that do not write one",
    "taking the lock empties the file", "csrc/fs.c",
    { { "    if (have && (st.st_size >= plen || ftruncate(fd, 0) == 0)) {",
        "    if (have && ftruncate(fd, 0) == 0) {" } }, { "spec/store_spec.lua", "spec/safety_spec.lua" }),
  m("claim-etcd-note-unread", "an etcd store hands a client lock's holder the slot that claimed it last",
    "the claim key read with the lock is ignored", "lua/rotor/store/etcd.lua",
    { { "  return lock, kv and unb64(kv.value) or nil", "  return lock, nil" } },
    -- its one case (the copy has no LuaJIT core, which the file's nginx case needs)
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("claim-etcd-retry-note-unread", "a client lock won on a retried etcd transaction reads the note too",
    "the note is taken only from the transaction's own answer (there is none when the lock was won by a try whose "
      .. "answer was lost)",
    "lua/rotor/store/etcd.lua", { { "  if not l.responses then\n", "  if false then\n" } },
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("deploy-hangs-group", "a deploy command past its timeout is stopped with all it started",
    "only the shell is signalled, not its process group", "csrc/fs.c",
    { { "    kill(c->group ? -c->pid : c->pid, sig);", "    kill(c->pid, sig);" },
      { "    kill(c->group ? -c->pid : c->pid, SIGTERM);", "    kill(c->pid, SIGTERM);" },
      { "        kill(-pid, SIGTERM);", "        kill(pid, SIGTERM);" } },
    { "spec/store_spec.lua" }),
  m("read-blocks", "a file a user names (a dotenv file) is never waited on",
    "core.fs_read opens it with a plain blocking open", "csrc/fs.c",
    { { "    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);",
        "    int fd = open(path, O_RDONLY | O_CLOEXEC);" } },
    { "spec/hardening_spec.lua" }),
  m("json-not-finite", "whatever rotor decodes, it can encode again (no NaN, no Infinity)",
    "rotor.json takes NaN, Infinity and 1e999 as cjson reads them", "csrc/json.c",
    { { "        } else if (vt == LUA_TNUMBER && not_finite(L, -1)) {\n            return -1;\n",
        "        } else if (vt == LUA_TNUMBER && not_finite(L, -1) && 0) {\n            return -1;\n" } },
    { "spec/core_spec.lua", "spec/cli_spec.lua" }),
  m("time-unbounded", "a time no date can hold is no time (status never trips over it)",
    "timefmt.parse takes any number above 1e11 as milliseconds", "lua/rotor/timefmt.lua",
    { { "    if v > MAX_SECONDS and v <= MAX_MS then return v / 1000 end",
        "    if v > MAX_SECONDS then return v / 1000 end" } },
    { "spec/cli_spec.lua" }),
  m("deploy-deaf", "a signal during a deploy command stops it at once",
    "core.spawn's wait ignores the host's interrupt flag", "csrc/fs.c",
    { { "    } else if (rotor_is_interrupted()) {", "    } else if (0) {" } },
    { "spec/cli_spec.lua" }),
  m("deploy-blocks-batch", "deploy commands of a batch run side by side",
    "sched.wait_child sleeps on the event loop's thread (core.sleep)", "lua/rotor/sched.lua",
    { { "    _M.sleep(step)\n    step = math.min(step * 2, 0.05)",
        "    core.sleep(step)\n    step = math.min(step * 2, 0.05)" } },
    { "spec/cli_spec.lua" }),
  m("sleep-cut", "a signal never cuts rotor's own waits short (a write retried while a secret is held)",
    "core.sleep ends early on a signal whatever it was asked", "csrc/token.c",
    { { "            if (interruptible && rotor_is_interrupted()) {", "            if (rotor_is_interrupted()) {" } },
    { "spec/safety_spec.lua" }),
  m("spapi-deaf", "a signal ends SP-API's wait for the new secret between two long polls",
    "the receive loop ignores the interrupt", "lua/rotor/providers/spapi.lua",
    { { "deadline - core.now() <= 0 or core.interrupted()", "deadline - core.now() <= 0" } },
    { "spec/safety_spec.lua" }),
  m("retry-deaf", "a signal ends a wait to retry a request (in a loop and out of one)",
    "rotor.http's retry wait ignores the interrupt", "lua/rotor/http.lua",
    { { "if not sched.sleep(retry_in, true) then", "if not sched.sleep(retry_in) then" } },
    { "spec/safety_spec.lua" }),
  m("key-open", "a sealing key others can read is refused", "core.fs_read_private takes any mode",
    "csrc/fs.c",
    { { "    if ((st.st_mode & 077) != 0) {", "    if (0) {" },
      { "    } else if (fd >= 0 && (st.st_mode & 077) != 0) {", "    } else if (fd >= 0 && 0) {" } },
    { "spec/hardening_spec.lua" }),
  m("deploy-input-blocks", "a deploy command that reads nothing of a large input is stopped after its timeout",
    "the deploy input is written blocking, in a pipe of the default size", "csrc/fs.c",
    -- both guards at once (either alone keeps the write from waiting)
    { { INPUT_GUARDS, (INPUT_GUARDS:gsub("if %(%(room < 0 || %(size_t%)room < inlen%) &&", "if (0 &&")
                                    :gsub("if %(fcntl%(pfd%[1%], F_SETFL, O_NONBLOCK%) != 0%) {$", "if (0) {")) } },
    { "spec/store_spec.lua" }),
  m("afresh-ambiguous", "a first rotation whose mint may have gone through keeps its rotation",
    "the first-rotation reset also after an ambiguous mint", "lua/rotor/rotation.lua",
    { { 'kind ~= "interrupted" and kind ~= "ambiguous" and not rec.versions.pending\n'
        .. '        and type(imported) == "table" and type(imported.meta) == "table" and imported.meta.imported\n'
        .. '        and imported.secret == nil and not (rot.mint and UNKNOWN_MINT[rot.mint.state])',
        'kind ~= "interrupted" and not rec.versions.pending\n'
        .. '        and type(imported) == "table" and type(imported.meta) == "table" and imported.meta.imported\n'
        .. '        and imported.secret == nil' },
      { 'kind ~= "interrupted" and kind ~= "ambiguous" and not rec.versions.pending\n'
        .. '        and type(imported) == "table" and type(imported.meta) == "table" and imported.meta.imported\n'
        .. '        and imported.secret == nil and not (rot.mint and (UNKNOWN_MINT[rot.mint.state] or '
        .. 'rot.mint.state == "dropped"))',
        'kind ~= "interrupted" and not rec.versions.pending\n'
        .. '        and type(imported) == "table" and type(imported.meta) == "table" and imported.meta.imported\n'
        .. '        and imported.secret == nil' } },
    { "spec/rotation_unit_spec.lua" }),
  m("afresh-never", "a first rotation that failed at create with nothing minted does not wedge the slot",
    "the first-rotation reset off", "lua/rotor/rotation.lua",
    { { "      if afresh then\n        ctx.rotation_id = rot.id",
        "      if false then\n        ctx.rotation_id = rot.id" } },
    { "spec/cli_spec.lua" }),
  m("orphan-deletes-lookalike", "recovery deletes only what the journal proves this rotation minted",
    "recovery also deletes items that merely look like this slot's", "lua/rotor/rotation.lua",
    { { "      if name == args.name then\n", "      if name == args.name or args.looks_like(name) then\n" },
      { "      elseif name == args.name then\n", "      elseif name == args.name or args.looks_like(name) then\n" } },
    { "spec/rotation_unit_spec.lua" }),
  m("unfound-forgotten", "a credential a recovery's listing did not show is searched for again",
    "the name the recovery did not find is not kept", "lua/rotor/rotation.lua",
    { { "  elseif n == 0 then\n    local list = self.record.unfound or {}",
        "  elseif false then\n    local list = self.record.unfound or {}" },
      { "  elseif n == 0 then\n    self:note_unfound(", "  elseif false then\n    self:note_unfound(" } },
    { "spec/rotation_unit_spec.lua", "spec/safety_spec.lua" }),
  m("unfound-never-searched", "a credential a recovery's listing did not show is searched for again",
    "later runs do not search for it", "lua/rotor/rotation.lua",
    { { "    local sok, serr = ctx:search_unfound(timefmt.now())", "    local sok, serr = true, nil" } },
    { "spec/rotation_unit_spec.lua", "spec/safety_spec.lua" }),
  m("adopt-never", "a secret minted under a lock that lapsed is stored when it is the one that works",
    "the fenced rotor never takes the lock again for it", "lua/rotor/rotation.lua",
    { { "  if not ctx:stored_client(v.client_id, { \"current\" }) then return nil",
        "  if true then return nil" },
      { "  if v and not ctx:stored_client(v.client_id, { \"current\" }) then return nil",
        "  if v then return nil" } },
    { "--filter='took the slot over' spec/etcd_spec.lua" }),
  m("repair-never", "a slot whose secret a late mint of unknown outcome ended is rotated again",
    "the fenced rotor only reports it", "lua/rotor/rotation.lua",
    { { "(frot and frot.mint and frot.mint.state == \"ambiguous\")", "false" } },
    { "--filter='mint of unknown outcome sent after' spec/etcd_spec.lua" }),
  m("adopt-only-if-due", "a secret minted under a lock that lapsed is stored when it is the one that works",
    "the run that stores it is skipped when the slot is not due", "lua/rotor/rotation.lua",
    { { "and not ctx.opts.dry_run and not ctx.adopt then", "and not ctx.opts.dry_run then" } },
    { "--filter='took the slot over' spec/etcd_spec.lua" }),
  m("drop-pending-unverified", "a pending secret is dropped only when the provider refuses it",
    "drop_pending drops it without trying it", "lua/rotor/rotation.lua",
    { { "  local works, err = honoured(ctx, p)\n", "  local works, err = false, nil\n" } },
    { "spec/rotation_unit_spec.lua" }),
  m("etcd-oversize-retried", "an etcd answer larger than rotor reads is named at once",
    "such an answer is taken for a member down, tried on every member", "lua/rotor/store/etcd.lua",
    { { "res.error.kind == \"protocol\" and res.error.curl_code == 23 then", "false then" } },
    { "--filter='larger than rotor reads is named' spec/etcd_spec.lua" }),
  m("sqs-wait-unbounded", "refused queue messages do not hold a run past its wait",
    "the SQS candidate loop ignores its deadline", "lua/rotor/strategies/spapi.lua",
    { { "    if deadline - core.now() <= 0 then\n      return nil, errors.new { kind = \"timeout\"",
        "    if false then\n      return nil, errors.new { kind = \"timeout\"" } },
    { "spec/rotation_unit_spec.lua" }),
  m("sqs-in-use-taken", "a queue message carrying the secret in use is no new secret",
    "the check against the provider's own secret off", "lua/rotor/strategies/spapi.lua",
    { { " or in_use(payload.newClientSecret) then", " then" } },
    { "spec/safety_spec.lua" }),
  m("sqs-refused-forever", "a candidate the provider refused is tried again after retry_refused",
    "a refused candidate is passed over for good", "lua/rotor/strategies/spapi.lua",
    { { "return type(at) == \"number\" and timefmt.now() - at < retry", "return type(at) == \"number\"" } },
    { "spec/safety_spec.lua" }),
  m("detail-cut-first", "a provider's error detail shows no part of a secret",
    "the detail is cut to its length before it is redacted", "lua/rotor/errors.lua",
    { { REDACT_THEN_CUT, (REDACT_THEN_CUT:gsub("^(.-)\n(.*)$", "%2\n%1")) } },
    { "spec/safety_spec.lua" }),
  m("claim-unchecked-at-write", "a slot's first record is written only while its client's lock holds",
    "the etcd write ignores the client's lock", "lua/rotor/store/etcd.lua",
    { { "  local cl = type(opts) == \"table\" and opts.client_lock or nil", "  local cl = nil" } },
    { "--filter='one credential, one slot' spec/etcd_spec.lua" }),
  m("verify-deaf", "a signal ends the wait between two attempts to verify the new secret",
    "verify waits out its delay whatever signal came", "lua/rotor/rotation.lua",
    { { "if i < attempts and not self:sleep(delay * i, true) then",
        "if i < attempts and not self:sleep(delay * i) then" } },
    { "spec/safety_spec.lua" }),
  m("inflight-deaf", "a signal abandons a read, a token request or a long poll in flight",
    "the multi loop never abandons a transfer", "csrc/http.c",
    { { "    if (!rotor_is_interrupted()) {\n        return n;", "    if (1) {\n        return n;" } },
    { "spec/safety_spec.lua" }),
  m("mint-cut", "a mint in flight runs to its end on a signal", "every transfer is abandoned on a signal",
    "csrc/http.c", { { "        if (x->done || !x->interruptible) {", "        if (x->done) {" } },
    { "spec/safety_spec.lua" }),
}

package.path = "./?.lua;" .. package.path
local sim = require "spec.helpers.sim"
local function sh(cmd) return sim.run(cmd .. " 2>&1") end
local q, read, write = sim.shell_quote, sim.read_file, sim.write_file

local only = arg[1]
local root = "build/mutants"
assert(read("build/rotor") and read("build/5.4/rotor/core.so"), "run `make all` first")

local function copy(name)
  local dir = root .. "/" .. name
  sh("rm -rf " .. q(dir) .. " && mkdir -p " .. q(dir .. "/build/5.4/rotor") .. " " .. q(dir .. "/tmp"))
  local out, rc = sh("git ls-files -z --cached --others --exclude-standard | "
    .. "tar --null -T - --ignore-failed-read -cf - | tar -xf - -C " .. q(dir))
  assert(rc == 0, "copy failed: " .. out)
  -- the host finds its Lua modules at ../lua from its own (real) path: a copy, not a link
  assert(select(2, sh(("cp build/rotor %s/build/rotor && cp build/5.4/rotor/core.so %s/build/5.4/rotor/")
    :format(q(dir), q(dir)))) == 0)
  return dir
end

-- run specs in dir: killed (true when they fail), a short summary
local function run(dir, specs)
  -- the crash matrix on the file store only: the mutations are the engine's, whatever the store
  local out, rc = sh(("cd %s && TMPDIR=$PWD/tmp ROTOR_BIN=./build/rotor ROTOR_CRASH_STORES=file nice %s %s")
    :format(q(dir), BUSTED,
    table.concat(specs, " ")))
  write(dir .. "/busted.log", out)
  local s, f, e = out:match("(%d+) success%a* / (%d+) failure%a* / (%d+) error")
  local summary = s and ("%s ok, %s failed, %s errors"):format(s, f, e) or ("exit " .. tostring(rc))
  return rc ~= 0, summary
end

local selected, all_specs, seen = {}, {}, {}
for _, mu in ipairs(MUTANTS) do
  if not only or mu[1]:find(only, 1, true) then
    selected[#selected + 1] = mu
    for _, sp in ipairs(mu[6]) do
      if not seen[sp] then seen[sp] = true all_specs[#all_specs + 1] = sp end
    end
  end
end

-- baseline: each spec on the unmutated copy
local base_dir = copy("baseline")
local baseline = {}
for _, sp in ipairs(all_specs) do
  local failed, summary = run(base_dir, { sp })
  baseline[sp] = { ok = not failed, summary = summary }
  io.stderr:write(("baseline %-34s %s\n"):format(sp, failed and ("FAILS (" .. summary .. ")") or "passes"))
end

local rows, bad = {}, 0
for _, mu in ipairs(selected) do
  local name, behaviour, what, file, alts, specs = mu[1], mu[2], mu[3], mu[4], mu[5], mu[6]
  local dir = copy(name)
  local text = assert(read(dir .. "/" .. file), "no " .. file)
  local applied
  for _, alt in ipairs(alts) do
    local from, to = alt[1], alt[2]
    local a = text:find(from, 1, true)
    if a and not text:find(from, a + 1, true) then
      write(dir .. "/" .. file, text:sub(1, a - 1) .. to .. text:sub(a + #from))
      applied = true
      if file:find("^csrc/") then
        -- a mutation of the C core: the copy's core and host are built again from it
        local out, rc = sh(("cd %s && make -s build/5.4/rotor/core.so build/rotor 2>&1"):format(q(dir)))
        if rc ~= 0 then error("the mutated core does not build: " .. out) end
      end
      break
    end
  end
  local usable = {}
  for _, sp in ipairs(specs) do if baseline[sp].ok then usable[#usable + 1] = sp end end
  local result
  if not applied then
    result = mu.optional and "n/a: the code it targets is not in this tree" or "DOES NOT APPLY (code changed)"
    if not mu.optional then bad = bad + 1 end
  elseif #usable == 0 then
    result = "NOT TESTED: its specs fail unmutated"
    bad = bad + 1
  else
    local killed, summary = run(dir, usable)
    result = (killed and "killed" or "SURVIVED") .. " (" .. summary .. ")"
    if not killed then bad = bad + 1 end
  end
  rows[#rows + 1] = { behaviour, what, table.concat(specs, " "), result }
  io.stderr:write(("%-22s %s\n"):format(name, result))
  if applied and result:find("^killed") then sh("rm -rf " .. q(dir)) end
end

print("| behaviour | mutation | specs | result |")
print("|---|---|---|---|")
for _, r in ipairs(rows) do print("| " .. table.concat(r, " | ") .. " |") end
local killed = 0
for _, r in ipairs(rows) do if r[4]:find("^killed") then killed = killed + 1 end end
print(("mutants: %d, killed: %d, survived, untested or no longer applying: %d"):format(#rows, killed, bad))
for _, sp in ipairs(all_specs) do
  if not baseline[sp].ok then print("baseline: " .. sp .. " fails unmutated (" .. baseline[sp].summary .. ")") end
end
os.exit(bad == 0 and 0 or 1)
