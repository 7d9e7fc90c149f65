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
from service.store import StaleFence, Store
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


async def assert_dead(counter: Counter, *tokens: Any) -> None:
    """Each token is refused as invalid, and its name is not on the board."""
    for token in tokens:
        with pytest.raises(ApiError) as refused:
            await counter.click(token, 1, 1000)
        assert refused.value.code == "invalid_token"
        assert await counter.users([token.canon]) == []


async def snapshotted_then_lost(
    counter: Counter, redis: Any, keys: Keys, store: Store, name: str, players: int, clicks: int
) -> list[Any]:
    """`players` players who clicked `clicks` each, snapshotted, then Redis loses it all."""
    made = [await make_player(counter, f"{name}{i:03}") for i in range(players)]
    for p in made:
        await counter.click(p, clicks, 1000)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    return made


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
    await snapshotted_then_lost(counter, redis, keys, store, "R", 60, 2)
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
    assert await invariant(counter) == (1, 1)
    await assert_dead(counter, gone)


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


async def climb(counter: Counter, player: Any, clicks: int) -> list[tuple[int, int]]:
    """Click `clicks` times one by one; the (global, personal) milestones announced."""
    announced = []
    for _ in range(clicks):
        result = await counter.click(player, 1, 10_000)
        if result.global_milestone or result.personal_milestone:
            announced.append((result.global_milestone, result.personal_milestone))
    return announced


async def test_a_name_deleted_twice_between_snapshots_keeps_both_tokens_dead(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    first = await make_player(counter, "Ann")
    await counter.click(first, 5, 1000)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await counter.delete("ann")
    second = await make_player(counter, "Ann")
    await counter.delete("ann")
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    assert store.user_sum() == (0, 0)
    await lose_everything(redis, keys)
    await counter.click(first, 2, 1000)  # provisionally, before the restore
    await Restorer(redis, keys, store).run(lambda: True)
    assert await invariant(counter) == (0, 0)
    await assert_dead(counter, first, second)


class ClickingWhileChecked(Store):
    """A store whose tombstone check lets `during` run on the event loop meanwhile: a
    dead token clicks while the restore asks SQL about the provisional names."""

    during: list[Any]

    def tombstones_of(self, canons: Any) -> set[tuple[str, str]]:
        while self.during:
            loop, make = self.during.pop()
            asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)
        return super().tombstones_of(canons)


async def test_a_dead_token_clicking_during_the_last_step_stays_dead(
    counter: Counter, redis: Any, keys: Keys, tmp_path: Path
) -> None:
    store = ClickingWhileChecked(f"sqlite:///{tmp_path / 'race.db'}")
    store.migrate()
    gone, stay = await make_player(counter, "Gone"), await make_player(counter, "Stay")
    await counter.click(gone, 5, 1000)
    await counter.click(stay, 1, 1000)
    await counter.delete("gone")
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    await counter.click(stay, 1, 1000)  # a live token: provisional, checked, kept
    store.during = [(asyncio.get_running_loop(), lambda: counter.click(gone, 2, 1000))]
    await Restorer(redis, keys, store).run(lambda: True)
    assert store.during == [], "the dead token clicked during the check"
    assert await invariant(counter) == (2, 1)
    assert not await redis.exists(keys.provisional)
    await assert_dead(counter, gone)


async def test_clicks_during_a_restore_are_all_kept(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    players = await snapshotted_then_lost(counter, redis, keys, store, "D", 30, 3)
    clicked = 0

    def clicking_between_batches() -> bool:
        # Runs between batches: players restored, not yet restored, and newcomers click.
        nonlocal clicked
        clicking.append(asyncio.ensure_future(counter.click(players[len(clicking)], 1, 1000)))
        clicked += 1
        return True

    clicking: list[asyncio.Future[Any]] = []
    await Restorer(redis, keys, store, batch_users=4).run(clicking_between_batches)
    await asyncio.gather(*clicking)
    assert clicked >= 8
    counts = {e.username: e.count for e in await counter.users([p.canon for p in players])}
    assert counts == {p.display: 3 + (i < clicked) for i, p in enumerate(players)}
    assert await invariant(counter) == (90 + clicked, 30)
    assert (await counter.state()).restored


async def test_a_commit_read_before_the_loss_cannot_land_during_the_restore(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    players = [await make_player(counter, f"E{i:02}") for i in range(12)]
    for p in players:
        await counter.click(p, 2, 1000)
    old_leader = Snapshotter(redis, keys, store)
    old_fence = store.claim_fence("old")
    await old_leader.snapshot(fence=old_fence)
    await counter.click(players[0], 5, 1000)
    stale_cut = await old_leader.read_cut()  # read before the loss, committed during it
    assert stale_cut is not None
    await lose_everything(redis, keys)
    new_fence = store.claim_fence("new")  # the restoring leader's claim
    refused: list[BaseException] = []

    def stale_commit_lands() -> bool:
        if not refused:
            try:
                store.write_snapshot(stale_cut, old_fence)
            except StaleFence as exc:
                refused.append(exc)
        return True

    await Restorer(redis, keys, store, batch_users=5).run(stale_commit_lands)
    assert refused and isinstance(refused[0], StaleFence)
    assert store.user_sum() == (12, 24), "the stale cut wrote nothing"
    assert await invariant(counter) == (24, 12)
    report = await Snapshotter(redis, keys, store).snapshot(fence=new_fence)
    assert report is not None and store.user_sum() == (12, 24)


async def test_milestone_memory_survives_a_loss_so_nothing_is_announced_twice(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", 995)  # global 995
    # 100 was reached by the edit and is announced by the next click; then 1,000.
    assert await climb(counter, ann, 10) == [(0, 100), (1000, 1000)]
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    await Restorer(redis, keys, store).run(lambda: True)
    assert (await counter.users(["ann"]))[0].count == 1005
    assert await climb(counter, ann, 5) == [], "1000 was announced before the snapshot"


async def test_a_milestone_reached_while_restoring_is_announced_once_after(
    counter: Counter, redis: Any, keys: Keys, store: Store
) -> None:
    bob = await make_player(counter, "Bob")
    await counter.set_count("bob", 95)
    await Snapshotter(redis, keys, store).snapshot(fence=1)
    await lose_everything(redis, keys)
    assert await climb(counter, bob, 10) == [], "a partial count announces nothing"
    await Restorer(redis, keys, store).run(lambda: True)
    assert (await counter.users(["bob"]))[0].count == 105
    assert await climb(counter, bob, 3) == [(0, 100)]
    await counter.set_count("bob", 50)
    assert await climb(counter, bob, 60) == [], "dropped and climbed again: quiet"
