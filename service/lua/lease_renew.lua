-- Extend the lease only if we still hold it (with the same fence).
--
-- KEYS: lease
-- ARGV: "worker_id:fence" ttl_ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
