-- After a snapshot's commit: empty the in-flight sets, but only if they still
-- belong to that snapshot's cut. A leader paused after its commit must not wipe
-- the in-flight changes of a successor's cut that has not committed yet.
--
-- KEYS: inflight_owner dirty_inflight tombstones_inflight [idempotency_inflight]
-- ARGV: generation of the committed cut
-- Returns 1 emptied, 0 a later cut owns them now.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
