"""Idempotent clicks: a batch sent again with its id counts once and gets the first answer,
on the data model and over both transports, on any instance, across an instance restart
and a Redis crash (restarted on its append-only file); another n for the same id is 422."""

from __future__ import annotations

import asyncio

import pytest

from service.connection import connect_redis
from service.counter import Counter
from service.errors import ApiError
from service.keys import Keys
from service.shards import Shards
from tests.support import Player, RedisServer, join, make_player

NO_LIMIT = 10_000


def _headers(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


async def test_a_repeated_id_counts_once_with_the_first_answer(
    counter, redis, keys, redis_url
) -> None:
    ann = await make_player(counter, "Ann")
    bob = await make_player(counter, "Bob")
    first = await counter.click(ann, 3, NO_LIMIT, click_id="b-1")
    await counter.click(bob, 5, NO_LIMIT)  # the world moves on
    # Another instance: a counter of its own, on a connection of its own.
    other_redis = connect_redis(redis_url)
    try:
        again = await Counter(other_redis, Shards(keys.prefix)).click(
            ann, 3, NO_LIMIT, click_id="b-1"
        )
    finally:
        await other_redis.aclose()
    assert (again.user, again.global_count, again.rank) == (3, 3, 1)
    assert (first.user, first.global_count) == (3, 3) and again.repeated and not first.repeated
    assert int(await redis.get(keys.global_count)) == 8
    # The same id from another player is another batch.
    other_player = await counter.click(bob, 1, NO_LIMIT, click_id="b-1")
    assert other_player.user == 6 and not other_player.repeated
    with pytest.raises(ApiError) as info:
        await counter.click(ann, 2, NO_LIMIT, click_id="b-1")
    assert (info.value.status, info.value.code) == (422, "idempotency_mismatch")
    assert int(await redis.get(keys.global_count)) == 9
    ttl_ms = await redis.pttl(keys.idempotency("ann", "b-1"))
    assert ttl_ms > 10 * 60 * 1000, "the contract promises at least 10 minutes"


async def test_repeats_within_one_call_count_once(counter, redis, keys) -> None:
    ann = await make_player(counter, "Ann")
    results = await asyncio.gather(
        *(counter.click(ann, 2, NO_LIMIT, click_id="same") for _ in range(3))
    )
    assert [r.user for r in results] == [2, 2, 2]
    assert int(await redis.get(keys.global_count)) == 2


async def test_repeats_over_both_transports_on_another_instance_and_after_a_restart(
    serve, counter
) -> None:
    first, second = await serve(), await serve()
    async with first.client() as a, second.client() as b:
        token = await join(a, "Cy")
        sent = await a.post("/api/click", headers=_headers(token, '"h-1"'), json={"n": 4})
        assert sent.status_code == 200, sent.text
        repeat = await b.post("/api/click", headers=_headers(token, "h-1"), json={"n": 4})
        assert repeat.status_code == 200 and repeat.json() == sent.json()
        mismatch = await b.post("/api/click", headers=_headers(token, "h-1"), json={"n": 5})
        assert mismatch.status_code == 422
        assert mismatch.json()["error"] == "idempotency_mismatch"
        bad = await b.post("/api/click", headers=_headers(token, "no spaces"), json={"n": 1})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_id"

        on_a, on_b = Player(first.url, token), Player(second.url, token)
        await on_a.connect()
        await on_b.connect()
        try:
            ack = await on_a.sio.call("click", {"n": 2, "id": "s-1"}, timeout=10)
            assert ack == {"user": 6, "global": 6, "rank": 1}
            assert await on_b.sio.call("click", {"n": 2, "id": "s-1"}, timeout=10) == ack
            mismatched = await on_b.sio.call("click", {"n": 1, "id": "s-1"}, timeout=10)
            assert mismatched["error"] == "idempotency_mismatch"
            invalid = await on_b.sio.call("click", {"n": 1, "id": "x" * 65}, timeout=10)
            assert invalid["error"] == "invalid_id"
        finally:
            await on_a.close()
            await on_b.close()

        await first.stop()
        third = await serve()
        async with third.client() as c:
            after_restart = await c.post(
                "/api/click", headers=_headers(token, "h-1"), json={"n": 4}
            )
            assert after_restart.json() == sent.json()
            state = (await c.get("/api/state")).json()
    assert state["global"] == 6, "a repeated batch was counted twice"


async def test_a_repeat_after_a_redis_crash_counts_once(tmp_path) -> None:
    """Redis killed (-9) and restarted on its append-only file: the ids survive with the counts."""
    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    keys = Keys("idem:")
    try:
        redis = connect_redis(server.url)
        counter = Counter(redis, Shards(keys.prefix))
        await counter.mark_fresh()
        ann = await make_player(counter, "Ann")
        first = await counter.click(ann, 3, NO_LIMIT, click_id="crash-1")
        await redis.aclose()
        server.kill()
        server.start()
        redis = connect_redis(server.url)
        try:
            again = await Counter(redis, Shards(keys.prefix)).click(
                ann, 3, NO_LIMIT, click_id="crash-1"
            )
            assert again.repeated and again.user == first.user == 3
            assert int(await redis.get(keys.global_count)) == 3
        finally:
            await redis.aclose()
    finally:
        server.stop()


@pytest.mark.parametrize("bad", [123, "", "a" * 65, "dé", ["x"], {"id": "x"}, "a b", "a:b"])
async def test_a_bad_id_is_refused_and_counts_nothing(server, client, bad) -> None:
    token = await join(client, "Dee")
    player = await Player(server.url, token).connect()
    try:
        ack = await player.sio.call("click", {"n": 1, "id": bad}, timeout=10)
        assert ack["error"] == "invalid_id", ack
    finally:
        await player.close()
    if isinstance(bad, str) and bad.isascii():
        response = await client.post("/api/click", headers=_headers(token, bad), json={"n": 1})
        assert response.status_code == 422 and response.json()["error"] == "invalid_id"
    assert (await client.get("/api/state")).json()["global"] == 0
