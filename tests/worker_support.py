"""The worker's tests run on one shard and on several, on the machine's single Redis
(hash tags are harmless there): the `shards` fixture is parametrized over SHARD_COUNTS.

The players' side is the instance's own Counter on the same layout.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.counter import Counter
from service.shards import Shards

SHARD_COUNTS = (1, 4)


@pytest.fixture(params=SHARD_COUNTS, ids=[f"{n}shard" for n in SHARD_COUNTS])
def shards(request: pytest.FixtureRequest, prefix: str) -> Shards:
    """This test's key layout: one shard (plain key names) or several (tagged)."""
    return Shards(prefix, request.param)


@pytest.fixture
async def counter(redis: Any, shards: Shards) -> Counter:
    """The players' side on this layout, marked as a fresh deployment."""
    return await fresh(redis, shards)


async def fresh(redis: Any, shards: Shards) -> Counter:
    """The players' side on a layout of a test's own choosing, as a fresh deployment."""
    result = Counter(redis, shards)
    await result.mark_fresh()
    return result


async def lose_shard(redis: Any, shards: Shards, shard: int) -> None:
    """What a Redis Cluster primary restarting empty does to one shard: all its keys gone."""
    k = shards.shard(shard)
    found = [key async for key in redis.scan_iter(match=k.root + "*")]
    if found:
        await redis.delete(*found)


async def lose_everything(redis: Any, shards: Shards) -> None:
    """What a Redis restart without persistence does to this deployment's keys."""
    found = [k async for k in redis.scan_iter(match=shards.prefix + "*")]
    if found:
        await redis.delete(*found)
