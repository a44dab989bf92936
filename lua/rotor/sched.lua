-- The scheduler: Lua coroutines driven by one libcurl multi loop.
--
-- Inside rotor.parallel every HTTP call of a worker yields to this loop, which multiplexes all
-- transfers on one multi handle and resumes each coroutine when its transfer finishes. The same
-- calls outside parallel run synchronously on a multi handle of their own. No lua_State is
-- kept in C across a yield: the C side only returns finished results from poll().
local core = require "rotor.core"

local _M = {}

local co_running, co_create, co_resume, co_status, co_yield =
  coroutine.running, coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local now = core.now

local sync_multi        -- for calls made outside any loop
local loop              -- the running loop, or nil
-- the multi handle of the last top-level loop that ended well, kept with its idle connections for
-- the next one: a script's batches one after another reuse their TLS connections instead of making
-- them again (a batch of 16 opened 16 or more, each costing millions of instructions)
local kept_multi
local owner = setmetatable({}, { __mode = "k" })  -- coroutine -> its loop

local WAKE = {}          -- sentinel value passed when a sleeper or waiter wakes
local NONE = {}          -- in the ready queue: a coroutine resumed with no value
local INTERRUPTED = {}   -- passed to an interruptible sleeper woken early by SIGINT/SIGTERM

-- queue co to be resumed with value: the loop's ready queue holds coroutine, value pairs in one
-- array (an entry per wake-up would be a table made per transfer)
local function wake(l, co, value)
  local q = l.ready
  local n = #q
  q[n + 1], q[n + 2] = co, value == nil and NONE or value
end

local function get_sync_multi()
  if not sync_multi then sync_multi = core.multi() end
  return sync_multi
end

local function in_loop()
  local co = co_running()
  local l = co and owner[co]
  if l and l == loop then return l, co end
  return nil
end

--- Run a request table (see doc/INTERNALS.md §1) and return the core's result table.
-- Inside a loop, yields until it finishes; otherwise blocks on the sync multi handle.
-- Returns nil, err_table when the core refuses the request before it starts.
function _M.request(req)
  local l, co = in_loop()
  if l then
    local id, err = l.multi:add(req)
    if not id then return nil, err end
    l.transfers[id] = co
    l.ntransfers = l.ntransfers + 1
    return co_yield()
  end
  local m = get_sync_multi()
  local id, err = m:add(req)
  if not id then return nil, err end
  while true do
    local done = m:poll(1000)
    for i = 1, #done do
      if done[i].id == id then return done[i] end
    end
  end
end

--- Close the connections kept between top-level loops (and their multi handle) now; the next
-- loop opens its own. For measurements that must start cold; rotor itself never needs it.
function _M.close_idle()
  if kept_multi then kept_multi:close() end
  kept_multi = nil
end

--- Sleep for s seconds (yields inside a loop) -> true. A signal to the rotor host does not cut it
-- short (rotor's own waits belong to the step that runs: a write retried while a new secret is
-- held), unless interruptible is true: then it ends early and returns false once the host got
-- SIGINT/SIGTERM (a wait to retry a request, rotor.sleep in a script).
function _M.sleep(s, interruptible)
  if not s or s <= 0 then return true end
  local l, co = in_loop()
  if l then
    l.sleepers[#l.sleepers + 1] = { at = now() + s, co = co, interruptible = interruptible or nil }
    return co_yield() ~= INTERRUPTED
  end
  return core.sleep(s, interruptible)
end

--- Wait for a child of core.spawn_start to end: what core.spawn returns (exit status, input
-- written | nil, message, reason: "timeout" or "interrupted" when it was stopped). Inside a loop
-- the task sleeps between looks (2 ms, doubling up to 50 ms) while the loop drives the other
-- tasks: a deploy command of one rotation no longer holds every other rotation of a batch (and
-- their consumers' wait for a new secret) until it ends. Outside a loop, the same looks with plain
-- sleeps.
function _M.wait_child(child)
  local step = 0.002
  while true do
    local code, wrote, reason = child:poll()
    if code ~= false then return code, wrote, reason end
    _M.sleep(step)
    step = math.min(step * 2, 0.05)
  end
end

--- Wait until notify(key) (inside a loop) or, outside a loop, for a short while
-- (the only other party can be another thread of the process).
function _M.wait(key, timeout)
  local l, co = in_loop()
  if l then
    local q = l.waiters[key]
    if not q then q = {}; l.waiters[key] = q end
    q[#q + 1] = co
    if timeout then l.sleepers[#l.sleepers + 1] = { at = now() + timeout, co = co, key = key } end
    co_yield()
    return
  end
  core.sleep(0.02)
end

function _M.notify(key)
  local l = loop
  if not l then return end
  local q = l.waiters[key]
  if not q then return end
  l.waiters[key] = nil
  for i = 1, #q do wake(l, q[i], WAKE) end
end

-- A durable write's ticket: wait() returns true | nil, message once the bytes are on disk.
local Ticket = {}
Ticket.__index = Ticket

function Ticket:wait()
  if not self.done then
    local l, co = in_loop()
    if l ~= self.loop then error("sched: a durable write is waited for outside its loop", 2) end
    self.co = co
    co_yield()
  end
  if self.ok == true then return true end
  return nil, self.ok
end

--- A durable write into a directory (a core.fs_dir): op "atomic" (as dir:write: temp file,
-- fsync, rename, directory fsync) or "append" (as dir:append: O_APPEND, fsync). Returns a ticket
-- at once; ticket:wait() returns true | nil, message once the bytes are on disk. Inside a loop
-- the write is queued: the writes queued by every task go to disk together when no task is
-- ready to run (core.durable_start: one group commit on the durable-write thread, each directory
-- fsynced once) while the loop keeps driving transfers; writes queued meanwhile form the next
-- group, started as soon as the loop sees that one done (it looks after each task it resumes),
-- before the tasks it woke run on. Writes of one task go to disk in the order it queued them: a
-- later one never before an earlier one (the same group, or a later group). Outside a loop: the
-- synchronous dir:write / dir:append, done before it returns. data: a string, a rotor.secret, or a
-- rope (an array of strings and { s, i, j } pieces, joined in C where the bytes are copied).
-- keep (atomic, optional): how many bytes at the start of data hold no secret; once a later write
-- of the file in a group commit displaced it, only the bytes after them are zeroed
-- (core.durable_start).
function _M.durable_later(op, dir, name, data, mode, keep)
  if op ~= "atomic" and op ~= "append" then error("sched.durable: op must be atomic or append", 2) end
  if type(name) ~= "string" or name == "" then error("sched.durable: a file name expected", 2) end
  if type(data) ~= "string" and type(data) ~= "table" and not core.is_secret(data) then
    error("sched.durable: data must be a string, a rotor.secret or a rope (an array of pieces)", 2)
  end
  local l = in_loop()
  local t = setmetatable({ loop = l }, Ticket)
  if not l then
    local ok, msg
    if op == "atomic" then ok, msg = dir:write(name, data, mode) else ok, msg = dir:append(name, data, mode) end
    t.done, t.ok = true, ok == true or msg
    return t
  end
  l.durable_queue[#l.durable_queue + 1] = { op, dir, name, data, mode or 384, keep }
  l.durable_waiters[#l.durable_waiters + 1] = t
  return t
end

--- The same, waiting: true | nil, message once the bytes are on disk.
function _M.durable(op, dir, name, data, mode, keep)
  return _M.durable_later(op, dir, name, data, mode, keep):wait()
end

-- start a group commit of the queued writes, unless one is on disk already
local function durable_flush(l)
  if l.durable_job or #l.durable_queue == 0 then return end
  l.durable_job = core.durable_start(l.durable_queue)
  l.durable_running = l.durable_waiters
  l.durable_queue, l.durable_waiters = {}, {}
end

-- wake the writers of a group commit that finished
local function durable_collect(l)
  local job = l.durable_job
  local res = job and job:results()
  if not res then return end
  -- the durable-write thread may still be emptying its spare files: freed when the next group
  -- finishes
  if l.durable_old then l.durable_old:close() end
  l.durable_old, l.durable_job = job, nil
  for i, t in ipairs(l.durable_running) do
    t.done, t.ok = true, res[i]
    if t.co then wake(l, t.co) end
  end
  l.durable_running = nil
  -- the writes queued while that group was on disk go at once: the disk is not left idle while
  -- the woken tasks run
  durable_flush(l)
end

local function new_loop()
  -- a multi handle of its own, also for a loop started while another runs (from a coroutine that
  -- is none of its tasks): on the running loop's handle, each loop would collect the other's
  -- finished transfers and drop them, and the tasks waiting for those would wait for ever
  local m = kept_multi or core.multi()
  kept_multi = nil
  return {
    multi = m,
    transfers = {}, ntransfers = 0,
    sleepers = {}, waiters = {}, ready = {}, ready_spare = {},
    durable_queue = {}, durable_waiters = {},
  }
end

-- Drive the loop until every task of `group` is finished.
local function drive(l, group)
  while group.left > 0 do
    -- run what is ready
    while #l.ready > 0 do
      -- the queue is swapped with an empty one: wake-ups during this round go to the next
      local batch = l.ready
      l.ready, l.ready_spare = l.ready_spare, batch
      for i = 1, #batch, 2 do
        local co, value = batch[i], batch[i + 1]
        batch[i], batch[i + 1] = nil, nil
        if co_status(co) == "suspended" then
          if value == NONE then value = nil end
          local ok, a = co_resume(co, value)
          -- a worker runs its items under pcall: only the scheduler's own failure gets here
          if not ok then error(a, 0) end
          if l.durable_job then durable_collect(l) end
        end
      end
    end
    if group.left == 0 then break end
    -- wake sleepers that are due
    local t = now()
    local nexts
    local sleepers, keep = l.sleepers, nil
    local stopping = false
    if #sleepers > 0 then keep, stopping = {}, core.interrupted() end
    for i = 1, #sleepers do
      local s = sleepers[i]
      if stopping and s.interruptible then
        wake(l, s.co, INTERRUPTED)
      elseif s.at <= t then
        if s.key then
          -- a wait with timeout: only wake it if it is still waiting
          local q = l.waiters[s.key]
          if q then
            for j = #q, 1, -1 do
              if q[j] == s.co then
                table.remove(q, j)
                wake(l, s.co, WAKE)
              end
            end
          end
        else
          wake(l, s.co, WAKE)
        end
      else
        keep[#keep + 1] = s
        if not nexts or s.at < nexts then nexts = s.at end
      end
    end
    if keep then l.sleepers = keep end
    if #l.ready == 0 then durable_flush(l) end
    if #l.ready == 0 then
      if l.ntransfers == 0 and not nexts and not l.durable_job then
        -- nothing can make progress: tasks wait on keys nobody will notify
        local stuck = {}
        for key, q in pairs(l.waiters) do
          for i = 1, #q do stuck[#stuck + 1] = { co = q[i], key = key } end
        end
        l.waiters = {}
        for i = 1, #stuck do
          wake(l, stuck[i].co, WAKE)
        end
        if #stuck == 0 then
          error("rotor.parallel: tasks are blocked with nothing to wake them", 0)
        end
      else
        local wait_ms = 1000
        if nexts then wait_ms = math.max(0, math.min(wait_ms, math.ceil((nexts - t) * 1000))) end
        local done = l.multi:poll(wait_ms, l.durable_job and l.durable_job:fd())
        durable_collect(l)
        for i = 1, #done do
          local r = done[i]
          local co = l.transfers[r.id]
          if co then
            l.transfers[r.id] = nil
            l.ntransfers = l.ntransfers - 1
            wake(l, co, r)
          end
        end
      end
    end
  end
end

--- rotor.parallel(items, fn, opts) -> results, errors
-- fn(item, i) runs for each item, at most opts.concurrency (default 16) at once, on as many
-- worker coroutines (each runs its items one after another).
-- results[i] is fn's first value; errors[i] its second, or the message it raised.
function _M.parallel(items, fn, opts)
  if type(items) ~= "table" then error("rotor.parallel: items must be a table", 2) end
  if type(fn) ~= "function" then error("rotor.parallel: fn must be a function", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("rotor.parallel: opts must be a table", 2) end
  local unknown = next(opts) ~= nil
    and require("rotor.keys").unknown_key(opts, { "concurrency", "progress" }, "option")
  if unknown then error("rotor.parallel: " .. unknown, 2) end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    error("rotor.parallel: progress must be a function", 2)
  end
  local conc = opts.concurrency or 16
  if type(conc) ~= "number" or conc ~= conc or conc < 1 then
    error("rotor.parallel: concurrency must be a number >= 1", 2)
  end
  local n = #items
  local results, errors = {}, {}
  if n == 0 then return results, errors end

  local outer = loop
  local parent_l, parent_co = in_loop()
  local l = parent_l or new_loop()
  local group = { left = n }
  local next_i = 1
  local on_progress = opts.progress

  -- at most conc workers, each a coroutine that runs items one after another (a coroutine per
  -- item cost as much CPU as the HTTP request it made); fn runs under pcall, so an item that
  -- raises ends alone, its to-be-closed variables closed
  local function finish_item(i, ok, a, b)
    if ok then
      results[i] = a
      if b ~= nil then errors[i] = b end
    else
      errors[i] = core.redact(tostring(a))
    end
    group.left = group.left - 1
    if on_progress then on_progress(n - group.left, n) end
    if group.left == 0 and group.waiter then
      wake(l, group.waiter, WAKE)
    end
  end
  local function worker()
    while next_i <= n do
      local i = next_i
      next_i = next_i + 1
      finish_item(i, pcall(fn, items[i], i))
    end
  end
  for _ = 1, math.min(conc, n) do
    local co = co_create(worker)
    owner[co] = l
    wake(l, co)
  end

  if parent_l then
    -- nested: the caller is a task of the running loop; wait for our group
    group.waiter = parent_co
    while group.left > 0 do co_yield() end
    return results, errors
  end
  loop = l
  local ok, err = pcall(drive, l, group)
  -- writes queued by tasks that ended without waiting for them still reach the disk
  while ok and (l.durable_job or #l.durable_queue > 0) do
    durable_flush(l)
    l.multi:poll(1000, l.durable_job:fd())
    durable_collect(l)
  end
  loop = outer
  if ok and not outer and l.ntransfers == 0 then kept_multi = l.multi end
  if l.durable_old then
    l.durable_old:close()   -- the thread is done with it (or is, now): nothing outlives the batch
    l.durable_old = nil
  end
  if not ok then error(err, 0) end
  return results, errors
end

return _M
