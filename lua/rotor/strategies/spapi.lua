-- Amazon SP-API (LWA) rotation: rotateApplicationClientSecret (204), then the new secret arrives in
-- an APPLICATION_OAUTH_CLIENT_NEW_SECRET message on the SQS queue. The message is acknowledged
-- (deleted) only once the secret is stored as pending. Same client_id; the old secret keeps working
-- until oldClientSecretExpiryTime (about 7 days), recorded as the previous version's expires.
-- Ambiguous mint, or a crash before the message was read: the next run reads the queue, where the
-- secret will arrive. `wait` (seconds, default 300) bounds how long one run waits for it;
-- `visibility` (seconds, default 60) is how long a message rotor received stays hidden from other
-- readers: after a crash between receiving and storing it, the next run finds it once that passed.
-- Candidates are verified before they are stored (see receive below); target.application_id,
-- when set, must match the message's notificationMetadata.applicationId.
local errors = require "rotor.errors"
local core = require "rotor.core"
local timefmt = require "rotor.timefmt"

local _M = { default = "sqs", strategies = {} }

local s = { name = "sqs" }
_M.strategies.sqs = s

local SKEW = 300 -- seconds of clock difference tolerated when ignoring older notifications

s.describe = {
  create = function(ctx)
    return ("call rotateApplicationClientSecret, then wait up to %d s for the new secret on the SQS queue"):format(
      ctx.opts.wait or 300)
  end,
  retire = function() return "nothing to call: the old secret expires at oldClientSecretExpiryTime (about 7 days)" end,
}

local function same_secret(a, b)
  if a == nil or b == nil then return false end
  local x = core.is_secret(a) and a:reveal() or a
  local y = core.is_secret(b) and b:reveal() or b
  return x == y
end


-- wait for the new-secret message: a version, with ctx.ack set | nil, err (kind "timeout" if none).
-- A candidate must be dated after the rotation request (less clock skew) and not in the future,
-- come from the configured application (target.application_id), and obtain a token: one the
-- provider refuses is discarded (its fingerprint journalled, the message left alone) and the
-- search goes on, so a forged or stale message cannot stand in for Amazon's.
local function receive(ctx, mint)
  local wait = ctx.opts.wait or 300
  local deadline = core.now() + wait
  local since = mint and mint.at and (mint.at - SKEW) or nil
  local v = ctx.record.versions
  local gone = ctx:rotation_data("discarded") -- fingerprints of candidates that failed verification
  local function skip(p)
    local sec = p.newClientSecret
    return type(sec) == "string" and gone[ctx:fingerprint(sec)] ~= nil
  end
  while true do
    local remaining = math.max(0, deadline - core.now())
    local payload, ack = ctx.provider:receive_new_client_secret {
      wait = math.min(20, remaining), since = since, not_after = timefmt.now() + SKEW,
      application_id = ctx.target.application_id, skip = skip, visibility = ctx.opts.visibility,
    }
    if not payload then
      local waiting = errors.is(ack) and ack.kind == "timeout" and deadline - core.now() > 0
      if not waiting then return nil, ack end
    elseif same_secret(payload.newClientSecret, v.current and v.current.secret)
      or same_secret(payload.newClientSecret, v.previous and v.previous.secret) then
      -- a message whose secret is already stored (a crash came between storing and acknowledging)
      ack()
    else
      local client_id = payload.clientId or ctx:client_id()
      local ok, verr = ctx:verify_candidate(client_id, payload.newClientSecret)
      if ok then
        ctx.ack = ack
        return { client_id = client_id, secret = payload.newClientSecret,
                 expires = payload.newClientSecretExpiryTime,
                 meta = { old_expires = payload.oldClientSecretExpiryTime } }
      end
      if not (errors.is(verr) and verr.kind == "auth") then
        -- not a refusal (the network, the token endpoint): the message stays for the next run
        return nil, verr
      end
      local fp = ctx:fingerprint(payload.newClientSecret:reveal())
      gone[fp] = core.now()
      local jok, jerr = ctx:journal("create", "discarded", "a new-secret message whose secret (fingerprint "
        .. fp:sub(1, 16) .. ") was refused by the provider: not Amazon's, or stale; left in the queue, "
        .. "reading on", payload.newClientSecret, client_id)
      if not jok then return nil, jerr end
    end
    -- messages passed over (refused or already stored) do not stretch the run past its wait: a
    -- queue someone keeps filling with forgeries would otherwise hold it, and the slot's lock, for good
    if deadline - core.now() <= 0 then
      return nil, errors.new { kind = "timeout", provider = "spapi", op = "receive_new_client_secret",
        message = ("no new-secret message the provider accepts within %g s"):format(wait) }
    end
  end
end

function s.check(ctx)
  local a = ctx.target.application_id
  if a ~= nil and (type(a) ~= "string" or a == "") then
    error("rotate: spapi target.application_id must be a non-empty string (amzn1.sp.solution...)", 0)
  end
end

function s.create(ctx)
  local ok, err = ctx:mint_intent("rotate_application_client_secret")
  if not ok then return nil, err end
  ok, err = ctx.provider:rotate_application_client_secret()
  if not ok then return nil, err end
  ctx:crash("mint", "after")
  local mint = ctx:mint_state("requested") -- the request was accepted: the secret will arrive
  ctx:journal("create", "requested", "rotation requested; awaiting the new secret on the SQS queue")
  local version
  version, err = receive(ctx, mint)
  if not version then
    return nil, errors.with(err, { message = tostring(err and err.message)
      .. "; the rotation was requested: the next run reads the queue again (it does not rotate again)" })
  end
  return version
end

function s.recover_note()
  return "an earlier rotation request may have gone through: reading the SQS queue for the new secret"
end

function s.recover(ctx, mint)
  if ctx.opts.force_mint and mint.state ~= "requested" then return false end -- a person's word: request anew
  local version, err = receive(ctx, mint)
  if version then return version end
  if mint.state == "requested" then
    return nil, errors.with(err, { message = tostring(err and err.message)
      .. "; Amazon accepted the rotation request: the next run reads the queue again" })
  end
  if not (errors.is(err) and err.kind == "timeout") then return nil, err end
  return nil, errors.with(err, { kind = "ambiguous", message = tostring(err and err.message)
    .. "; an earlier rotation request had an unknown outcome and no new-secret message has arrived. The next run "
    .. "reads the queue again. If the Developer Console shows the secret was not rotated, rerun with "
    .. "force_mint = true to request a rotation" })
end

function s.next_run()
  return "The rotation request may or may not have reached Amazon. The next run reads the SQS queue for the new "
    .. "secret (it does not request another rotation)"
end

function s.after_persist(ctx)
  if not ctx.ack then return true end
  ctx:crash("ack", "before")
  local ok, err = ctx.ack()
  ctx.ack = nil
  if not ok then
    return nil, "the SQS message could not be deleted (" .. tostring(err) .. "); it is ignored by later runs"
  end
  return true
end

-- retire only notes the old secret's expiry in the record: nothing is sent
function s.retire_sends() return false end

function s.retire(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  if not prev then return true, "no old secret recorded" end
  local old = cur and cur.meta and cur.meta.old_expires
  if old then ctx:retire_previous { expires = old } end
  return true, "the old secret expires at " .. tostring(prev.expires or "oldClientSecretExpiryTime (unknown)")
end

function s.summary(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  return ("new secret until %s; the old one works until %s"):format(tostring(cur and cur.expires),
    tostring(prev and prev.expires))
end

function s.lost_note()
  return "the SQS message was not deleted: the next run reads it again"
end

return _M
