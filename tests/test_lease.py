"""The snapshot lease: one holder at a time, fenced, taken over when the holder dies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.keys import Keys
from service.shards import Shards
from tests import worker_support
from worker.lease import Lease

# On one shard and on several: the lease lives in the hub's keys (tests/worker_support.py).
shards = worker_support.shards


@pytest.fixture
def keys(shards: Shards) -> Keys:
    return shards.hub


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
    assert a.term == 1, "a renewal is the same term: the worker's SQL fence stays"
    assert not await b.keep()
    await a.release()
    assert await b.keep()
    assert b.fence is not None and fence is not None and b.fence > fence
    assert await a.keep() is False and a.term == 1
    await b.release()
    assert await a.keep() and a.term == 2, "a new acquisition is a new term"


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
