"""Recovery after Redis loses its data: once, additive, and tokens survive."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.breakdown import Profile
from service.counter import Counter
from service.errors import ApiError
from service.keys import Keys
from service.store import Store
from tests.support import make_player
from worker.restore import Restorer
from worker.snapshot import Snapshotter


@pytest.fixture
def store(tmp_path: Path) -> Store:
    result = Store(f"sqlite:///{tmp_path / 'restore.db'}")
    result.migrate()
    return result


async def lose_everything(redis: Any, keys: Keys) -> None:
    """What a Redis restart without persistence does to this deployment's keys."""
    found = [k async for k in redis.scan_iter(match=keys.prefix + "*")]
    if found:
        await redis.delete(*found)


async def invariant(counter: Counter) -> tuple[int, int]:
    total, entries = await counter.leaderboard(0, 200)
    state = await counter.state()
    assert state.global_count == sum(e.count for e in entries), "global != sum(users)"
    return state.global_count, total


async def test_restore_adds_the_snapshot_to_clicks_made_since(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await counter.click(ann, 10, 1000)
    await counter.click(bob, 4, 1000)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)

    # Before the restore: Ann's signed token still plays (provisionally); joins wait.
    after = await counter.click(ann, 3, 1000)
    assert after.user == 3
    with pytest.raises(ApiError) as refused:
        await counter.join("Cat", "cat", "127.0.0.1", 10_000)
    assert refused.value.code == "restoring"

    restored = await Restorer(redis, keys, store).run(lambda: True)
    assert restored == 2
    assert (await counter.users(["ann", "bob"]))[0].count == 13
    assert await invariant(counter) == (17, 2)
    assert (await counter.click(bob, 1, 1000)).user == 5, "Bob's old token works after restore"
    state = await counter.state()
    assert state.restored and state.clicks_total == 18


async def test_restore_happens_once_even_when_run_concurrently(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    players = [await make_player(counter, f"U{i:04}") for i in range(120)]
    for i, p in enumerate(players):
        await counter.click(p, i % 7 + 1, 1000)
    _, before_users = await invariant(counter)
    before_global = (await counter.state()).global_count
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)

    restorers = [Restorer(redis, keys, store, batch_users=25) for _ in range(3)]
    await asyncio.gather(*(r.run(lambda: True) for r in restorers))
    assert await restorers[0].run(lambda: True) is None, "a second restore must do nothing"
    assert await invariant(counter) == (before_global, before_users)


async def test_a_restore_interrupted_midway_resumes_without_double_counting(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    players = [await make_player(counter, f"R{i:03}") for i in range(60)]
    for p in players:
        await counter.click(p, 2, 1000)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    calls = {"n": 0}

    def leader_for_two_batches() -> bool:
        calls["n"] += 1
        return calls["n"] <= 2

    partial = await Restorer(redis, keys, store, batch_users=10).run(leader_for_two_batches)
    assert partial == 20
    assert not (await counter.state()).restored
    rest = await Restorer(redis, keys, store, batch_users=10).run(lambda: True)
    assert rest == 40
    assert await invariant(counter) == (120, 60)


async def test_a_deleted_users_token_is_not_resurrected(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    gone = await make_player(counter, "Gone")
    stay = await make_player(counter, "Stay")
    await counter.click(gone, 5, 1000)
    await counter.click(stay, 1, 1000)
    await counter.delete("gone")
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    # During the gap the dead token's signature is still valid, so the click is taken...
    await counter.click(gone, 2, 1000)
    await Restorer(redis, keys, store).run(lambda: True)
    # ...and the restore finds its tombstone and removes it again.
    assert await counter.users(["gone"]) == []
    assert await invariant(counter) == (1, 1)
    with pytest.raises(ApiError) as refused:
        await counter.click(gone, 1, 1000)
    assert refused.value.code == "invalid_token"


async def test_a_player_who_joined_after_the_snapshot_keeps_playing(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    old = await make_player(counter, "Old")
    await counter.click(old, 1, 1000)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    late = await make_player(counter, "Late")
    await counter.click(late, 9, 1000)  # lost with Redis: after the last snapshot
    await lose_everything(redis, keys)
    await counter.click(late, 2, 1000)
    await Restorer(redis, keys, store).run(lambda: True)
    assert [e.count for e in await counter.users(["late", "old"])] == [2, 1]
    assert await invariant(counter) == (3, 2)


async def test_an_empty_store_means_a_fresh_deployment(
    redis: Any, keys: Keys, store: Store
) -> None:
    restorer = Restorer(redis, keys, store)
    assert await restorer.needed()
    assert await restorer.run(lambda: True) is None
    assert not await restorer.needed()


async def test_stats_breakdowns_and_countries_survive_the_loss(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    player = await make_player(counter, "Sta")
    await counter.click(player, 4, 1000, Profile(device="tablet", country="BR"))
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    hour_before = (await counter.stats("week"))["points"]
    await lose_everything(redis, keys)
    await counter.click(player, 1, 1000, Profile(device="tablet", country="BR"))
    await Restorer(redis, keys, store).run(lambda: True)
    week = (await counter.stats("week"))["points"]
    assert sum(c for _, c in week) == sum(c for _, c in hour_before) + 1
    assert [(e.username, e.count) for e in await counter.breakdown("device", 7)] == [("tablet", 5)]
    assert await counter.countries(10) == [("BR", 5)]
