-- Spreetail rotation: a new client credential pair (a new clientId), named
-- "rotor:<slot>:<rotation id>", verified, deployed, promoted; the old pair is then deleted
-- (revocation is immediate). The provider object's own credential is the one rotated.
-- Ambiguous mint: the next run lists the credentials, deletes the pair whose name was recorded
-- before the mint (slot and rotation id: nothing else can carry it) unless a stored version holds
-- it, and mints anew. Pairs it cannot attribute (another slot's, another store's) are reported only.
-- Options: target.expires (ISO-8601) or target.expires_days (a number) for the new pair.
local errors = require "rotor.errors"
local json = require "rotor.json"
local timefmt = require "rotor.timefmt"

local _M = { default = "new_pair", strategies = {} }

local s = { name = "new_pair" }
_M.strategies.new_pair = s

local function prefix(slot)
  return "rotor:" .. slot .. ":"
end

function s.check(ctx)
  local t = ctx.target
  if t.expires ~= nil and type(t.expires) ~= "string" then
    error("rotate: target.expires must be an ISO-8601 string", 0)
  end
  if t.expires_days ~= nil and (type(t.expires_days) ~= "number" or t.expires_days <= 0) then
    error("rotate: target.expires_days must be a positive number", 0)
  end
end

s.describe = {
  create = function(ctx)
    return ("create a new credential pair named %s%s"):format(prefix(ctx.slot), "<rotation id>")
  end,
  retire = function(ctx)
    local cur = ctx.record.versions.current
    local id = cur and cur.client_id or ctx.provider.client_id
    return "delete the old pair " .. tostring(id) .. " (immediate revocation)"
  end,
}

local function expires(ctx)
  local t = ctx.target
  if t.expires then return t.expires end
  if t.expires_days then
    return os.date("!%Y-%m-%dT%H:%M:%S.000Z", math.floor(timefmt.now() + t.expires_days * 86400))
  end
  return nil
end

function s.create(ctx)
  local name = prefix(ctx.slot) .. ctx.record.rotation.id
  local ok, err = ctx:mint_intent("create_client_credentials", { name = name })
  if not ok then return nil, err end
  local c
  c, err = ctx.provider:create_client_credentials { name = name, expires = expires(ctx) }
  if not c then return nil, err end
  ctx:crash("mint", "after")
  local exp = c.expires
  if exp == json.null then exp = nil end
  return { client_id = c.clientId, secret = c.secret, expires = exp,
           meta = { credential_id = c.credentialId, name = c.name } }
end

function s.recover_note(ctx, mint)
  return "the earlier create request had an unknown outcome; deleting the pair named "
    .. tostring(mint and mint.name or prefix(ctx.slot) .. ctx.record.rotation.id)
    .. " if it exists and is not stored, then creating a new pair"
end

function s.recover(ctx, mint)
  local list, err = ctx.provider:list_client_credentials()
  if not list then return nil, err end
  local n
  n, err = ctx:delete_attributed {
    what = "pair", items = list, name = mint.name or (prefix(ctx.slot) .. ctx.record.rotation.id),
    name_of = function(c) return c.name end, id_of = function(c) return c.clientId end,
    -- this slot's pairs only: another slot's or store's pairs in a shared account are theirs
    looks_like = function(name) return name:sub(1, #prefix(ctx.slot)) == prefix(ctx.slot) end,
    delete = function(id) return ctx.provider:delete_client_credentials(id) end,
  }
  if not n then return nil, err end
  return false -- nothing to take over: create a new pair
end

function s.next_run(ctx)
  return ("A pair named %s%s may or may not have been created. The next run deletes it (found by that name "
    .. "in the list of credentials) and creates a new pair."):format(prefix(ctx.slot), ctx.record.rotation.id)
end

function s.retire(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  if not prev or not prev.client_id or (prev.meta and prev.meta.deleted) then return true, "no old pair to delete" end
  if cur and prev.client_id == cur.client_id then return true, "the old pair is the current one" end
  local ok, err = ctx.provider:delete_client_credentials(prev.client_id)
  if not ok and not (errors.is(err) and err.status == 404) then return nil, err end
  ctx:retire_previous { dead = true, meta = { deleted = timefmt.iso() } } -- revoked
  return true, "old pair " .. prev.client_id .. " deleted"
end

function s.summary(ctx)
  local prev, cur = ctx:version("previous"), ctx:version("current")
  return ("pair %s replaced by %s"):format(tostring(prev and prev.client_id), tostring(cur and cur.client_id))
end

return _M
