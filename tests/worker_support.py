"""The worker's tests run on one shard and on several, on the machine's single Redis
(hash tags are harmless there): the `shards` fixture is parametrized over SHARD_COUNTS.

`Players` stands in for the instance side on several shards until service/counter.py
takes a Shards itself: one Counter per shard, each player's calls sent to their shard,
and the reads the tests make summed over shards. Ranks it returns are per shard (the
tests compare counts). With one shard it is one Counter, as before.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from service.breakdown import Profile
from service.counter import ANONYMOUS, ClickResult, Counter, Entry, State
from service.shards import Shards
from service.tokens import Player

SHARD_COUNTS = (1, 4)


@pytest.fixture(params=SHARD_COUNTS, ids=[f"{n}shard" for n in SHARD_COUNTS])
def shards(request: pytest.FixtureRequest, prefix: str) -> Shards:
    """This test's key layout: one shard (plain key names) or several (tagged)."""
    return Shards(prefix, request.param)


@pytest.fixture
async def counter(redis: Any, shards: Shards) -> Players:
    """The players' side on this layout, marked as a fresh deployment."""
    return await fresh(redis, shards)


async def fresh(redis: Any, shards: Shards) -> Players:
    """The players' side on a layout of a test's own choosing, as a fresh deployment."""
    result = Players(redis, shards)
    await result.mark_fresh()
    return result


class Players:
    """What the worker's tests ask of the instance side, on every shard of a layout."""

    def __init__(self, redis: Any, shards: Shards) -> None:
        self.redis = redis
        self.shards = shards
        self.parts = [Counter(redis, k) for k in shards.all()]

    def of(self, canon: str) -> Counter:
        return self.parts[self.shards.of(canon)]

    async def join(self, display: str, canon: str, address: str, limit: int) -> str:
        return await self.of(canon).join(display, canon, address, limit)

    async def click(
        self, player: Player, n: int, limit_cps: int, profile: Profile = ANONYMOUS
    ) -> ClickResult:
        return await self.of(player.canon).click(player, n, limit_cps, profile)

    async def delete(self, canon: str, nonce: str | None = None) -> Any:
        return await self.of(canon).delete(canon, nonce)

    async def set_count(self, canon: str, count: int) -> Any:
        return await self.of(canon).set_count(canon, count)

    async def nonce_is_live(self, player: Player) -> bool:
        return await self.of(player.canon).nonce_is_live(player)

    async def users(self, canons: list[str]) -> list[Entry]:
        return [e for canon in canons for e in await self.of(canon).users([canon])]

    async def state(self) -> State:
        parts = await asyncio.gather(*(part.state() for part in self.parts))
        hub = not self.shards.sharded or bool(await self.redis.exists(self.shards.hub.epoch))
        return State(
            global_count=sum(s.global_count for s in parts),
            users=sum(s.users for s in parts),
            clicks_total=sum(s.clicks_total for s in parts),
            online=parts[0].online,
            restored=all(s.restored for s in parts) and hub,
            server_ms=parts[0].server_ms,
        )

    async def leaderboard(self, offset: int, limit: int) -> tuple[int, list[Entry]]:
        parts = [await part.leaderboard(0, offset + limit) for part in self.parts]
        merged = sorted((e for _, page in parts for e in page), key=lambda e: -e.count)
        return sum(total for total, _ in parts), merged[offset : offset + limit]

    async def stats(self, window: str) -> dict[str, Any]:
        parts = [await part.stats(window) for part in self.parts]
        points = [
            [t, sum(p["points"][i][1] for p in parts)]
            for i, (t, _) in enumerate(parts[0]["points"])
        ]
        return {**parts[0], "points": points}

    async def breakdown(self, dimension: str, days: int) -> list[Entry]:
        totals: dict[str, int] = {}
        for part in self.parts:
            for entry in await part.breakdown(dimension, days):
                totals[entry.username] = totals.get(entry.username, 0) + entry.count
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return [Entry(i + 1, value, clicks) for i, (value, clicks) in enumerate(ranked)]

    async def countries(self, limit: int) -> list[tuple[str, int]]:
        totals: dict[str, int] = {}
        for part in self.parts:
            for code, clicks in await part.countries(1000):
                totals[code] = totals.get(code, 0) + clicks
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]

    async def mark_fresh(self) -> None:
        for part in self.parts:
            await part.mark_fresh()
        if self.shards.sharded:
            await self.redis.set(self.shards.hub.epoch, secrets.token_hex(8), nx=True)


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
