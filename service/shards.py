"""Logical shards: which part of Redis holds a player, and the layout's check at start.

On a Redis Cluster, one primary's single thread would otherwise carry every click. The
players are split over a fixed number of logical shards (`REDIS_SHARDS`, 16 by default on
a cluster, 1 on a single Redis or Sentinel). Each shard's keys carry the hash tag
`{s<N>}`, so everything one click touches (the player's count, the shard's board, its
share of the global count and of the analytics) sits in one hash slot: a click stays
one script call and one round trip. Shards are many more than primaries and independent
of them: the cluster grows by moving slots (`redis-cli --cluster reshard`), never by
renaming keys. The counters everyone shares are kept per shard and summed by whoever
reads them (service/counter.py).

A player's shard is a hash of the UTS #39 skeleton of their name, not of the name, so
names that look alike land on one shard and the join script can refuse the second one
atomically, as on a single Redis. The mapping therefore depends on ICU's confusable data:
the layout key records the shard count and the skeleton version, and a process started
with another of either refuses to start (see `check_layout`); restoring the SQL snapshot
into an empty Redis lays the players out again.

The hash is CRC-32 (zlib) of the skeleton's UTF-8, modulo the shard count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.asyncio import Redis

from service.keys import Keys
from service.names import SKELETON_VERSION, skeleton

DEFAULT_CLUSTER_SHARDS = 16
MAX_SHARDS = 1024


@lru_cache(maxsize=65536)
def shard_of(canon: str, count: int) -> int:
    """The shard (0 .. count-1) of the player with this canonical name."""
    if count == 1:
        return 0
    return zlib.crc32(skeleton(canon).encode("utf-8")) % count


class LayoutMismatch(RuntimeError):
    """Redis holds data laid out with another shard count or skeleton version."""


@dataclass(frozen=True)
class Shards:
    """The key layout of one deployment: its shards' keys and the hub's.

    `count` 1 is a single Redis (plain key names, as before sharding); above 1 every
    shard's keys and the hub's carry their own hash tag.
    """

    prefix: str
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the shard count must be 1..{MAX_SHARDS}, not {self.count}")
        if "{" in self.prefix or "}" in self.prefix:
            # A brace in the prefix would become the hash tag instead of ours.
            raise ValueError("the key prefix must not contain { or }")

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def hub(self) -> Keys:
        """The keys that belong to the deployment as a whole (clock, presence, lease...)."""
        return self.shard(0).hub if self.sharded else Keys(self.prefix)

    def shard(self, index: int) -> Keys:
        """The keys of shard `index`."""
        if not self.sharded:
            return Keys(self.prefix)
        return Keys(self.prefix, f"{{s{index}}}:", "{hub}:")

    def all(self) -> list[Keys]:
        """Every shard's keys, in shard order."""
        return [self.shard(i) for i in range(self.count)]

    @property
    def epochs(self) -> list[str]:
        """The keys that say Redis holds the whole truth: every shard's epoch, and on
        several shards the hub's (on one, the hub's is the shard's)."""
        keys = [k.epoch for k in self.all()]
        return [*keys, self.hub.epoch] if self.sharded else keys

    def of(self, canon: str) -> int:
        """The shard of this player (by canonical name)."""
        return shard_of(canon, self.count)

    def keys_of(self, canon: str) -> Keys:
        """The keys of this player's shard."""
        return self.shard(self.of(canon))

    @property
    def layout(self) -> str:
        """What the layout key records: the shard count and the skeleton version."""
        return f"{self.count}:{SKELETON_VERSION if self.sharded else ''}"

    async def check_layout(self, redis: Redis) -> None:
        """Record this layout in an empty Redis, or raise LayoutMismatch if it holds another.

        A single Redis records nothing and checks only that no sharded layout is there.
        """
        key = self.hub.shard_count
        if self.sharded and await redis.exists(Keys(self.prefix).epoch):
            # Data of an unsharded deployment from before the layout key: not ours.
            await redis.set(key, Shards(self.prefix).layout, nx=True)
        if self.sharded:
            await redis.set(key, self.layout, nx=True)
        stored = await redis.get(key)
        found = stored.decode() if isinstance(stored, bytes) else stored
        if found is None and not self.sharded:
            return
        if found != self.layout:
            count = (found or "1:").split(":", 1)[0]
            raise LayoutMismatch(
                f"Redis holds players laid out over {count} shard(s)"
                f" ({found or 'unsharded'}), this process expects {self.layout};"
                " set REDIS_SHARDS to match, or restore the SQL snapshot into an empty Redis"
            )
