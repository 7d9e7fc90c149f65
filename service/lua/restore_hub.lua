-- The hub's part of a restore: the token secret and the memory of announced global
-- milestones (the larger of what is here and what SQL has, so none is announced
-- twice), then, on several shards, the hub's epoch: instances judge global
-- milestones only while it is there. On a single Redis the hub's epoch is the
-- shard's, which restore_finish.lua sets once the users are back.
--
-- KEYS: epoch milestone_global secret (the hub's: one hash slot)
-- ARGV: epoch_value milestone_global secret set_epoch(1|0)
-- Returns 1 done, 0 the hub's epoch was already there (another restorer did it).
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
return 1
