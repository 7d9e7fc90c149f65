"""The worker's jobs: fences claimed per lease term, reconciliation after Redis went back
in time (a failover to a lagging replica), and the eviction policy check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.connection import connect_redis
from service.counter import as_text
from service.keys import Keys
from service.settings import Settings
from service.shards import Shards
from tests import worker_support
from tests.support import RedisServer, make_player
from tests.worker_support import Counter, fresh
from worker.main import Worker, check, run

# Every test here runs on one shard and on several (tests/worker_support.py).
shards = worker_support.shards
counter = worker_support.counter


@pytest.fixture
async def workers(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Workers whose jobs the test runs by hand (no scheduler); closed at the end."""
    made: list[Worker] = []

    def factory(shards: Shards, **overrides: Any) -> Worker:
        # Lease TTL 10 s: held throughout the test, whatever the machine's load.
        settings = make_settings(snapshot_interval_s=20, redis_shards=shards.count, **overrides)
        assert settings.shards == shards
        worker = Worker(settings)
        made.append(worker)
        return worker

    yield factory
    for worker in made:
        worker.scheduler.start(paused=True)  # close() shuts it down
        await worker.close()


async def replica_of(redis: Any, keys: Keys) -> list[tuple[str, int, bytes]]:
    """What a replica that stops replicating now would hold: a dump of every key under
    `keys.root` (the deployment's, or on several shards one shard's)."""
    found = [as_text(k) async for k in redis.scan_iter(match=keys.root + "*")]
    return [(k, max(0, await redis.pttl(k)), await redis.dump(k)) for k in found]


async def fail_over_to(redis: Any, keys: Keys, replica: list[tuple[str, int, bytes]]) -> None:
    """Redis (or one shard of it) now holds the replica's (older) data and nothing else."""
    found = [k async for k in redis.scan_iter(match=keys.root + "*")]
    if found:
        await redis.delete(*found)
    for key, ttl, dump in replica:
        await redis.restore(key, ttl, dump)


async def sql_matches_redis(worker: Worker, counter: Counter) -> None:
    """The SQL invariant holds and SQL holds what Redis holds."""
    state = await counter.state()
    totals = await asyncio.to_thread(worker.store.totals)
    assert totals is not None
    assert await asyncio.to_thread(worker.store.user_sum) == (state.users, state.global_count)
    assert totals.global_count == state.global_count


async def test_a_failover_to_a_lagging_replica_is_detected_and_reconciled(
    workers: Callable[..., Worker], counter: Counter, redis: Any, shards: Shards
) -> None:
    worker = workers(shards)
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    dan = await make_player(counter, "Dan")
    await counter.click(ann, 10, 1000)
    await counter.click(bob, 10, 1000)
    await counter.click(dan, 2, 1000)
    await worker.guard()
    await worker.snapshot()
    replica = await replica_of(redis, Keys(shards.prefix))  # the replica stops here (global 22)

    await counter.click(ann, 7, 1000)  # only the primary sees these...
    cat = await make_player(counter, "Cat")
    await counter.click(cat, 3, 1000)
    await counter.delete("dan")
    await worker.snapshot()  # ...and SQL: users 17 + 10 + 3, Dan's token dead
    assert await asyncio.to_thread(worker.store.user_sum) == (3, 30)

    await fail_over_to(redis, Keys(shards.prefix), replica)
    await counter.click(bob, 1, 1000)  # only Bob is dirty on the replica
    await worker.snapshot()
    # Writing only Bob would leave SQL at sum(users) 31 against a global of 23.
    await sql_matches_redis(worker, counter)
    assert await asyncio.to_thread(worker.store.user_sum) == (2, 21)
    found = await counter.users(["ann", "bob", "cat", "dan"])
    assert [(e.username, e.count) for e in found] == [("Ann", 10), ("Bob", 11)]
    assert not await counter.nonce_is_live(dan), "SQL knew Dan was deleted: deleted again"
    await counter.click(ann, 1, 1000)
    await worker.snapshot()  # and snapshots of only what changed resume
    await sql_matches_redis(worker, counter)


async def test_fences_do_not_repeat_when_the_redis_counter_goes_back(
    workers: Callable[..., Worker], counter: Counter, redis: Any, shards: Shards
) -> None:
    ann = await make_player(counter, "Ann")
    old, new = workers(shards), workers(shards)
    old.worker_id, new.worker_id = "old", "new"
    old.lease.worker_id, new.lease.worker_id = "old", "new"
    await old.guard()
    await old.snapshot()
    replica = await replica_of(redis, Keys(shards.prefix))
    # The failover loses the lease and its counter: the new worker gets the same
    # lease number the old one still believes it holds.
    hub = shards.hub
    await fail_over_to(redis, Keys(shards.prefix), [r for r in replica if r[0] != hub.lease])
    await redis.delete(hub.fence)
    await new.guard()
    assert new.lease.fence == old.lease.fence == 1
    await counter.click(ann, 5, 1000)
    await new.snapshot()
    new_fence = new._claimed
    await counter.click(ann, 2, 1000)
    await old.snapshot()  # the old leader, paused until now, tries to write
    assert old.lease.fence is None, "refused: it stood down"
    assert new_fence is not None and old._claimed is None
    assert await asyncio.to_thread(old.store.user_sum) == (1, 5), "the old leader wrote nothing"
    await new.guard()
    await new.snapshot()
    assert await asyncio.to_thread(new.store.user_sum) == (1, 7)


async def test_no_restore_under_an_allkeys_eviction_policy(
    workers: Callable[..., Worker],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shards: Shards,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = connect_redis(server.url)
    try:
        await client.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(SystemExit) as refused:
            await run(make_settings(redis_url=server.url, redis_shards=shards.count))
        assert refused.value.code == 2
        assert "refusing to start: Redis's maxmemory-policy is allkeys-lru" in caplog.text
        worker = workers(shards, redis_url=server.url)
        counter = Counter(client, shards)
        await counter.mark_fresh()
        ann = await make_player(counter, "Ann")
        await counter.click(ann, 4, 1000)
        await worker.guard()
        await worker.snapshot()
        # Evicted, or lost: the worker cannot tell.
        await client.delete(shards.keys_of("ann").epoch)
        assert await worker._restore() is None
        assert not (await counter.state()).restored, "no restore on top of live counts"
        assert (await counter.users(["ann"]))[0].count == 4
        # With a safe policy a genuine loss is restored as usual.
        await client.config_set("maxmemory-policy", "noeviction")
        await client.flushdb()
        assert await worker._restore() == 1
        assert (await counter.users(["ann"]))[0].count == 4
    finally:
        await client.aclose()
        server.stop()


async def test_one_shard_going_back_in_time_is_reconciled_alone(
    workers: Callable[..., Worker], redis: Any, prefix: str
) -> None:
    four = Shards(prefix, 4)
    counter = await fresh(redis, four)
    worker = workers(four)
    players = [await make_player(counter, f"G{i:02}") for i in range(24)]
    for p in players:
        await counter.click(p, 5, 1000)
    await worker.guard()
    await worker.snapshot()
    back = four.of(players[0].canon)
    replica = await replica_of(redis, four.shard(back))  # that shard's replica stops here
    for p in players:
        await counter.click(p, 2, 1000)  # all shards, and SQL, see these
    await worker.snapshot()
    await fail_over_to(redis, four.shard(back), replica)  # only that shard fails over
    marked: list[int] = []
    reconcile = worker.snapshotter.reconcile

    async def spy(stored: dict[int, int]) -> int:
        marked.extend(stored)
        return await reconcile(stored)

    worker.snapshotter.reconcile = spy  # type: ignore[method-assign]
    await counter.click(players[0], 1, 1000)
    await worker.snapshot()
    assert marked == [back], "only the shard that went back is reconciled"
    await sql_matches_redis(worker, counter)
    found = {e.username.lower(): e.count for e in await counter.users([p.canon for p in players])}
    assert found == {
        p.canon: (5 if four.of(p.canon) == back else 7) + (p is players[0]) for p in players
    }


async def test_the_healthcheck_reads_the_hubs_live_workers(
    workers: Callable[..., Worker], shards: Shards, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = workers(shards)
    assert await check(worker.settings) == 1, "no worker has reported yet"
    await worker.guard()
    assert await check(worker.settings) == 0
    assert capsys.readouterr().out.strip() == "healthy"
    worker.scheduler.start(paused=True)
    await worker.close()
    assert await check(worker.settings) == 1, "a stopped worker leaves no health behind"
