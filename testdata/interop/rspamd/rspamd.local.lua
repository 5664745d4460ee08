-- filter-milter interop test rule: a message with the header
-- "X-Interop-Test: add-header" scores 10, between add_header (6) and
-- reject (15), so rspamd's action is "add header".
rspamd_config.FM_INTEROP_ADD_HEADER = {
  callback = function(task)
    local h = task:get_header('X-Interop-Test')
    return h ~= nil and h == 'add-header'
  end,
  score = 10.0,
  description = 'filter-milter interop test: force the add header action',
  group = 'local',
}
