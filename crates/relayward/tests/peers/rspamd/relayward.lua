-- relayward test rules: marker strings anywhere in the message give a
-- deterministic action. The built-in GTUBE string
-- (XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X)
-- in a text part also gives "reject" (symbol GTUBE, rspamd core).
local function has(task, marker)
  return tostring(task:get_content()):find(marker, 1, true) ~= nil
end

-- Score based: reject >= 15, add header >= 6, greylist >= 4 (actions in rspamd.conf).
local scored = {
  { 'RELAYWARD_TEST_REJECT',     'RELAYWARD-TEST-REJECT',     20.0 },
  { 'RELAYWARD_TEST_ADD_HEADER', 'RELAYWARD-TEST-ADD-HEADER', 7.0 },
  { 'RELAYWARD_TEST_GREYLIST',   'RELAYWARD-TEST-GREYLIST',   5.0 },
}
for _, s in ipairs(scored) do
  local name, marker, score = s[1], s[2], s[3]
  rspamd_config:register_symbol({
    name = name,
    score = score,
    group = 'relayward',
    callback = function(task)
      if has(task, marker) then
        task:insert_result(name, 1.0)
      end
    end,
  })
end

-- "soft reject" is never score based: force it from a prefilter.
rspamd_config:register_symbol({
  name = 'RELAYWARD_TEST_SOFT_REJECT',
  type = 'prefilter',
  priority = 10,
  score = 0.0,
  group = 'relayward',
  callback = function(task)
    if has(task, 'RELAYWARD-TEST-SOFT-REJECT') then
      task:insert_result('RELAYWARD_TEST_SOFT_REJECT', 1.0)
      task:set_pre_result('soft reject', 'relayward test: try again later', 'relayward')
    end
  end,
})
