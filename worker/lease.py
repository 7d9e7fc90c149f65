"""The snapshot leader's lease in Redis, with a fence number for the SQL store."""

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
        self._valid_until = 0.0
        self._acquire = load_script(redis, "lease_acquire")
        self._renew = load_script(redis, "lease_renew")
        self._release = load_script(redis, "lease_release")
        self._advance = redis.register_script(
            "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[1], ARGV[1]) end"
        )

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
                log.info("took the snapshot lease", extra={"fence": fence})
        if self.fence is not None:
            # Count validity from before the call, minus a margin for clock drift.
            self._valid_until = started + self.ttl_ms / 1000 * 0.8
        return self.fence is not None

    def lost(self) -> None:
        """Forget the lease (the store told us a newer leader has written)."""
        self.fence = None

    async def advance_past(self, fence: int) -> None:
        """Make the next acquisition's fence exceed `fence`, and give up ours if older.

        The counter lives in Redis; after a data loss it starts again from 1 while the
        SQL store remembers the last writer's fence, which would refuse every snapshot.
        """
        await self._advance(keys=[self.keys.fence], args=[fence])
        if self.fence is not None and self.fence <= fence:
            log.warning(
                "our fence %s is not newer than %s; taking the lease again", self.fence, fence
            )
            await self.release()

    async def release(self) -> None:
        if self.fence is not None:
            await self._release(keys=[self.keys.lease], args=[self._value])
            log.info("released the snapshot lease", extra={"fence": self.fence})
            self.fence = None
