#!lua flags=no-writes
--[[
  The newest entry of each run history list, for the status page
  (ops/status_page.py).  A missing list, or a key of another type, gives ''
  (one odd key must not cost the whole page).

  Input:
    KEYS[i] the run history list of a schedule

  Output:
    one JSON text: the entries in KEYS order ('[]' for no KEYS)
]]
local heads = {}
for i = 1, #KEYS do
  local head = redis.pcall('LINDEX', KEYS[i], 0)
  heads[i] = type(head) == 'string' and head or ''
end
return #heads > 0 and cjson.encode(heads) or '[]'
