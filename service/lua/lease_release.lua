-- Give the lease up at shutdown so a standby takes over at once.
--
-- KEYS: lease
-- ARGV: "worker_id:fence"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
