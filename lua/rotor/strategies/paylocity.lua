-- Paylocity WebLink rotation: obtainNewClientSecret with the code from Paylocity's expiry email
-- (target.code), authenticated with the current, still valid credential. Same client_id; the old
-- secret keeps working until its own expiry date (recorded as the previous version's expires:
-- the date Paylocity gave for it when it was minted, or target.old_expires); there is nothing to
-- call to retire it.
-- Ambiguous mint: whether the code was consumed is unknown and a second call is unsafe, so the next
-- run with the same code stops and says what a person must do; a run with a new code proceeds.
local errors = require "rotor.errors"

local _M = { default = "code", strategies = {} }

local s = { name = "code" }
_M.strategies.code = s

function s.check(ctx)
  local t = ctx.target
  if t.code ~= nil and (type(t.code) ~= "string" or t.code == "") then
    error("rotate: paylocity target.code must be a non-empty string (the code from the expiry email)", 0)
  end
  if t.old_expires ~= nil and type(t.old_expires) ~= "string" then
    error("rotate: target.old_expires must be a date string", 0)
  end
end

s.describe = {
  create = function(ctx)
    if not ctx.target.code then return "NEEDS target.code (from Paylocity's expiry email): cannot mint without it" end
    return "obtain a new client secret for " .. tostring(ctx:client_id()) .. " with the emailed code"
  end,
  retire = function(ctx)
    local cur = ctx.record.versions.current
    return "nothing to call: the old secret expires on its own date ("
      .. tostring(cur and cur.expires or ctx.target.old_expires or "unknown") .. ")"
  end,
}

local function need_code(ctx)
  return nil, errors.new { kind = "config", provider = "paylocity", op = "obtain_new_client_secret",
    message = "target.code is required to mint a Paylocity secret for slot " .. ctx.slot
      .. ": it is the code in Paylocity's email \"ACTION NEEDED: Web Link API Credentials Expiring Soon\"" }
end

function s.create(ctx)
  local code = ctx.target.code
  if not code then return need_code(ctx) end
  local before = ctx.record.rotation.mint
  if before and before.state == "dropped" and before.code_fp == ctx:fingerprint(code) and not ctx.opts.force_mint then
    -- the secret that code gave was refused and dropped (drop_pending): the code is used
    return nil, errors.new { kind = "config", provider = "paylocity", op = "obtain_new_client_secret",
      message = ("slot %s: this emailed code was used by the mint whose secret was dropped; nothing was sent. "
        .. "Rerun with target.code set to a NEW code from Paylocity"):format(ctx.slot) }
  end
  local ok, err = ctx:mint_intent("obtain_new_client_secret", { code_fp = ctx:fingerprint(code) })
  if not ok then return nil, err end
  local r
  r, err = ctx.provider:obtain_new_client_secret { code = code }
  if not r then return nil, err end
  ctx:crash("mint", "after")
  local item = r[1]
  local exp = item.clientSecretExpirationDate
  if type(exp) ~= "string" and type(exp) ~= "number" then exp = nil end
  return { client_id = ctx:client_id(), secret = item.clientSecret, expires = exp }
end

function s.recover_note()
  return "an earlier request with an emailed code had an unknown outcome"
end

function s.recover(ctx, mint)
  local code = ctx.target.code
  if not code then return need_code(ctx) end
  if ctx.opts.force_mint or (mint.code_fp and ctx:fingerprint(code) ~= mint.code_fp) then
    return false -- a new code (or a person's word that the old one is unused): mint with it
  end
  local cur = ctx.record.versions.current
  return nil, errors.new {
    kind = "ambiguous", provider = "paylocity", op = "obtain_new_client_secret",
    message = ("slot %s: a request to obtain a new Paylocity client secret with this emailed code was sent at %s "
      .. "and its outcome is unknown: the secret it may have issued never reached rotor, and the code may be used "
      .. "up. Nothing was sent now. The current secret keeps working until %s. What to do: ask Paylocity "
      .. "Service (or your Paylocity contact) for a new code — or wait for the next expiry email — "
      .. "and rerun with target.code set to the NEW code; if Paylocity confirms the old code was never used, rerun "
      .. "with force_mint = true."):format(ctx.slot, tostring(mint.time),
        tostring(cur and cur.expires or "its expiry date")),
  }
end

function s.next_run(ctx)
  local _ = ctx
  return "The code may or may not have been used. The next run will not resend it: rerun with a new code from "
    .. "Paylocity (or force_mint = true once Paylocity confirms the code is unused)"
end

function s.lost_note(ctx)
  local cur = ctx.record.versions.current
  return ("The emailed code was used and Paylocity issued a secret that rotor could not store; Paylocity has no "
    .. "call to revoke it and it expires on its own date. The current secret keeps working until %s. What to do: "
    .. "free the store (the error above says why it failed), ask Paylocity Service for a new code, and rerun with "
    .. "target.code set to the NEW code"):format(tostring(cur and cur.expires or "its expiry date"))
end

-- retire only notes the old secret's expiry in the record: nothing is sent
function s.retire_sends() return false end

function s.retire(ctx)
  local prev = ctx:version("previous")
  if not prev then return true, "no old secret recorded" end
  if not prev.expires then ctx:retire_previous { expires = ctx.target.old_expires } end
  if prev.expires then
    return true, "the old secret expires on its own date: " .. tostring(prev.expires)
  end
  return true, "the old secret expires on its own date (unknown to rotor: it was not minted by rotor)"
end

function s.summary(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  return ("new secret until %s; the old one works until %s"):format(tostring(cur and cur.expires),
    tostring(prev and prev.expires or "its own expiry"))
end

return _M
