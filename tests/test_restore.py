"""Recovery after Redis loses its data: once, additive, and tokens survive."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from service.breakdown import Profile
from service.errors import ApiError
from service.shards import Shards
from service.store import StaleFence, Store
from tests import worker_support
from tests.support import make_player
from tests.worker_support import Counter, fresh, lose_everything, lose_shard
from worker.restore import Restorer
from worker.snapshot import Snapshotter

# Every test here runs on one shard and on several (tests/worker_support.py).
shards = worker_support.shards
counter = worker_support.counter


@pytest.fixture
def store(tmp_path: Path) -> Store:
    result = Store(f"sqlite:///{tmp_path / 'restore.db'}")
    result.migrate()
    return result


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
    counter: Counter, redis: Any, shards: Shards, store: Store, name: str, players: int, clicks: int
) -> list[Any]:
    """`players` players who clicked `clicks` each, snapshotted, then Redis loses it all."""
    made = [await make_player(counter, f"{name}{i:03}") for i in range(players)]
    for p in made:
        await counter.click(p, clicks, 1000)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)
    return made


async def test_restore_adds_the_snapshot_to_clicks_made_since(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await counter.click(ann, 10, 1000)
    await counter.click(bob, 4, 1000)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)

    # Before the restore: Ann's signed token still plays (provisionally); joins wait.
    after = await counter.click(ann, 3, 1000)
    assert after.user == 3
    with pytest.raises(ApiError) as refused:
        await counter.join("Cat", "cat", "127.0.0.1", 10_000)
    assert refused.value.code == "restoring"

    restored = await Restorer(redis, shards, store).run(lambda: True)
    assert restored == 2
    assert (await counter.users(["ann", "bob"]))[0].count == 13
    assert await invariant(counter) == (17, 2)
    assert (await counter.click(bob, 1, 1000)).user == 5, "Bob's old token works after restore"
    state = await counter.state()
    assert state.restored and state.clicks_total == 18


async def test_restore_happens_once_even_when_run_concurrently(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"U{i:04}") for i in range(120)]
    for i, p in enumerate(players):
        await counter.click(p, i % 7 + 1, 1000)
    _, before_users = await invariant(counter)
    before_global = (await counter.state()).global_count
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)

    restorers = [Restorer(redis, shards, store, batch_users=25) for _ in range(3)]
    await asyncio.gather(*(r.run(lambda: True) for r in restorers))
    assert await restorers[0].run(lambda: True) is None, "a second restore must do nothing"
    assert await invariant(counter) == (before_global, before_users)


async def test_a_restore_interrupted_midway_resumes_without_double_counting(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    await snapshotted_then_lost(counter, redis, shards, store, "R", 60, 2)
    calls = {"n": 0}

    def leader_for_two_batches() -> bool:
        calls["n"] += 1
        return calls["n"] <= 2

    partial = await Restorer(redis, shards, store, batch_users=10).run(leader_for_two_batches)
    assert partial == 20
    assert not (await counter.state()).restored
    rest = await Restorer(redis, shards, store, batch_users=10).run(lambda: True)
    assert rest == 40
    assert await invariant(counter) == (120, 60)


async def test_a_deleted_users_token_is_not_resurrected(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    gone = await make_player(counter, "Gone")
    stay = await make_player(counter, "Stay")
    await counter.click(gone, 5, 1000)
    await counter.click(stay, 1, 1000)
    await counter.delete("gone")
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)
    # During the gap the dead token's signature is still valid, so the click is taken...
    await counter.click(gone, 2, 1000)
    await Restorer(redis, shards, store).run(lambda: True)
    # ...and the restore finds its tombstone and removes it again.
    assert await invariant(counter) == (1, 1)
    await assert_dead(counter, gone)


async def test_a_player_who_joined_after_the_snapshot_keeps_playing(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    old = await make_player(counter, "Old")
    await counter.click(old, 1, 1000)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    late = await make_player(counter, "Late")
    await counter.click(late, 9, 1000)  # lost with Redis: after the last snapshot
    await lose_everything(redis, shards)
    await counter.click(late, 2, 1000)
    await Restorer(redis, shards, store).run(lambda: True)
    assert [e.count for e in await counter.users(["late", "old"])] == [2, 1]
    assert await invariant(counter) == (3, 2)


async def test_an_empty_store_means_a_fresh_deployment(
    redis: Any, shards: Shards, store: Store
) -> None:
    restorer = Restorer(redis, shards, store)
    assert await restorer.needed()
    assert await restorer.run(lambda: True) is None
    assert not await restorer.needed()


async def test_stats_breakdowns_and_countries_survive_the_loss(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    player = await make_player(counter, "Sta")
    await counter.click(player, 4, 1000, Profile(device="tablet", country="BR"))
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    hour_before = (await counter.stats("week"))["points"]
    await lose_everything(redis, shards)
    await counter.click(player, 1, 1000, Profile(device="tablet", country="BR"))
    await Restorer(redis, shards, store).run(lambda: True)
    week = (await counter.stats("week"))["points"]
    assert sum(c for _, c in week) == sum(c for _, c in hour_before) + 1
    assert [(e.username, e.count) for e in await counter.breakdown("device", 7)] == [("tablet", 5)]
    assert await counter.countries(10) == [("BR", 5)]


async def climb(counter: Counter, player: Any, clicks: int) -> list[tuple[int, int]]:
    """Click `clicks` times one by one; the (global, personal) milestones announced.

    On several shards the global ones are the ticker's: claimed after each click, as a
    tick after it would.
    """
    announced = []
    for _ in range(clicks):
        result = await counter.click(player, 1, 10_000)
        reached = result.global_milestone
        if counter.shards.sharded:
            reached = await counter.claim_global_milestone(await counter.state())
        if reached or result.personal_milestone:
            announced.append((reached, result.personal_milestone))
    return announced


async def test_a_name_deleted_twice_between_snapshots_keeps_both_tokens_dead(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    first = await make_player(counter, "Ann")
    await counter.click(first, 5, 1000)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await counter.delete("ann")
    second = await make_player(counter, "Ann")
    await counter.delete("ann")
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert store.user_sum() == (0, 0)
    await lose_everything(redis, shards)
    await counter.click(first, 2, 1000)  # provisionally, before the restore
    await Restorer(redis, shards, store).run(lambda: True)
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
    counter: Counter, redis: Any, shards: Shards, tmp_path: Path
) -> None:
    store = ClickingWhileChecked(f"sqlite:///{tmp_path / 'race.db'}")
    store.migrate()
    gone, stay = await make_player(counter, "Gone"), await make_player(counter, "Stay")
    await counter.click(gone, 5, 1000)
    await counter.click(stay, 1, 1000)
    await counter.delete("gone")
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)
    await counter.click(stay, 1, 1000)  # a live token: provisional, checked, kept

    async def dead_token_clicks() -> None:
        # On several shards, Gone's may have finished already: then it is refused at once.
        with contextlib.suppress(ApiError):
            await counter.click(gone, 2, 1000)

    store.during = [(asyncio.get_running_loop(), dead_token_clicks)]
    await Restorer(redis, shards, store).run(lambda: True)
    assert store.during == [], "the dead token clicked during the check"
    assert await invariant(counter) == (2, 1)
    assert not await redis.exists(*(k.provisional for k in shards.all()))
    await assert_dead(counter, gone)


async def test_clicks_during_a_restore_are_all_kept(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = await snapshotted_then_lost(counter, redis, shards, store, "D", 30, 3)
    clicked = 0

    def clicking_between_batches() -> bool:
        # Runs between batches: players restored, not yet restored, and newcomers click.
        nonlocal clicked
        clicking.append(asyncio.ensure_future(counter.click(players[len(clicking)], 1, 1000)))
        clicked += 1
        return True

    clicking: list[asyncio.Future[Any]] = []
    await Restorer(redis, shards, store, batch_users=4).run(clicking_between_batches)
    await asyncio.gather(*clicking)
    assert clicked >= 8
    counts = {e.username: e.count for e in await counter.users([p.canon for p in players])}
    assert counts == {p.display: 3 + (i < clicked) for i, p in enumerate(players)}
    assert await invariant(counter) == (90 + clicked, 30)
    assert (await counter.state()).restored


async def test_a_commit_read_before_the_loss_cannot_land_during_the_restore(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"E{i:02}") for i in range(12)]
    for p in players:
        await counter.click(p, 2, 1000)
    old_leader = Snapshotter(redis, shards, store)
    old_fence = store.claim_fence("old")
    await old_leader.snapshot(fence=old_fence)
    await counter.click(players[0], 5, 1000)
    stale_cut = await old_leader.read_cuts()  # read before the loss, committed during it
    assert len(stale_cut) == shards.count
    await lose_everything(redis, shards)
    new_fence = store.claim_fence("new")  # the restoring leader's claim
    refused: list[BaseException] = []

    def stale_commit_lands() -> bool:
        if not refused:
            try:
                store.write_snapshot(stale_cut, old_fence, shard_count=shards.count)
            except StaleFence as exc:
                refused.append(exc)
        return True

    await Restorer(redis, shards, store, batch_users=5).run(stale_commit_lands)
    assert refused and isinstance(refused[0], StaleFence)
    assert store.user_sum() == (12, 24), "the stale cut wrote nothing"
    assert await invariant(counter) == (24, 12)
    report = await Snapshotter(redis, shards, store).snapshot(fence=new_fence)
    assert report is not None and store.user_sum() == (12, 24)


async def test_milestone_memory_survives_a_loss_so_nothing_is_announced_twice(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", 995)  # global 995
    # 100 was reached by the edit and is announced by the next click; then 1,000.
    assert await climb(counter, ann, 10) == [(0, 100), (1000, 1000)]
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)
    await Restorer(redis, shards, store).run(lambda: True)
    assert (await counter.users(["ann"]))[0].count == 1005
    assert await climb(counter, ann, 5) == [], "1000 was announced before the snapshot"


async def test_a_milestone_reached_while_restoring_is_announced_once_after(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    bob = await make_player(counter, "Bob")
    await counter.set_count("bob", 95)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    await lose_everything(redis, shards)
    assert await climb(counter, bob, 10) == [], "a partial count announces nothing"
    await Restorer(redis, shards, store).run(lambda: True)
    assert (await counter.users(["bob"]))[0].count == 105
    assert await climb(counter, bob, 3) == [(0, 100)]
    await counter.set_count("bob", 50)
    assert await climb(counter, bob, 60) == [], "dropped and climbed again: quiet"


async def test_losing_one_shard_restores_only_that_shard_adding_to_clicks_since(
    redis: Any, prefix: str, store: Store
) -> None:
    shards = Shards(prefix, 4)
    counter = await fresh(redis, shards)
    players = [await make_player(counter, f"S{i:03}") for i in range(40)]
    for i, p in enumerate(players):
        await counter.click(p, i % 5 + 1, 1000, Profile(device="mobile", country="FR"))
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    snapshot = {p.canon: i % 5 + 1 for i, p in enumerate(players)}
    lost = 2
    ours = [p for p in players if shards.of(p.canon) == lost]
    others = [p for p in players if shards.of(p.canon) != lost]
    assert ours and others, "the players must span the lost shard and the others"
    for p in players:  # after the snapshot: lost with the shard for its own players
        await counter.click(p, 100, 1000)
    other_before = {k.root: await redis.get(k.global_count) for k in shards.all()}
    await lose_shard(redis, shards, lost)
    restorer = Restorer(redis, shards, store, batch_users=7)
    assert await restorer.lost() == [lost]
    for p in ours[:3] + others[:3]:  # during the gap: provisional on the lost shard
        await counter.click(p, 1000, 10_000, Profile(device="mobile", country="FR"))
    assert await restorer.run(lambda: True) == len(ours)
    assert await restorer.run(lambda: True) is None, "restored once"
    expected = {
        p.canon: snapshot[p.canon]
        + (100 if p in others else 0)
        + (1000 if p in ours[:3] + others[:3] else 0)
        for p in players
    }
    found = {e.username.lower(): e.count for e in await counter.users([p.canon for p in players])}
    assert found == expected
    state = await counter.state()
    assert state.restored and state.users == 40
    assert state.global_count == sum(expected.values())
    for i, k in enumerate(shards.all()):
        members = [p for p in players if shards.of(p.canon) == i]
        assert int(await redis.get(k.global_count)) == sum(expected[p.canon] for p in members)
        if i != lost:
            assert not await redis.exists(k.restore), "a shard that was not lost is left alone"
    # The lost shard's share of the stats is back, added to what was counted since.
    clicks_of_ours = sum(snapshot[p.canon] for p in ours) + 3000
    lost_keys = shards.shard(lost)
    assert int(await redis.get(lost_keys.clicks_total)) == clicks_of_ours
    assert int((await redis.zscore(lost_keys.country_board, "FR")) or 0) == clicks_of_ours
    assert other_before[shards.shard(0).root] is not None
    # And SQL takes the restored shard at its next snapshot, all shards adding up.
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert store.user_sum() == (40, sum(expected.values()))
    assert store.totals().global_count == sum(expected.values())  # type: ignore[union-attr]


async def test_a_hub_lost_alone_gets_its_milestone_memory_and_secret_back(
    redis: Any, prefix: str, store: Store
) -> None:
    shards = Shards(prefix, 4)
    counter = await fresh(redis, shards)
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", 999)
    await climb(counter, ann, 2)  # announces 1000
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    hub = shards.hub
    await redis.delete(hub.epoch, hub.milestone_global, hub.secret)
    restorer = Restorer(redis, shards, store)
    assert await restorer.lost() == [] and await restorer.needed()
    assert await restorer.run(lambda: True) == 0
    assert int(await redis.get(hub.milestone_global)) == 1000
    assert (await redis.get(hub.secret)).decode() == store.secret()
    assert await redis.exists(hub.epoch) and not await restorer.needed()
    assert (await counter.users(["ann"]))[0].count == 1001, "no shard was touched"


async def test_a_full_restore_may_change_the_shard_count(
    redis: Any, prefix: str, store: Store
) -> None:
    one = Counter(redis, Shards(prefix, 1))
    await one.mark_fresh()
    players = [await make_player(one, f"M{i:02}") for i in range(30)]
    for i, p in enumerate(players):
        await one.click(p, i + 1, 1000, Profile(device="desktop", country="JP"))
    await Snapshotter(redis, Shards(prefix, 1), store).snapshot(fence=store.claim_fence("w"))
    total = sum(range(1, 31))
    await lose_everything(redis, Shards(prefix, 1))

    four = Shards(prefix, 4)
    counter = Counter(redis, four)
    late = players[4]
    await counter.click(late, 1000, 10_000)  # provisional, in its new shard
    fence = store.claim_fence("w")
    assert await Restorer(redis, four, store, batch_users=8).run(lambda: True, fence) == 30
    found = {e.username.lower(): e.count for e in await counter.users([p.canon for p in players])}
    assert found == {p.canon: i + 1 + (1000 if p is late else 0) for i, p in enumerate(players)}
    for i, k in enumerate(four.all()):
        members = [p for p in players if four.of(p.canon) == i]
        assert await redis.hlen(k.names) == len(members)
    state = await counter.state()
    assert state.restored and state.global_count == total + 1000
    # The shared counters went to shard 0; their sums are what readers use.
    assert int(await redis.get(four.shard(0).clicks_total)) >= total
    assert state.clicks_total == total + 1000
    assert ("JP", total) in await counter.countries(5)
    totals = store.totals()
    assert totals is not None and totals.shard_count == 4 and totals.global_count == total
    assert sorted(totals.shares) == [0, 1, 2, 3]
    # Snapshots of the new layout go through and keep the sums.
    await Snapshotter(redis, four, store).snapshot(fence=fence)
    assert store.user_sum() == (30, total + 1000)
    assert store.totals().global_count == total + 1000  # type: ignore[union-attr]
    assert store.country_totals() == {"JP": total, "unknown": 1000}, "counted once"


async def test_a_shard_count_change_without_a_full_loss_is_refused(
    redis: Any, prefix: str, store: Store
) -> None:
    four = Shards(prefix, 4)
    counter = await fresh(redis, four)
    ann = await make_player(counter, "Ann")
    await counter.click(ann, 3, 1000)
    await Snapshotter(redis, four, store).snapshot(fence=1)
    two = Shards(prefix, 2)  # an operator changed REDIS_SHARDS; shard 1 of it is "lost"
    await lose_shard(redis, two, 1)
    assert await Restorer(redis, two, store).run(lambda: True, 1) is None
    assert store.totals().shard_count == 4  # type: ignore[union-attr]


async def test_a_batch_sent_again_after_a_loss_and_restore_counts_once(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    ann = await make_player(counter, "Ann")
    first = await counter.click(ann, 3, 10_000, click_id="before-snap")
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    late = await counter.click(ann, 2, 10_000, click_id="after-snap")  # lost with Redis
    assert late.user == 5
    await lose_everything(redis, shards)
    # Until the restore has put the ids back, a batch with an id waits; none counts.
    with pytest.raises(ApiError) as waiting:
        await counter.click(ann, 3, 10_000, click_id="before-snap")
    assert (waiting.value.status, waiting.value.code) == (503, "restoring")
    await Restorer(redis, shards, store).run(lambda: True)
    again = await counter.click(ann, 3, 10_000, click_id="before-snap")
    assert again.repeated, "counted before the snapshot: the restore remembers it"
    assert (again.user, again.global_count) == (first.user, first.global_count)
    # The batch counted after the snapshot was lost with Redis: sent again, it counts once.
    resent = await counter.click(ann, 2, 10_000, click_id="after-snap")
    assert not resent.repeated and resent.user == 5
    assert (await counter.users(["ann"]))[0].count == 5
    # And the same id with another n is still a mismatch after the restore.
    with pytest.raises(ApiError) as other_n:
        await counter.click(ann, 4, 10_000, click_id="before-snap")
    assert other_n.value.code == "idempotency_mismatch"


async def test_expired_batch_ids_leave_the_store(redis: Any, shards: Shards, store: Store) -> None:
    counter = await fresh(redis, shards)
    ann = await make_player(counter, "Ann")
    await counter.click(ann, 1, 10_000, click_id="old")
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    now_ms = int(time.time() * 1000)
    assert [row[:2] for row in store.idempotency(now_ms)] == [("ann", "old")]
    assert store.idempotency(now_ms + 16 * 60 * 1000) == [], "expired after 15 minutes"
