-- Genesys Cloud rotation strategies.
--
-- regenerate (default): POST /api/v2/oauth/clients/{id}/secret on the target client. Genesys has
--   no documented overlap: the OLD SECRET STOPS WORKING AT ONCE, when the new one is minted.
--   Ambiguous mint: the next run regenerates again (whatever the lost request minted is replaced).
--   Refused for the provider object's own client: if that answer were lost, the credential that
--   recovery needs would be the one the mint killed. Use new_client for the admin client.
-- new_client: a second client with the same authorizedGrantType, roleDivisions, token validity,
--   scope and redirect URIs, named "<name> [rotor <rotation id>]"; verified, deployed, promoted;
--   the old client is then disabled (PUT state=disabled) and deleted, after `grace` seconds when
--   the grace option is set (the deletion then happens on a later run). Changes the client_id.
--   Ambiguous mint: the next run deletes the client whose name was recorded before the mint (it
--   carries the rotation id) and mints anew; clients it cannot attribute are reported, not deleted.
--   Safe for the provider object's own client: the old client keeps working until retire, and the
--   provider object acts with the new client from promote on.
local errors = require "rotor.errors"
local json = require "rotor.json"
local timefmt = require "rotor.timefmt"

local _M = { default = "regenerate", strategies = {} }

-- request fields of an OAuthClient that a copy or a full PUT carries over
local REQUEST_FIELDS = { "name", "description", "registeredRedirectUri", "roleIds", "accessTokenValiditySeconds",
  "authorizedGrantType", "scope", "roleDivisions", "state", "dateToDelete" }

local function request_body(client)
  local body = {}
  for _, k in ipairs(REQUEST_FIELDS) do
    local v = client[k]
    if v ~= nil and v ~= json.null then body[k] = v end
  end
  return body
end

local function is_gone(err)
  return errors.is(err) and err.kind == "http" and err.status == 404
end

local function default_client_id(ctx)
  local id = ctx.target.client_id
  if type(id) ~= "string" or id == "" then
    -- a slot that holds no client yet, and no target names one: the caller's to fix, not a bug
    error(errors.new { kind = "config", message = "genesys needs target.client_id (the OAuth client to rotate): "
      .. "the slot holds no client yet; nothing was sent" }, 0)
  end
  return id
end

local function check(ctx)
  if ctx.target.client_id ~= nil and type(ctx.target.client_id) ~= "string" then
    error("rotate: target.client_id must be a string", 0)
  end
end

-- the client rotated is the one the provider object authenticates with: named as the target, or the
-- stored successor (new_client) of the provider object's bootstrap client
local function own_credential(ctx)
  local pid = ctx.provider.client_id
  if ctx.target.client_id == pid then return true end
  local ok, id = pcall(ctx.client_id, ctx)
  if ok and id == pid then return true end
  local cur = ctx.record and ctx.record.versions.current
  return cur ~= nil and type(cur.meta) == "table" and cur.meta.replaces == pid
end

------------------------------------------------------------------------------------------------
local regenerate = { name = "regenerate", default_client_id = default_client_id, check = check,
                     own_credential = own_credential,
                     retire_sends = function() return false end }
_M.strategies.regenerate = regenerate

regenerate.describe = {
  create = function(ctx)
    return ("regenerate the secret of client %s — the old secret stops working at once "
      .. "(Genesys regenerate has no overlap)"):format(ctx:client_id())
  end,
  retire = function() return "nothing to call: the old secret already died when the new one was minted" end,
}

function regenerate.create(ctx)
  local id = ctx:client_id()
  local ok, err = ctx:mint_intent("post_oauth_client_secret")
  if not ok then return nil, err end
  local c
  c, err = ctx.provider:post_oauth_client_secret(id)
  if not c then return nil, err end
  ctx:crash("mint", "after")
  if ctx.own then
    -- the provider's own secret has just been replaced: act with the new one from now on
    ctx.provider:set_credentials(id, c.secret)
  end
  return { client_id = id, secret = c.secret, meta = { name = c.name },
           note = "the old secret of client " .. id .. " stopped working at once (Genesys regenerate: no overlap)" }
end

--- Why regenerating client id, the one the provider object authenticates with, is refused (also
-- by rotor rotate's check of a config file).
function _M.own_regenerate_refusal(id)
  return ("strategy \"regenerate\" would replace the secret of client %s, the client this provider object "
    .. "authenticates with: if the answer were lost on the way, the old secret would be dead and the new one "
    .. "unknown, and nothing could recover. Use strategy = \"new_client\" (a successor client with the same "
    .. "roles, verified before the old one is disabled), or rotate it with another admin client"):format(tostring(id))
end

function regenerate.refuse(ctx)
  if not ctx.own then return nil end
  return _M.own_regenerate_refusal(ctx:client_id())
end

function regenerate.recover_note(ctx)
  return "the earlier regenerate request had an unknown outcome; regenerating again (whatever it minted is "
    .. "replaced) for client " .. ctx:client_id()
end

function regenerate.recover()
  return false -- whatever the lost request minted is replaced by the next regenerate
end

function regenerate.next_run(ctx)
  return ("The secret of client %s may or may not have been regenerated; the old one may already be dead. "
    .. "The next run regenerates it again with the admin credential and stores the result."):format(ctx:client_id())
end

function regenerate.retire(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  if prev then
    ctx:retire_previous { expires = prev.expires or (cur and cur.created), dead = true, meta = { dead = true } }
  end
  return true, "the old secret stopped working when the new one was minted (no overlap)"
end

function regenerate.summary(ctx)
  return "client " .. tostring(ctx:client_id()) .. " regenerated; the old secret died at once"
end

------------------------------------------------------------------------------------------------
local new_client = { name = "new_client", default_client_id = default_client_id, check = check,
                     own_credential = own_credential }
_M.strategies.new_client = new_client

local function tag(id)
  return "[rotor " .. id .. "]"
end

local function base_name(name)
  name = tostring(name or "client")
  return (name:gsub("%s*%[rotor [^%]]*%]%s*$", ""))
end

new_client.describe = {
  create = function(ctx)
    return ("create a second client like %s (same roles, divisions and grant type), named with the rotation id"):format(
      ctx:client_id())
  end,
  retire = function(ctx)
    local g = ctx.opts.grace or 0
    return ("disable the old client (PUT state=disabled), then delete it%s"):format(
      g > 0 and (" after a grace period of " .. g .. " s (on a later run)") or "")
  end,
}

function new_client.create(ctx)
  local old_id = ctx:client_id()
  local old, err = ctx.provider:get_oauth_client(old_id)
  if not old then return nil, err end
  local body = request_body(old)
  body.state = "active"
  body.dateToDelete = nil
  body.name = base_name(old.name) .. " " .. tag(ctx.record.rotation.id)
  local ok
  ok, err = ctx:mint_intent("post_oauth_clients", { name = body.name })
  if not ok then return nil, err end
  local c
  c, err = ctx.provider:post_oauth_clients(body)
  if not c then return nil, err end
  ctx:crash("mint", "after")
  return { client_id = c.id, secret = c.secret, meta = { name = c.name, replaces = old_id } }
end

function new_client.recover_note(_, mint)
  return "the earlier create request had an unknown outcome; deleting the client named "
    .. tostring(mint and mint.name) .. " if it exists and is not stored, then creating a new one"
end

function new_client.recover(ctx, mint)
  local list, err = ctx.provider:get_oauth_clients()
  if not list then return nil, err end
  local n
  n, err = ctx:delete_attributed {
    what = "client", items = list.entities or {}, name = mint.name,
    name_of = function(e) return e.name end, id_of = function(e) return e.id end,
    -- this slot's lineage only (its client's name, rotor's tag): another slot's or store's
    -- clients in a shared account are theirs, and no warning of ours should invite deleting them
    looks_like = function(name)
      return name:find("[rotor ", 1, true) ~= nil and base_name(name) == base_name(mint.name)
    end,
    delete = function(id) return ctx.provider:delete_oauth_client(id) end,
  }
  if not n then return nil, err end
  return false -- nothing to take over: create a new client
end

function new_client.next_run(ctx)
  return ("A new client %s may or may not have been created. The next run deletes it (found by that name) "
    .. "and creates a new one."):format(tag(ctx.record.rotation.id))
end

-- delete the clients whose grace period has passed
function new_client.cleanup(ctx)
  local due, derr = ctx:due_deletions(timefmt.now())
  if not due then return nil, derr end
  for _, r in ipairs(due) do
    local ok, err = ctx.provider:delete_oauth_client(r.client_id)
    if ok or is_gone(err) then
      ctx:deletion_done(r)
      local jok, jerr = ctx:journal("retire", "deleted", "deleted old client " .. tostring(r.client_id)
        .. " after its grace period")
      if not jok then return nil, jerr end
    end
  end
  return true
end

function new_client.retire(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  if not prev or not prev.client_id or (prev.meta and prev.meta.deleted) then
    return true, "no old client to retire"
  end
  local old_id = prev.client_id
  if old_id == (cur and cur.client_id) then return true, "the old client is the current one" end
  if not (prev.meta and prev.meta.disabled) then
    local old, err = ctx.provider:get_oauth_client(old_id)
    if not old then
      if not is_gone(err) then return nil, err end
    else
      local body = request_body(old)
      body.state = "disabled"
      local ok, perr = ctx.provider:put_oauth_client(old_id, body)
      if not ok and not is_gone(perr) then return nil, perr end
    end
    ctx:retire_previous { dead = true, meta = { disabled = timefmt.iso() } }
    local ok, jerr = ctx:journal("retire", "disabled", "old client " .. old_id .. " disabled")
    if not ok then return nil, jerr end
  end
  local grace = ctx.opts.grace or 0
  if grace > 0 then
    local after = timefmt.iso(timefmt.now() + grace)
    ctx:schedule_deletion(old_id, after)
    ctx:retire_previous { meta = { delete_after = after } }
    return true, "old client " .. old_id .. " disabled; it is deleted after " .. after .. " (by a later run)"
  end
  local ok, derr = ctx.provider:delete_oauth_client(old_id)
  if not ok and not is_gone(derr) then return nil, derr end
  ctx:retire_previous { meta = { deleted = timefmt.iso() } }
  return true, "old client " .. old_id .. " disabled and deleted"
end

function new_client.summary(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  return ("client %s replaced by %s"):format(tostring(prev and prev.client_id), tostring(cur and cur.client_id))
end

return _M
