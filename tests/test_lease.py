"""The snapshot lease: one holder at a time, fenced, taken over when the holder dies."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from service.keys import Keys
from service.store import Cut, Store
from worker.lease import Lease


async def test_only_one_worker_holds_the_lease(redis: Any, keys: Keys) -> None:
    a, b = Lease(redis, keys, "a", 2), Lease(redis, keys, "b", 2)
    results = await asyncio.gather(a.keep(), b.keep())
    assert sorted(results) == [False, True]
    assert a.held != b.held


async def test_renewal_keeps_it_and_release_hands_it_over(redis: Any, keys: Keys) -> None:
    a, b = Lease(redis, keys, "a", 2), Lease(redis, keys, "b", 2)
    assert await a.keep()
    fence = a.fence
    assert await a.keep() and a.fence == fence, "renewal must keep the same fence"
    assert not await b.keep()
    await a.release()
    assert await b.keep()
    assert b.fence is not None and fence is not None and b.fence > fence


async def test_an_expired_holder_loses_to_a_newer_fence(redis: Any, keys: Keys) -> None:
    a, b = Lease(redis, keys, "a", 0.3), Lease(redis, keys, "b", 5)
    assert await a.keep()
    old_fence = a.fence
    await asyncio.sleep(0.4)  # a is "paused" past its TTL
    assert not a.held, "a must not believe it still leads after its TTL"
    assert await b.keep()
    assert not await a.keep(), "a's renewal must fail: b holds it now"
    assert a.fence is None
    assert b.fence is not None and old_fence is not None and b.fence > old_fence


async def test_after_a_redis_loss_the_fence_moves_past_the_stored_one(
    redis: Any, keys: Keys, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fence.db'}")
    store.migrate()
    store.write_snapshot(Cut(global_count=0, clicks_total=0, server_ms=1), fence=5)
    lease = Lease(redis, keys, "w", 5)
    assert await lease.keep() and lease.fence == 1  # Redis forgot the counter
    stored = store.raise_fence(lease.fence)
    assert stored == 5, "the store remembers a newer writer"
    await lease.advance_past(stored)
    assert lease.fence is None, "an older fence gives the lease up"
    assert await lease.keep() and lease.fence == 6
    assert store.raise_fence(6) == 6
    store.write_snapshot(Cut(global_count=0, clicks_total=0, server_ms=2), fence=6)
