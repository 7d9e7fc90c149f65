"""Logical shards on one Redis: the same play on 1 and on 4 shards reads back the same.

A cluster only moves the shards' hash slots to other primaries; what the code does
with several shards (summing, merging, per-shard scripts) is tested here without one,
on the test Redis, by playing one random game on a one-shard and a four-shard layout
and comparing every read. tests/system/test_cluster.py runs the real cluster.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError

from service.breakdown import Profile
from service.counter import Counter
from service.errors import ApiError
from service.names import skeleton
from service.shards import LayoutMismatch, Shards, shard_of
from service.validation import canonical
from tests.support import make_player

NO_LIMIT = 10_000
NAMES = [f"player{i:02d}" for i in range(40)] + ["Zoë", "ålesund", "Ωmega", "x"]


@pytest.fixture
async def pair(redis: Any, prefix: str) -> AsyncIterator[tuple[Counter, Counter]]:
    """A one-shard and a four-shard counter on the same Redis, under this test's prefix."""
    one = Counter(redis, Shards(prefix + "one:", 1))
    four = Counter(redis, Shards(prefix + "four:", 4))
    for counter in (one, four):
        await counter.mark_fresh()
    yield one, four


def ranked(page: tuple[int, list[Any]]) -> tuple[int, list[tuple[int, int]]]:
    """A leaderboard page as (players, [(rank, count)]): what any order of ties shares."""
    total, entries = page
    return total, [(entry.rank, entry.count) for entry in entries]


async def play(counter: Counter, seed: int) -> dict[str, int]:
    """The same random game on any layout: joins, clicks with profiles, one edit, one
    delete. Returns each player's acknowledged count."""
    rng = random.Random(seed)
    players = [await make_player(counter, name) for name in NAMES]
    counts = {p.display: 0 for p in players}
    countries = ["DE", "FR", "JP", "BR", "--"]
    for _ in range(300):
        p = rng.choice(players)
        n = rng.randint(1, 7)
        profile = Profile("mobile", "Firefox", "Android", rng.choice(countries))
        result = await counter.click(p, n, NO_LIMIT, profile)
        counts[p.display] += n
        assert result.user == counts[p.display]
    await counter.set_count(canonical("player03"), 1234)
    counts["player03"] = 1234
    await counter.delete(canonical("player04"))
    del counts["player04"]
    return counts


async def test_the_shards_hold_the_players_and_the_sums_match_the_users(redis, pair) -> None:
    _, four = pair
    counts = await play(four, seed=1)
    state = await four.state()
    assert state.global_count == sum(counts.values()) == sum(state.shard_globals)
    assert state.users == len(counts)
    assert len(state.shard_globals) == 4
    # Every shard got players (44 names over 4 shards), and each shard's own global is
    # the sum of its own players: the invariant holds per shard, so it holds for the sum.
    per_shard = [0, 0, 0, 0]
    for name, count in counts.items():
        per_shard[four.shards.of(canonical(name))] += count
    assert list(state.shard_globals) == per_shard
    assert all(per_shard)
    for i, k in enumerate(four.shards.all()):
        board = await redis.zrange(k.board, 0, -1, withscores=True)
        assert sum(int(score) for _, score in board) == per_shard[i]
        assert {name.decode() for name, _ in board} == {
            name for name in counts if four.shards.of(canonical(name)) == i
        }


async def test_every_read_agrees_between_one_and_four_shards(pair) -> None:
    one, four = pair
    assert await play(one, seed=7) == await play(four, seed=7)
    a, b = await one.state(), await four.state()
    assert (a.global_count, a.users, a.clicks_total) == (b.global_count, b.users, b.clicks_total)
    # Equal counts may come in another order (shard, then name): same counts, same ranks.
    assert [count for _, count in a.top] == [count for _, count in b.top]
    for offset, limit in [(0, 10), (0, 200), (3, 5), (10, 7), (39, 10), (100, 5)]:
        assert ranked(await one.leaderboard(offset, limit)) == ranked(
            await four.leaderboard(offset, limit)
        )
    assert set((await one.leaderboard(0, 200))[1]) == set((await four.leaderboard(0, 200))[1])
    names = [canonical(n) for n in NAMES]
    assert await one.users(names) == await four.users(names)
    for prefix_text in ["", "player1", "p", "z", "nobody"]:
        assert await one.search(prefix_text, 15) == await four.search(prefix_text, 15)
    for window in ["hour", "day", "week"]:
        assert await one.stats(window) == await four.stats(window)
    assert await one.breakdown("country", 7) == await four.breakdown("country", 7)
    assert await one.countries(3) == await four.countries(3)


async def test_ties_across_shards_share_a_rank(pair) -> None:
    one, four = pair
    for counter in (one, four):
        for name in NAMES[:12]:
            p = await make_player(counter, name)
            await counter.click(p, 5, NO_LIMIT)
        await counter.click(await make_player(counter, "lower"), 2, NO_LIMIT)
    first = await four.leaderboard(0, 20)
    assert set(first[1]) == set((await one.leaderboard(0, 20))[1])
    assert {e.rank for e in first[1] if e.count == 5} == {1}
    assert [e.rank for e in first[1] if e.count == 2] == [13]
    assert (await four.users([canonical("lower")]))[0].rank == 13


async def test_a_click_answer_adds_the_other_shards_as_last_read(pair) -> None:
    _, four = pair
    players = [await make_player(four, name) for name in NAMES[:20]]
    for p in players:
        await four.click(p, 3, NO_LIMIT)
    await four.state()  # what the ticker does every tick
    result = await four.click(players[0], 2, NO_LIMIT)
    assert result.global_count == 20 * 3 + 2
    assert result.rank == 0  # ranks across shards are for readers, not for the click
    # A repeat of an id answers the first answer's body exactly, even after more reads.
    first = await four.click(players[1], 4, NO_LIMIT, click_id="batch-1")
    await four.click(players[2], 1, NO_LIMIT)
    await four.state()
    again = await four.click(players[1], 4, NO_LIMIT, click_id="batch-1")
    assert (again.user, again.global_count, again.repeated) == (
        first.user,
        first.global_count,
        True,
    )
    assert (await four.state()).global_count == 20 * 3 + 2 + 4 + 1
    # Personal milestones are the shard's own business: the click announces them.
    await four.set_count(players[3].canon, 99)
    crossed = await four.click(players[3], 1, NO_LIMIT)
    assert (crossed.personal_milestone, crossed.global_milestone) == (100, 0)


async def test_admin_answers_carry_the_summed_global(pair) -> None:
    _, four = pair
    players = [await make_player(four, name) for name in NAMES[:12]]
    for p in players:
        await four.click(p, 10, NO_LIMIT)
    await four.state()  # the other shards as the ticker last read them
    edited = await four.set_count(players[0].canon, 25)
    assert edited.global_count == 11 * 10 + 25
    deleted = await four.delete(players[1].canon)
    assert deleted.global_count == 10 * 10 + 25
    assert (await four.state()).global_count == deleted.global_count


async def test_look_alike_names_share_a_shard_so_the_second_is_refused(pair) -> None:
    _, four = pair
    # "alice9" with a Cyrillic a: another canonical name, the same UTS #39 skeleton.
    latin, cyrillic = "alice9", "\u0430lice9"
    assert canonical(latin) != canonical(cyrillic)
    assert skeleton(canonical(latin)) == skeleton(canonical(cyrillic))
    assert shard_of(canonical(latin), 4) == shard_of(canonical(cyrillic), 4)
    await make_player(four, latin)
    with pytest.raises(ApiError) as info:
        await make_player(four, cyrillic)
    assert info.value.code == "name_taken"


async def test_the_join_limit_counts_across_shards(pair) -> None:
    _, four = pair
    names = [f"joiner{i}" for i in range(6)]
    assert len({four.shards.of(n) for n in names}) > 1
    for name in names[:5]:
        await four.join(name, name, "203.0.113.9", 5)
    with pytest.raises(ApiError) as info:
        await four.join(names[5], names[5], "203.0.113.9", 5)
    assert info.value.code == "rate_limited"
    assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1


async def test_a_global_milestone_is_claimed_once_across_counters(redis, prefix) -> None:
    shards = Shards(prefix, 4)
    counters = [Counter(redis, shards) for _ in range(3)]
    await counters[0].mark_fresh()
    players = [await make_player(counters[0], name) for name in NAMES[:30]]
    for p in players:
        await counters[0].click(p, 40, NO_LIMIT)  # 1,200 in all, over the shards
    states = await asyncio.gather(*(c.state() for c in counters))
    assert all(s.global_count == 1200 for s in states)
    claims = await asyncio.gather(
        *(c.claim_global_milestone(s) for c, s in zip(counters, states, strict=True))
    )
    assert sorted(claims) == [0, 0, 1000]
    # A later reader of the same sum claims nothing; a higher power of ten is new.
    late = Counter(redis, shards)
    assert await late.claim_global_milestone(await late.state()) == 0


async def test_no_global_milestone_while_the_hub_awaits_its_restore(redis, prefix) -> None:
    counter = Counter(redis, Shards(prefix, 4))
    await counter.mark_fresh()
    players = [await make_player(counter, name) for name in NAMES[:20]]
    for p in players:
        await counter.click(p, 50, NO_LIMIT)
    await redis.delete(counter.keys.epoch)  # the hub's primary came back empty
    state = await counter.state()
    assert state.restored and not state.hub_restored
    assert await counter.claim_global_milestone(state) == 0


async def test_a_redis_laid_out_otherwise_refuses_to_start(redis, prefix) -> None:
    await Shards(prefix, 4).check_layout(redis)
    await Shards(prefix, 4).check_layout(redis)  # the same layout: fine, every time
    with pytest.raises(LayoutMismatch, match="4 shard"):
        await Shards(prefix, 16).check_layout(redis)
    with pytest.raises(LayoutMismatch, match="REDIS_SHARDS"):
        await Shards(prefix, 1).check_layout(redis)


def test_shards_spread_players_evenly_enough() -> None:
    counts = [0] * 16
    for i in range(16_000):
        counts[shard_of(f"user{i}", 16)] += 1
    assert max(counts) < 1.15 * 1000 and min(counts) > 0.85 * 1000


def test_key_names_on_one_shard_are_unchanged_and_tagged_on_several() -> None:
    one = Shards("clickky:", 1)
    assert one.shard(0).board == "clickky:board" and one.hub.clock == "clickky:clock"
    four = Shards("clickky:", 4)
    assert four.shard(3).board == "clickky:{s3}:board"
    assert four.shard(3).click_rate("ann") == "clickky:{s3}:rate:ann"
    assert four.hub.clock == "clickky:{hub}:clock"
    assert four.hub.join_rate("1.2.3.4") == "clickky:{hub}:joinrate:1.2.3.4"
    with pytest.raises(ValueError):
        Shards("a{b}:", 4)


async def test_a_shard_that_cannot_be_reached_shows_its_last_reading(pair) -> None:
    _, four = pair
    players = [await make_player(four, name) for name in NAMES[:16]]
    for p in players:
        await four.click(p, 2, NO_LIMIT)
    before = await four.state()
    down = four.shards.shard(2).global_count
    real = four._shard_state

    async def primary_down(*, keys: list[str], args: list[Any]) -> Any:
        if keys[0] == down:
            raise ConnectionError("Connection refused")
        return await real(keys=keys, args=args)

    four._shard_state = primary_down  # type: ignore[assignment]
    alive = next(p for p in players if four.shards.of(p.canon) != 2)
    await four.click(alive, 3, NO_LIMIT)
    during = await four.state()
    assert during.unreachable == 1
    assert during.global_count == before.global_count + 3, "the others' clicks still show"
    assert during.shard_globals[2] == before.shard_globals[2]
    # A reader that never saw the shard cannot make up its share: it fails instead.
    fresh = Counter(four.redis, four.shards)
    fresh._shard_state = primary_down  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await fresh.state()


async def test_a_hub_that_cannot_be_reached_shows_its_last_reading(pair) -> None:
    _, four = pair
    players = [await make_player(four, name) for name in NAMES[:16]]
    for p in players:
        await four.click(p, 2, NO_LIMIT)
    await four.set_count(players[1].canon, 1500)  # the global passes 1,000: a milestone
    before = await four.state()
    real_hub, real_shard = four._state, four._shard_state

    async def refused(*, keys: list[str], args: list[Any]) -> Any:
        raise ConnectionError("Connection refused")

    four._state = refused  # type: ignore[assignment]
    await asyncio.sleep(0.05)
    await four.click(players[0], 3, NO_LIMIT)
    during = await four.state(floor_ms=before.clock_ms)
    assert during.hub_unreachable and during.unreachable == 0
    assert during.global_count == before.global_count + 3, "the shards' clicks still show"
    assert during.online == before.online
    # The clocks move on by this host's clock, and never below the caller's floor.
    assert during.clock_ms >= before.clock_ms + 50 and during.server_ms >= before.server_ms + 50
    pinned = await four.state(floor_ms=during.clock_ms + 10_000)
    assert pinned.clock_ms == during.clock_ms + 10_000
    assert await four.claim_global_milestone(pinned) == 0  # the claim lives on the hub
    # Nothing answers: Redis is down for this instance, and the state says so.
    four._shard_state = refused  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await four.state()
    # A reader that never read the hub cannot make it up.
    fresh = Counter(four.redis, four.shards)
    fresh._state = refused  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await fresh.state()
    four._state, four._shard_state = real_hub, real_shard  # type: ignore[method-assign]
    back = await four.state()
    assert not back.hub_unreachable
    assert await four.claim_global_milestone(back) == 1000


async def test_sharding_a_redis_that_holds_unsharded_data_is_refused(redis, prefix) -> None:
    one = Counter(redis, Shards(prefix, 1))
    await one.mark_fresh()
    await one.click(await make_player(one, "ann"), 3, NO_LIMIT)
    await Shards(prefix, 1).check_layout(redis)
    with pytest.raises(LayoutMismatch, match="over 1 shard"):
        await Shards(prefix, 4).check_layout(redis)


async def test_a_claim_sent_again_after_a_lost_reply_gets_its_milestone_back(redis, prefix) -> None:
    counter = Counter(redis, Shards(prefix, 4))
    await counter.mark_fresh()
    hub = counter.keys
    claim = [hub.milestone_global, hub.epoch, hub.milestone_claim]
    assert await counter._milestone_claim(keys=claim, args=["1000", "id-1"]) == b"1000"
    # The same claim again (what a retry after a lost reply sends): still ours.
    assert await counter._milestone_claim(keys=claim, args=["1000", "id-1"]) == b"1000"
    # Anyone else's claim of the same milestone: nothing.
    assert await counter._milestone_claim(keys=claim, args=["1000", "id-2"]) == 0


async def test_a_node_without_the_scripts_gets_them_whole(redis, prefix) -> None:
    counter = Counter(redis, Shards(prefix, 4))
    await counter.mark_fresh()
    ann = await make_player(counter, "ann")
    await counter.click(ann, 1, NO_LIMIT)
    await redis.script_flush()  # what a restarted or newly promoted primary has
    assert (await counter.click(ann, 2, NO_LIMIT)).user == 3
    assert (await redis.script_exists(counter._click.sha))[0], "EVAL cached it"


async def test_deep_leaderboard_pages_read_the_same_order_as_shallow_ones(
    pair, monkeypatch
) -> None:
    """Pages past MAX_MERGED_ROWS are found by bisection: the same rows and ranks as the
    merge of the shards' first rows, at every offset, with ties split over pages."""
    one, four = pair
    for counter in (one, four):
        for i in range(90):  # many ties: 90 players over 5 counts, some with none
            player = await make_player(counter, f"deep{i:02d}")
            if n := [0, 1, 2, 4, 9, 9][(i * 7) % 6]:
                await counter.click(player, n, NO_LIMIT)
    _, merged = await four.leaderboard(0, 200)  # the merge of the shards' first rows
    monkeypatch.setattr("service.counter.MAX_MERGED_ROWS", 0)
    for offset, limit in [(0, 200), (0, 7), (5, 10), (33, 20), (88, 5), (89, 1), (90, 3)]:
        total, deep = await four.leaderboard(offset, limit)
        assert total == 90
        assert deep == merged[offset : offset + limit], (offset, limit)
        assert ranked((total, deep)) == ranked(await one.leaderboard(offset, limit))
    # Walking every page of 7 yields every player once, in order.
    walked = []
    for offset in range(0, 90, 7):
        walked += (await four.leaderboard(offset, 7))[1]
    assert walked == merged
