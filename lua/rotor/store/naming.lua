-- The file name of a slot in a file store — the one rule, shared by rotor.store.file and by
-- rotor.ngx (which reads a slot's file in nginx without loading the C core). Pure Lua.
--   [A-Za-z0-9_.-] kept (a leading "." escaped), every other byte %XX:
--   "genesys/reporting" -> "genesys%2Freporting". Reversible, never "." or "..", never a path.
local _M = {}

function _M.encode(slot)
  local s = slot:gsub("[^%w_%.%-]", function(c) return ("%%%02X"):format(c:byte()) end)
  if s:sub(1, 1) == "." then s = "%2E" .. s:sub(2) end
  return s
end

function _M.decode(name)
  return (name:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

return _M
