"""The snapshot job: a consistent cut of only what changed, kept until it commits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError

from service.breakdown import Profile
from service.counter import utc_day
from service.shards import Shards
from service.store import Store
from service.tokens import Player
from tests import worker_support
from tests.support import make_player
from tests.worker_support import Counter, fresh
from worker.snapshot import Snapshotter

# Every test here runs on one shard and on several (tests/worker_support.py).
shards = worker_support.shards
counter = worker_support.counter


async def inflight(redis: Any, shards: Shards) -> int:
    """How many of the shards' dirty, in-flight and owner keys exist."""
    return sum(
        [await redis.exists(k.dirty, k.dirty_inflight, k.inflight_owner) for k in shards.all()]
    )


@pytest.fixture
def store(store_url: str) -> Store:
    result = Store(store_url)
    result.migrate()
    return result


async def test_snapshot_writes_exact_counts_and_keeps_the_invariant(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"P{i}") for i in range(5)]
    await asyncio.gather(*(counter.click(p, i + 1, 1000) for i, p in enumerate(players)))
    report = await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert report is not None and report.users == 5
    assert store.user_sum() == (5, 15)
    assert store.totals().global_count == 15  # type: ignore[union-attr]
    assert await inflight(redis, shards) == 0


async def test_only_changed_users_are_written(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"Q{i}") for i in range(50)]
    snapshotter = Snapshotter(redis, shards, store)
    await snapshotter.snapshot(fence=1)
    await counter.click(players[7], 3, 1000)
    await counter.click(players[9], 2, 1000)
    report = await snapshotter.snapshot(fence=1)
    assert report is not None
    assert report.users == 2, "only the two players who clicked are dirty"
    # Two users and, in each shard they are on, the one minute bucket that moved and
    # one value per breakdown dimension.
    touched = len({shards.of(players[7].canon), shards.of(players[9].canon)})
    assert report.rows <= 2 + touched * (1 + 4)
    assert store.user_sum() == (50, 5)


async def test_deleted_users_are_deleted_in_sql(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    keep, gone = await make_player(counter, "Keep"), await make_player(counter, "Gone")
    await counter.click(keep, 2, 1000)
    await counter.click(gone, 3, 1000)
    snapshotter = Snapshotter(redis, shards, store)
    await snapshotter.snapshot(fence=1)
    await counter.delete("gone")
    report = await snapshotter.snapshot(fence=1)
    assert report is not None and report.deleted == 1
    assert store.user_sum() == (1, 2)
    assert store.totals().global_count == 2  # type: ignore[union-attr]
    assert store.dead_tokens([("gone", gone.nonce)]) == {("gone", gone.nonce)}


async def test_a_failed_write_loses_no_change(
    counter: Counter, redis: Any, shards: Shards, store: Store, tmp_path: Path
) -> None:
    player = await make_player(counter, "Rae")
    await counter.click(player, 4, 1000)
    broken = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(Exception, match="unable to open"):
        await Snapshotter(redis, shards, broken).snapshot(fence=1)
    # The change waits in the in-flight set; more clicks join it in the dirty set.
    assert await redis.sismember(shards.keys_of("rae").dirty_inflight, "rae")
    await counter.click(player, 1, 1000)
    report = await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert report is not None and report.users == 1
    assert store.user_sum() == (1, 5)


async def test_a_cut_taken_during_concurrent_clicks_is_consistent(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"C{i}") for i in range(20)]
    snapshotter = Snapshotter(redis, shards, store)

    async def click_a_lot(p: Player) -> None:
        for _ in range(30):
            await counter.click(p, 1, 10_000)

    clicking = asyncio.gather(*(click_a_lot(p) for p in players))
    cuts = []
    while not clicking.done():
        taken = await snapshotter.read_cuts()
        assert [cut.shard for cut in taken] == list(range(shards.count))
        cuts += taken
        await asyncio.sleep(0.005)
    await clicking
    players_of = [sum(shards.of(p.canon) == i for p in players) for i in range(shards.count)]
    complete = [
        cut for cut in cuts if players_of[cut.shard] and len(cut.users) == players_of[cut.shard]
    ]
    assert complete, "no cut saw every user of its shard; the check below would prove nothing"
    for cut in complete:
        # A cut with every user of its shard in it adds up to the shard's global exactly.
        assert sum(u.count for u in cut.users) == cut.global_count
    report = await snapshotter.snapshot(fence=1)
    assert report is not None
    assert store.user_sum() == (20, 600)
    assert store.totals().global_count == 600  # type: ignore[union-attr]


async def test_no_snapshot_while_a_restore_is_pending(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    await make_player(counter, "Pending")
    await redis.delete(*(k.epoch for k in shards.all()))
    assert await Snapshotter(redis, shards, store).snapshot(fence=1) is None
    assert store.totals() is None


async def test_minute_buckets_reach_sql(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    player = await make_player(counter, "Min")
    await counter.click(player, 6, 1000)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert sum(store.minutes_between(0, 2**40).values()) == 6


async def test_breakdowns_reach_sql(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    player = await make_player(counter, "Brk")
    phone = Profile(device="mobile", browser="Mobile Safari", platform="iOS", country="NZ")
    await counter.click(player, 3, 1000, phone)
    await counter.click(player, 2, 1000, Profile(device="desktop", country="NZ"))
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    day = utc_day(time.time())
    stored = store.breakdowns_between(day, day)
    assert stored[(day, "device", "mobile")] == 3
    assert stored[(day, "device", "desktop")] == 2
    assert stored[(day, "country", "NZ")] == 5
    assert store.country_totals() == {"NZ": 5}


async def test_a_large_change_set_is_read_in_chunks_and_keeps_the_invariant(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"L{i:03}") for i in range(40)]
    for i, p in enumerate(players):
        await counter.click(p, i % 5 + 1, 1000)
    await counter.delete(players[0].canon)
    snapshotter = Snapshotter(redis, shards, store, max_inline_users=7)
    report = await snapshotter.snapshot(fence=1)
    assert report is not None and report.users == 39 and report.deleted == 1
    state = await counter.state()
    assert store.user_sum() == (39, state.global_count)
    assert store.totals().global_count == state.global_count  # type: ignore[union-attr]
    assert await inflight(redis, shards) == 0


class ClicksBetweenCutAndChunks(Snapshotter):
    """A snapshotter that runs `between` once its cut of `shard` is taken, before that
    shard's chunked reads."""

    shard: Any = None
    between: Any = None

    async def _read_users_in_chunks(self, k: Any) -> Any:
        if k == self.shard and self.between is not None:
            await self.between()
            self.between = None
        return await super()._read_users_in_chunks(k)


async def test_a_large_cut_writes_the_ids_of_batches_its_chunks_counted(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    players = [await make_player(counter, f"C{i:02}") for i in range(12)]
    for p in players:
        await counter.click(p, 1, 1000, click_id="before")
    # A player on the same shard as players[0] who does not click before the cut.
    name = next(
        f"Idle{i}" for i in range(1000) if shards.of(f"idle{i}") == shards.of(players[0].canon)
    )
    idle = await make_player(counter, name)
    await Snapshotter(redis, shards, store).snapshot(fence=1)
    for p in players:
        await counter.click(p, 1, 1000)  # changed: read in chunks by the next cut

    async def between() -> None:
        # After the cut: a changed player's batch is in the chunk's count, so its id
        # must be in SQL too; an unchanged player is not read, so neither is its id.
        await counter.click(players[0], 2, 1000, click_id="between")
        await counter.click(idle, 4, 1000, click_id="idle")

    snapshotter = ClicksBetweenCutAndChunks(redis, shards, store, max_inline_users=0)
    snapshotter.shard = shards.keys_of(players[0].canon)
    snapshotter.between = between
    await snapshotter.snapshot(fence=2)
    assert snapshotter.between is None, "the shard's cut was not read in chunks"

    now_ms = int(time.time() * 1000)
    ids = {(canon, click_id) for canon, click_id, _, _ in store.idempotency(now_ms)}
    assert (players[0].canon, "between") in ids
    assert (idle.canon, "idle") not in ids
    counts = {row.canon: row.count for row in store.users_after("", 1000)}
    assert counts[players[0].canon] == 4  # 1 + 1 + 2
    assert counts[idle.canon] == 0
    assert {(p.canon, "before") for p in players} <= ids
    # The next cut takes both ids again (an upsert) and the idle player's count.
    await Snapshotter(redis, shards, store).snapshot(fence=3)
    ids = {(canon, click_id) for canon, click_id, _, _ in store.idempotency(now_ms)}
    assert {(players[0].canon, "between"), (idle.canon, "idle")} <= ids
    counts = {row.canon: row.count for row in store.users_after("", 1000)}
    assert counts[idle.canon] == 4


async def test_thousands_of_deletes_between_snapshots(
    counter: Counter, redis: Any, shards: Shards, store: Store
) -> None:
    # More tombstones than Lua's unpack() can spread in one call.
    k = shards.shard(shards.count - 1)
    await redis.hset(k.tombstones, mapping={f"n{i}": f"gone{i}" for i in range(5000)})
    report = await Snapshotter(redis, shards, store).snapshot(fence=1)
    assert report is not None and report.rows >= 5000
    assert store.dead_tokens([("gone4999", "n4999")]) == {("gone4999", "n4999")}
    assert not await redis.exists(k.tombstones, k.tombstones_inflight)


class PausedAfterCommit(Store):
    """A store whose writer, once committed, is paused while `during` runs on the loop."""

    during: list[Any]

    def write_snapshot(self, cuts: Any, fence: int, *, shard_count: int = 1) -> int:
        rows = super().write_snapshot(cuts, fence, shard_count=shard_count)
        while self.during:
            loop, make = self.during.pop()
            asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)
        return rows


async def test_a_paused_old_leader_keeps_its_hands_off_the_successors_changes(
    counter: Counter, redis: Any, shards: Shards, store: Store, tmp_path: Path
) -> None:
    old_store = PausedAfterCommit(store.url)
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await counter.click(ann, 1, 1000)
    broken = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")

    async def successor_cuts_and_fails() -> None:
        await counter.click(bob, 3, 1000)
        with pytest.raises(Exception, match="unable to open"):
            await Snapshotter(redis, shards, broken).snapshot(fence=2)

    old_store.during = [(asyncio.get_running_loop(), successor_cuts_and_fails)]
    assert await Snapshotter(redis, shards, old_store).snapshot(fence=1) is not None
    assert old_store.during == []
    bob_keys = shards.keys_of("bob")
    assert await redis.sismember(bob_keys.dirty_inflight, "bob"), "the successor's cut is kept"
    await Snapshotter(redis, shards, store).snapshot(fence=2)
    assert store.user_sum() == (2, 4)
    assert await inflight(redis, shards) == 0


async def test_an_unreachable_shard_is_left_out_and_caught_up_later(
    redis: Any, prefix: str, store: Store
) -> None:
    four = Shards(prefix, 4)
    counter = await fresh(redis, four)
    players = [await make_player(counter, f"U{i:02}") for i in range(16)]
    for p in players:
        await counter.click(p, 2, 1000)
    snapshotter = Snapshotter(redis, four, store)
    down = four.of(players[0].canon)
    on_down = sum(four.of(p.canon) == down for p in players)
    take_cut = snapshotter._take_cut

    async def primary_down(keys: list[str], args: list[Any]) -> Any:
        if keys[0] == four.shard(down).epoch:
            raise ConnectionError("its primary is down")
        return await take_cut(keys=keys, args=args)

    snapshotter._take_cut = primary_down  # type: ignore[assignment]
    report = await snapshotter.snapshot(fence=1)
    assert report is not None and report.users == 16 - on_down
    assert store.user_sum() == (16 - on_down, 2 * (16 - on_down))
    assert store.totals().global_count == 2 * (16 - on_down)  # type: ignore[union-attr]
    snapshotter._take_cut = take_cut
    report = await snapshotter.snapshot(fence=1)
    assert report is not None and report.users == on_down, "its changes waited"
    assert store.user_sum() == (16, 32)
    assert store.totals().global_count == 32  # type: ignore[union-attr]

    async def all_down(keys: list[str], args: list[Any]) -> Any:
        raise ConnectionError("Redis is down")

    snapshotter._take_cut = all_down  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await snapshotter.snapshot(fence=1)
