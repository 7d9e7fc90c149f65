"""The snapshot leader's lease in Redis. Who may write SQL is decided by the fence
the leader then claims from the SQL store (Store.claim_fence), not by this lease:
Redis's counter can go back with a data loss or a lagging replica, SQL's cannot."""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from service.counter import load_script
from service.keys import Keys

log = logging.getLogger(__name__)


class Lease:
    """Held by at most one worker at a time; expires if its holder stops renewing."""

    def __init__(self, redis: Redis, keys: Keys, worker_id: str, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.ttl_ms = int(ttl_s * 1000)
        self.fence: int | None = None
        # Incremented on every acquisition: the worker claims a SQL fence per term.
        self.term = 0
        self._valid_until = 0.0
        self._acquire = load_script(redis, "lease_acquire")
        self._renew = load_script(redis, "lease_renew")
        self._release = load_script(redis, "lease_release")

    @property
    def held(self) -> bool:
        """We hold it, as far as we know; the fence protects us when we are wrong."""
        return self.fence is not None and time.monotonic() < self._valid_until

    @property
    def _value(self) -> str:
        return f"{self.worker_id}:{self.fence}"

    async def keep(self) -> bool:
        """Renew the lease if we hold it, else try to take it. True while we lead."""
        started = time.monotonic()
        if self.fence is not None:
            renewed = await self._renew(keys=[self.keys.lease], args=[self._value, self.ttl_ms])
            if not renewed:
                log.warning("lost the snapshot lease (fence %s)", self.fence)
                self.fence = None
        if self.fence is None:
            fence = int(
                await self._acquire(
                    keys=[self.keys.lease, self.keys.fence], args=[self.worker_id, self.ttl_ms]
                )
            )
            if fence:
                self.fence = fence
                self.term += 1
                log.info("took the snapshot lease", extra={"fence": fence})
        if self.fence is not None:
            # Count validity from before the call, minus a margin for clock drift.
            self._valid_until = started + self.ttl_ms / 1000 * 0.8
        return self.fence is not None

    def lost(self) -> None:
        """Forget the lease (the store told us a newer leader has written)."""
        self.fence = None

    async def release(self) -> None:
        if self.fence is not None:
            await self._release(keys=[self.keys.lease], args=[self._value])
            log.info("released the snapshot lease", extra={"fence": self.fence})
            self.fence = None
