"""The Redis data model, driven directly: atomicity, limits, identity, reads, presence."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import Any

import pytest

from service.counter import Counter
from service.errors import ApiError
from service.keys import Keys
from service.tokens import Player
from service.validation import canonical
from tests.support import eventually, make_player

NO_LIMIT = 10_000


async def consistent_read(redis: Any, keys: Keys) -> tuple[int, dict[str, int]]:
    """Global and the whole board at one instant (MULTI), to check the invariant mid-flight."""
    pipe = redis.pipeline(transaction=True)
    pipe.get(keys.global_count)
    pipe.zrange(keys.board, 0, -1, withscores=True)
    raw_global, rows = await pipe.execute()
    board = {name.decode(): int(score) for name, score in rows}
    return int(raw_global or 0), board


async def refused(coro: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        await coro
    return info.value


# -- atomicity ------------------------------------------------------------------------------


async def test_concurrent_clicks_keep_the_invariant_at_every_instant(counter, redis, keys) -> None:
    players = [await make_player(counter, f"p{i:02d}") for i in range(40)]
    rng = random.Random(2)
    plan = [(p, rng.randint(1, 5)) for p in players for _ in range(12)]
    rng.shuffle(plan)
    violations: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def watch() -> int:
        reads = 0
        while not done.is_set():
            total, board = await consistent_read(redis, keys)
            if total != sum(board.values()):
                violations.append((total, sum(board.values())))
            reads += 1
            await asyncio.sleep(0)
        return reads

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(counter.click(p, n, NO_LIMIT) for p, n in plan))
    done.set()
    reads = await watcher

    assert violations == []
    assert reads > 1
    expected: dict[str, int] = {}
    for p, n in plan:
        expected[p.display] = expected.get(p.display, 0) + n
    total, board = await consistent_read(redis, keys)
    assert board == expected
    assert total == sum(expected.values())
    assert int(await redis.get(keys.clicks_total)) == total
    minutes = await redis.hvals(keys.minutes)
    assert sum(int(v) for v in minutes) == total
    # Each click saw its own global: they were applied one after another.
    globals_seen = [r.global_count for r in results]
    assert len(set(globals_seen)) == len(plan)
    assert max(globals_seen) == total
    # Each player's acknowledgements add up, in some order, to its final count.
    for p in players:
        mine = sorted(r.user for (q, _), r in zip(plan, results, strict=True) if q is p)
        assert mine[-1] == expected[p.display]


async def test_admin_edits_during_clicks_keep_the_invariant(counter, redis, keys) -> None:
    players = [await make_player(counter, f"q{i}") for i in range(10)]
    clicks = [counter.click(p, 3, NO_LIMIT) for p in players for _ in range(10)]
    edits = [counter.set_count(p.canon, 1000 + i) for i, p in enumerate(players[:5])]
    deletes = [counter.delete(p.canon) for p in players[8:]]
    results = await asyncio.gather(*clicks, *edits, *deletes, return_exceptions=True)
    # Clicks that raced the deletes are refused with invalid_token; nothing else fails.
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, ApiError) and result.code == "invalid_token", result
    total, board = await consistent_read(redis, keys)
    assert total == sum(board.values())
    assert set(board) == {p.display for p in players[:8]}
    for i, p in enumerate(players[:5]):
        assert board[p.display] >= 1000 + i
    state = await counter.state()
    assert state.global_count == total and state.users == 8


# -- range of counts -----------------------------------------------------------------------

MAX_COUNT = 2**53 - 1


async def test_click_acks_and_milestones_stay_exact_past_2_pow_53(counter, redis, keys) -> None:
    # A deployment whose global count already passed 2^53 (two users at the limit
    # or close): the ack must be Redis's exact integer, not a Lua double.
    ann = await make_player(counter, "Ann")
    for name, count in (("Big", MAX_COUNT), ("Huge", 10**16 - 1 - MAX_COUNT)):
        await make_player(counter, name)
        await redis.zadd(keys.board, {name: count})
    await redis.set(keys.global_count, 10**16 - 1)
    await redis.set(keys.milestone_global, 10**15)

    first = await counter.click(ann, 1, NO_LIMIT)
    assert (first.user, first.global_count, first.global_milestone) == (1, 10**16, 10**16)
    second = await counter.click(ann, 3, NO_LIMIT)
    assert (second.global_count, second.global_milestone) == (10**16 + 3, 0)
    assert int(await redis.get(keys.global_count)) == 10**16 + 3
    assert int(await redis.get(keys.milestone_global)) == 10**16
    total, board = await consistent_read(redis, keys)
    assert total == sum(board.values()) == 10**16 + 3


async def test_a_click_past_the_largest_count_is_refused(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", MAX_COUNT - 2)
    assert (await counter.click(ann, 2, NO_LIMIT)).user == MAX_COUNT
    error = await refused(counter.click(ann, 1, NO_LIMIT))
    assert (error.status, error.code) == (422, "count_limit")
    total, board = await consistent_read(redis, keys)
    assert (total, board) == (MAX_COUNT, {"Ann": MAX_COUNT})


async def test_an_admin_edit_past_the_largest_global_is_refused(counter, redis, keys) -> None:
    await make_player(counter, "Ann")
    await make_player(counter, "Bob")
    assert (await counter.set_count("ann", MAX_COUNT - 10)).global_count == MAX_COUNT - 10
    assert (await counter.set_count("bob", 10)).global_count == MAX_COUNT
    error = await refused(counter.set_count("bob", 11))
    assert (error.status, error.code) == (422, "count_limit")
    total, board = await consistent_read(redis, keys)
    assert (total, board) == (MAX_COUNT, {"Ann": MAX_COUNT - 10, "Bob": 10})


async def test_junk_in_the_rate_log_or_milestones_does_not_break_clicks(
    counter, redis, keys
) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await redis.lpush(keys.click_rate("ann"), "junk", "12:x", "")
    await redis.set(keys.milestone_global, "not a number")
    await redis.hset(keys.milestone_personal, "ann", "[]")
    # One call carries both players: junk under Ann's keys must not fail Bob's click.
    results = await asyncio.gather(counter.click(ann, 1, 20), counter.click(bob, 2, 20))
    assert sorted(r.user for r in results) == [1, 2]
    assert max(r.global_count for r in results) == 3
    assert (await counter.click(ann, 1, 20)).user == 2


# -- rate limit -------------------------------------------------------------------------------


async def test_a_burst_gets_exactly_the_limit(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    started = time.monotonic()
    results = await asyncio.gather(
        *(counter.click(ann, 1, 20) for _ in range(35)), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    accepted = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        assert isinstance(error, ApiError) and error.status == 429 and error.code == "rate_limited"
        assert error.retry_after_s is not None and 0 < error.retry_after_s <= 1
    if elapsed < 1:
        assert len(accepted) == 20
    else:  # a very slow machine: the window slid during the burst
        assert 20 <= len(accepted) <= 20 * (int(elapsed) + 1)
    total, board = await consistent_read(redis, keys)
    assert board == {"Ann": len(accepted)} and total == len(accepted)


async def test_refused_clicks_count_nothing_and_other_players_are_unaffected(counter) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await counter.click(ann, 5, 5)
    error = await refused(counter.click(ann, 1, 5))
    assert error.code == "rate_limited"
    assert (await counter.click(bob, 5, 5)).user == 5
    state = await counter.state()
    assert state.global_count == 10
    assert dict(state.top) == {"Ann": 5, "Bob": 5}


async def test_the_window_slides_and_retry_after_is_truthful(counter) -> None:
    ann = await make_player(counter, "Ann")
    assert (await counter.click(ann, 3, 5)).user == 3
    await asyncio.sleep(0.4)
    assert (await counter.click(ann, 2, 5)).user == 5
    error = await refused(counter.click(ann, 1, 5))
    # Room comes back when the first batch (3 clicks, ~0.4 s old) leaves the window.
    assert error.retry_after_s is not None
    assert 0.2 <= error.retry_after_s <= 0.61, error.retry_after_s
    await asyncio.sleep(error.retry_after_s + 0.01)
    # Exactly the first batch's room is back: 3 fits, a 4th does not.
    assert (await counter.click(ann, 3, 5)).user == 8
    error = await refused(counter.click(ann, 1, 5))
    assert error.retry_after_s is not None and error.retry_after_s <= 1
    await asyncio.sleep(error.retry_after_s + 0.01)
    assert (await counter.click(ann, 1, 5)).user == 9


async def test_a_batch_bigger_than_the_limit_is_always_refused(counter) -> None:
    ann = await make_player(counter, "Ann")
    error = await refused(counter.click(ann, 21, 20))
    assert error.status == 429 and error.code == "rate_limited"
    assert error.retry_after_s == 1
    assert "20" in error.detail
    assert (await counter.state()).global_count == 0
    assert (await counter.click(ann, 20, 20)).user == 20


# -- identity ----------------------------------------------------------------------------------


async def test_concurrent_joins_of_one_name_in_different_cases(counter, redis, keys) -> None:
    spellings = ["Ann", "ANN", "ann", "aNN", "AnN", "anN", "\uff41\uff4e\uff4e", "ANn"] * 3
    results = await asyncio.gather(
        *(counter.join(s, canonical(s), f"10.0.0.{i}", NO_LIMIT) for i, s in enumerate(spellings)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if not isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(e, ApiError) and e.status == 409 for e in losers), losers
    assert await redis.hlen(keys.names) == 1
    assert await redis.zcard(keys.board) == 1
    assert await redis.zcard(keys.lex) == 1
    assert (await redis.hget(keys.nonces, "ann")).decode() == winners[0]


async def test_join_rate_limit_per_address(counter) -> None:
    for i in range(3):
        await counter.join(f"p{i}", f"p{i}", "10.1.1.1", 3)
    error = await refused(counter.join("p3", "p3", "10.1.1.1", 3))
    assert error.status == 429 and error.code == "rate_limited"
    assert error.retry_after_s is not None and 1 <= error.retry_after_s <= 60
    # Another address is not limited by the first one's joins.
    await counter.join("p4", "p4", "10.1.1.2", 3)
    assert (await counter.state()).users == 4


async def test_nonce_is_live_semantics(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    assert await counter.nonce_is_live(ann)
    stale = Player(ann.display, ann.canon, "0" * 16)
    assert not await counter.nonce_is_live(stale)
    ghost = Player("Ghost", "ghost", "0" * 16)
    assert not await counter.nonce_is_live(ghost), "unknown user while Redis is authoritative"

    await counter.delete(ann.canon)
    assert not await counter.nonce_is_live(ann), "a deleted user's token is dead"
    assert (await redis.hget(keys.tombstones, ann.nonce)).decode() == "ann"

    # Redis lost its data (no epoch): a validly signed token is trusted provisionally...
    await redis.delete(keys.epoch)
    assert await counter.nonce_is_live(ghost)
    # ...but not when Redis still knows the name under another nonce.
    bob = await _player_without_epoch(counter, redis, keys, "Bob")
    assert not await counter.nonce_is_live(Player("Bob", "bob", "1" * 16))
    assert await counter.nonce_is_live(bob)


async def _player_without_epoch(counter: Counter, redis: Any, keys: Keys, name: str) -> Player:
    player = Player(name, canonical(name), "f" * 16)
    await redis.hset(keys.nonces, player.canon, player.nonce)
    return player


async def test_provisional_clicks_while_restore_is_pending(counter, redis, keys) -> None:
    await redis.delete(keys.epoch)
    ghost = Player("Ghost", "ghost", "a" * 16)
    result = await counter.click(ghost, 4, NO_LIMIT)
    assert (result.user, result.global_count) == (4, 4)
    assert await redis.sismember(keys.provisional, "ghost")
    assert (await redis.hget(keys.nonces, "ghost")).decode() == "a" * 16
    # Once Redis knows the name, another nonce for it is refused even before the restore.
    error = await refused(counter.click(Player("Ghost", "ghost", "b" * 16), 1, NO_LIMIT))
    assert error.code == "invalid_token"
    # Joins and admin edits wait for the restore.
    for call in (
        counter.join("New", "new", "127.0.0.1", NO_LIMIT),
        counter.set_count("ghost", 1),
        counter.delete("ghost"),
    ):
        error = await refused(call)
        assert (error.status, error.code) == (503, "restoring")
    state = await counter.state()
    assert not state.restored
    assert state.global_count == 4


# -- admin -----------------------------------------------------------------------------------


async def test_set_count_and_delete_keep_the_invariant(counter, redis, keys) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    await counter.click(ann, 7, NO_LIMIT)
    await counter.click(bob, 3, NO_LIMIT)
    result = await counter.set_count("ann", 100)
    assert (result.username, result.global_count, result.nonce) == ("Ann", 103, ann.nonce)
    result = await counter.set_count("bob", 0)
    assert result.global_count == 100
    total, board = await consistent_read(redis, keys)
    assert (total, board) == (100, {"Ann": 100, "Bob": 0})

    result = await counter.delete("ann")
    assert (result.username, result.global_count, result.nonce) == ("Ann", 0, ann.nonce)
    total, board = await consistent_read(redis, keys)
    assert (total, board) == (0, {"Bob": 0})
    assert not await redis.hexists(keys.names, "ann")
    assert not await redis.hexists(keys.nonces, "ann")
    assert await redis.zscore(keys.lex, "ann") is None
    assert await redis.sismember(keys.dirty, "ann")

    for call in (counter.set_count("ann", 5), counter.delete("ann"), counter.delete("nobody")):
        error = await refused(call)
        assert (error.status, error.code) == (404, "not_found")
    # The freed name can be joined again, with a new nonce.
    again = await make_player(counter, "ANN")
    assert again.nonce != ann.nonce
    assert (await counter.click(again, 1, NO_LIMIT)).global_count == 1


# -- reads -----------------------------------------------------------------------------------


async def _board(counter: Counter, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        await make_player(counter, name)
        await counter.set_count(canonical(name), count)


async def test_leaderboard_competition_ranks(counter) -> None:
    await _board(counter, {"A": 9, "B": 7, "C": 7, "D": 7, "E": 3, "F": 3, "G": 0})
    total, entries = await counter.leaderboard(0, 50)
    assert total == 7
    assert [(e.rank, e.count) for e in entries] == [
        (1, 9),
        (2, 7),
        (2, 7),
        (2, 7),
        (5, 3),
        (5, 3),
        (7, 0),
    ]
    # Every page agrees with the whole board, wherever it starts.
    for offset in range(7):
        for limit in (1, 2, 3):
            _, page = await counter.leaderboard(offset, limit)
            assert page == entries[offset : offset + limit], (offset, limit)


async def test_user_ranks_match_the_leaderboard(counter) -> None:
    await _board(counter, {"A": 9, "B": 7, "C": 7, "D": 3})
    found = await counter.users(["c", "a", "d", "nobody", "b"])
    assert [(e.username, e.count, e.rank) for e in found] == [
        ("C", 7, 2),
        ("A", 9, 1),
        ("D", 3, 4),
        ("B", 7, 2),
    ]
    assert await counter.users([]) == []


async def test_search_by_prefix(counter) -> None:
    await _board(counter, {"Alice": 1, "alina": 2, "Albert": 3, "Bob": 4, "al": 5})
    names = [e.username for e in await counter.search("al", 10)]
    assert names == ["al", "Albert", "Alice", "alina"]
    assert [e.username for e in await counter.search("ali", 10)] == ["Alice", "alina"]
    assert [e.username for e in await counter.search("al", 2)] == ["al", "Albert"]
    assert [e.username for e in await counter.search("", 10)][-1] == "Bob"
    assert await counter.search("x", 10) == []
    entry = (await counter.search("bob", 10))[0]
    assert (entry.rank, entry.count) == (2, 4)  # "al" has 5


async def test_search_by_prefix_in_other_scripts(counter) -> None:
    await _board(counter, {"日本語": 1, "日本": 2, "Ἀθηνᾶ": 3, "zoë": 4, "zoĀ": 5})
    assert {e.username for e in await counter.search(canonical("日"), 10)} == {"日本語", "日本"}
    assert [e.username for e in await counter.search(canonical("ἈΘ"), 10)] == ["Ἀθηνᾶ"]
    assert {e.username for e in await counter.search("zo", 10)} == {"zoë", "zoĀ"}


async def test_stats_sums_minutes_into_buckets(counter, redis, keys) -> None:
    now = 1_700_000_000.0 + 30  # some instant, 30 s into a minute
    minute = int(now // 60) * 60
    # Two clicks in each of the last 30 minutes, and 5 in the current one.
    await redis.hset(keys.minutes, mapping={str(minute - 60 * i): 2 for i in range(1, 31)})
    await redis.hincrby(keys.minutes, str(minute), 5)
    # Something older than a week never shows.
    await redis.hset(keys.minutes, str(minute - 8 * 86400), 1000)

    hour = await counter.stats("hour", now=now)
    assert [p[1] for p in hour["points"]] == [0] * 29 + [2] * 30 + [5]
    assert hour["points"][-1][0] == minute

    day = await counter.stats("day", now=now)
    assert day["bucket_seconds"] == 900 and len(day["points"]) == 96
    assert sum(p[1] for p in day["points"]) == 65
    last_quarter = int(now // 900) * 900
    assert day["points"][-1][0] == last_quarter
    in_last = (minute - last_quarter) // 60  # earlier minutes of the current quarter hour
    assert day["points"][-1][1] == 5 + 2 * in_last

    week = await counter.stats("week", now=now)
    assert week["bucket_seconds"] == 3600 and len(week["points"]) == 168
    assert sum(p[1] for p in week["points"]) == 65
    assert all(b[0] - a[0] == 3600 for a, b in itertools.pairwise(week["points"]))


async def test_clicks_land_in_the_current_minute(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    before = time.time()
    await counter.click(ann, 6, NO_LIMIT)
    stats = await counter.stats("hour")
    after = time.time()
    assert sum(p[1] for p in stats["points"]) == 6
    if int(before // 60) == int(after // 60):
        assert stats["points"][-1][1] == 6


# -- presence ----------------------------------------------------------------------------------


async def test_presence_heartbeats_expire(counter) -> None:
    await counter.heartbeat("short", 5, ttl_ms=1000)
    await counter.heartbeat("long", 2, ttl_ms=60_000)
    assert (await counter.state()).online == 7

    async def only_long() -> bool:
        return (await counter.state()).online == 2

    await eventually(only_long, timeout=5)
    # A fresh beat brings an instance back, with its new count.
    await counter.heartbeat("short", 1, ttl_ms=60_000)
    assert (await counter.state()).online == 3
    await counter.leave("long")
    await counter.leave("short")
    assert (await counter.state()).online == 0


async def test_state_reads_everything_at_once(counter) -> None:
    await _board(counter, {f"u{i:02d}": i for i in range(15)})
    state = await counter.state()
    assert state.users == 15
    assert state.global_count == sum(range(15))
    assert state.top == [(f"u{i:02d}", i) for i in range(14, 4, -1)]
    assert state.restored
    assert abs(state.server_ms / 1000 - time.time()) < 5
    assert (await counter.state(top_n=3)).top == [("u14", 14), ("u13", 13), ("u12", 12)]


async def _milestones(
    counter: Counter, player: Player, n: int, times: int
) -> list[tuple[int, int]]:
    """(global, personal) milestones announced over `times` clicks of n, in order."""
    out = []
    for _ in range(times):
        result = await counter.click(player, n, NO_LIMIT)
        if result.global_milestone or result.personal_milestone:
            out.append((result.global_milestone, result.personal_milestone))
    return out


async def test_each_milestone_is_announced_once_as_it_is_crossed(counter) -> None:
    ann, bob = await make_player(counter, "Ann"), await make_player(counter, "Bob")
    assert await _milestones(counter, ann, 9, 11) == []  # 99
    assert await _milestones(counter, ann, 1, 2) == [(0, 100)]  # exactly at 100, then 101
    assert await _milestones(counter, bob, 50, 17) == [(0, 100)]  # global 101 + 850
    assert await _milestones(counter, bob, 50, 1) == [(1000, 0)]  # global 1001 crosses 1,000
    assert await _milestones(counter, bob, 50, 1) == []


async def test_a_count_that_drops_and_climbs_again_is_quiet(counter) -> None:
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", 999)
    assert await _milestones(counter, ann, 1, 1) == [(1000, 1000)]
    await counter.set_count("ann", 10)  # an admin edit: global and personal drop
    assert await _milestones(counter, ann, 50, 21) == [], "100 and 1,000 were announced before"


async def test_concurrent_clicks_announce_a_milestone_once(counter) -> None:
    players = [await make_player(counter, f"C{i}") for i in range(10)]
    results = await asyncio.gather(*(counter.click(p, 50, NO_LIMIT) for p in players * 3))
    assert [r.global_milestone for r in results if r.global_milestone] == [1000]
    assert sum(r.global_count >= 1000 for r in results) >= 1


async def test_no_milestone_while_a_restore_is_pending(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    await counter.set_count("ann", 995)
    await redis.delete(keys.epoch)  # Redis lost data; the count is partial until restored
    assert await _milestones(counter, ann, 5, 3) == []
    await redis.set(keys.epoch, "restored")
    # The first click after the restore announces what was reached meanwhile, once.
    assert await _milestones(counter, ann, 1, 3) == [(1000, 1000)]


async def test_a_delete_for_one_token_spares_the_next_holder_of_the_name(counter) -> None:
    first = await make_player(counter, "Ann")
    await counter.delete("ann")
    second = await make_player(counter, "Ann")
    with pytest.raises(ApiError) as missing:
        await counter.delete("ann", first.nonce)
    assert missing.value.status == 404
    assert await counter.nonce_is_live(second)
    assert (await counter.delete("ann", second.nonce)).nonce == second.nonce
