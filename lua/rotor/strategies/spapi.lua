-- Amazon SP-API (LWA) rotation: rotateApplicationClientSecret (204), then the new secret arrives in
-- an APPLICATION_OAUTH_CLIENT_NEW_SECRET message on the SQS queue. The message is acknowledged
-- (deleted) only once the secret is stored as pending. Same client_id; the old secret keeps working
-- until oldClientSecretExpiryTime (about 7 days), recorded as the previous version's expires.
-- Ambiguous mint, or a crash before the message was read: the next run reads the queue, where the
-- secret will arrive. `wait` (seconds, default 300) bounds how long one run waits for it;
-- `visibility` (seconds, default 60) is how long a message rotor received stays hidden from other
-- readers: after a crash between receiving and storing it, the next run finds it once that passed.
-- Candidates are verified before they are stored (see receive below); target.application_id,
-- when set, must match the message's notificationMetadata.applicationId; one the provider
-- refused is tried again after `retry_refused` seconds (default 600).
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

-- seconds after which a candidate the provider refused is tried again (option retry_refused):
-- Amazon's token service may refuse a new secret for a while after issuing it (how long is not
-- documented), and a message passed over for good would lose that secret (the old one expires
-- about 7 days after the rotation)
local RETRY_REFUSED = 600

local function same_secret(a, b)
  if a == nil or b == nil then return false end
  if core.is_secret(a) then return a:equals(b) end
  if core.is_secret(b) then return b:equals(a) end
  return a == b
end


local function passed(n, retry)
  if n == 0 then return "" end
  return ("; %d message(s) passed over, their secrets refused by the provider (each is tried again after %g "
    .. "s)"):format(n, retry)
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
  -- fingerprints of candidates the provider refused -> when (epoch seconds): passed over until
  -- RETRY_REFUSED has gone by, then tried again
  local gone = ctx:rotation_data("discarded")
  local retry = ctx.opts.retry_refused or RETRY_REFUSED
  local function skip(p)
    local sec = p.newClientSecret
    local at = type(sec) == "string" and gone[ctx:fingerprint(sec)]
    return type(at) == "number" and timefmt.now() - at < retry
  end
  local refused = 0
  -- the provider's own secret: for SP-API the rotated client is the one it authenticates with
  local function in_use(sec)
    return ctx.provider.uses_secret ~= nil and ctx.provider:uses_secret(sec)
  end
  while true do
    local remaining = math.max(0, deadline - core.now())
    local payload, ack = ctx.provider:receive_new_client_secret {
      wait = math.min(20, remaining), since = since, not_after = timefmt.now() + SKEW,
      application_id = ctx.target.application_id, skip = skip, visibility = ctx.opts.visibility,
    }
    if not payload then
      local timeout = errors.is(ack) and ack.kind == "timeout"
      if not timeout then return nil, ack end
      if deadline - core.now() <= 0 then
        -- the run's wait, not the rest of it this last poll had
        return nil, errors.with(ack, { message = ("no new-secret message for client %s within %g s%s"):format(
          tostring(ctx:client_id()), wait, passed(refused, retry)) })
      end
    elseif same_secret(payload.newClientSecret, v.current and v.current.secret)
      or same_secret(payload.newClientSecret, v.previous and v.previous.secret) or in_use(payload.newClientSecret) then
      -- a message whose secret is already stored (a crash came between storing and acknowledging),
      -- or is the one in use now (a slot's first rotation stores none before the new one): no new
      -- secret in it, whoever sent it. Taken for the new one, it would end the rotation with the
      -- old secret, which then expires, and Amazon's message left unread.
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
      local t = timefmt.now()
      for k, at in pairs(gone) do  -- those past their retry are tried anyway: the list stays short
        if type(at) ~= "number" or t - at >= retry then gone[k] = nil end
      end
      gone[fp] = t
      refused = refused + 1
      local jok, jerr = ctx:journal("create", "discarded", "a new-secret message whose secret (fingerprint "
        .. fp:sub(1, 16) .. ") was refused by the provider: not Amazon's, stale, or not yet taken by Amazon's "
        .. ("token service; left in the queue and tried again after %g s; reading on"):format(retry),
        payload.newClientSecret, client_id)
      if not jok then return nil, jerr end
    end
    -- messages passed over (refused or already stored) do not stretch the run past its wait: a
    -- queue someone keeps filling with forgeries would otherwise hold it, and the slot's lock, for good
    if deadline - core.now() <= 0 then
      return nil, errors.new { kind = "timeout", provider = "spapi", op = "receive_new_client_secret",
        message = ("no new-secret message for client %s that the provider accepts within %g s%s"):format(
          tostring(ctx:client_id()), wait, passed(refused, retry)) }
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
      .. "; Amazon accepted the rotation request: the next run reads the queue again"
      .. (ctx.opts.force_mint and " (force_mint does not apply: a second request would replace the secret "
        .. "Amazon is sending)" or "") })
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
