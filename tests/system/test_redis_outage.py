"""Redis going away and coming back under running instances; graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.checks import ADMIN, assert_error, assert_error_body, bearer, read_counts
from tests.support import Player, RedisServer, Stack, eventually, join, wait_until
from tests.system.service_support import start_instances

pytestmark = pytest.mark.system

# A click against a dead Redis must fail about this fast: one connect timeout (1 s) plus
# one quick retry in service/connection.py, and some slack for a busy machine.
FAIL_FAST_S = 2.5


async def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await call
    return response, time.monotonic() - started


async def _readyz(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status_code, response.json()


def _samples(text: str, name: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name)
    }


async def test_redis_stops_and_returns_empty_without_restarting_instances(
    stack: Stack, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    restarted: RedisServer | None = None
    env = {"REDIS_URL": redis.url}
    a, b = start_instances(stack, 2, env)
    http_a = httpx.AsyncClient(base_url=a.url, timeout=10)
    http_b = httpx.AsyncClient(base_url=b.url, timeout=10)
    player: Player | None = None
    try:
        token = await join(http_a, "Ann")
        player = await Player(b.url, token).connect()
        assert (await http_a.post("/api/click", json={"n": 3}, headers=bearer(token))).is_success
        assert (await player.click(2))["user"] == 5

        # -- Redis is gone ------------------------------------------------------------
        redis.kill()
        for _ in range(3):
            response, took = await _timed(
                http_a.post("/api/click", json={"n": 1}, headers=bearer(token))
            )
            assert_error(response, 503, "unavailable")
            assert response.headers["Retry-After"] == "1"
            assert took < FAIL_FAST_S, f"a click took {took:.2f}s to fail"
        started = time.monotonic()
        assert_error_body(await player.click(1), "unavailable")
        assert time.monotonic() - started < FAIL_FAST_S
        assert player.sio.connected, "a Redis outage must not drop the players' sockets"
        assert_error(await http_a.post("/api/join", json={"username": "Bob"}), 503, "unavailable")
        assert_error(await http_b.get("/api/state"), 503, "unavailable")
        assert_error(await http_b.get("/api/leaderboard"), 503, "unavailable")
        for client in (http_a, http_b):
            status, body = await _readyz(client)
            assert status == 503
            assert body["error"] == "not_ready"
            assert body["redis"].startswith("unreachable")
            assert "Redis is unreachable" in body["detail"]
            health = await client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "alive"})
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            errors = _samples(metrics.text, "clickky_redis_errors_total{")
            assert sum(errors.values()) >= 1
        # The listener notices too, and says so.
        await eventually(lambda: _pubsub_is(http_a, "down"), timeout=10)

        # -- Redis is back, empty, on the same port --------------------------------------
        restarted = RedisServer(redis.directory, port=redis.port).start()
        for client in (http_a, http_b):
            await eventually(lambda c=client: _ready(c), timeout=30)
            _, body = await _readyz(client)
            assert body["redis"] == "ok" and body["pubsub"] == "ok"
            # Redis is empty and this test never ran a worker, so nothing was snapshotted:
            # the counter waits for someone to decide between "restore" and "fresh".
            assert body["restore"] == "in_progress"

        # A signed token clicks at once (provisionally); the lost counts were never in
        # any snapshot, so the player starts again from what it clicks now.
        response = await http_b.post("/api/click", json={"n": 4}, headers=bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["user"] == 4
        assert (await player.click(1))["user"] == 5
        # Joins wait for that decision: they must not hand out a name a restore may bring back.
        assert_error(await http_a.post("/api/join", json={"username": "Bob"}), 503, "restoring")

        # The decision belongs to the worker (an instance only makes it at start-up): with
        # no snapshot in SQL, it declares a fresh deployment and Redis is authoritative.
        stack.worker(env)
        await eventually(lambda: _restore_done(http_a), timeout=30)
        bob = await join(http_a, "Bob")
        assert (await http_a.post("/api/click", json={"n": 2}, headers=bearer(bob))).is_success
        counts = await read_counts(http_b)
        assert counts.board == {"Ann": 5, "Bob": 2} and counts.global_count == 7

        # Cross-instance events flow again: an edit through A reaches the player on B.
        response = await http_a.put("/api/admin/users/ann", json={"count": 42}, headers=ADMIN)
        assert response.status_code == 200, response.text
        await eventually(lambda: {"count": 42} in player.you, timeout=5)
        # Ticks resume too.
        await eventually(lambda: player.states and player.last["global"] == 44, timeout=5)

        # Every background loop reports itself healthy again in the metrics (the presence
        # loop may still be sleeping off its backoff, at most 5 s).
        for client in (http_a, http_b):
            text = (await client.get("/metrics")).text
            assert _samples(text, "clickky_pubsub_up") == {"clickky_pubsub_up": 1.0}
            await _loops_up(client)
    finally:
        if player is not None:
            await player.close()
        await http_a.aclose()
        await http_b.aclose()
        stack.stop_all()
        redis.kill()
        if restarted is not None:
            restarted.kill()


async def _loops_up(client: httpx.AsyncClient, timeout: float = 10) -> None:
    seen: dict[str, float] = {}

    async def check() -> bool:
        seen.clear()
        seen.update(_samples((await client.get("/metrics")).text, "clickky_loop_up{"))
        return bool(seen) and all(value == 1.0 for value in seen.values())

    try:
        await eventually(check, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"a loop still reports itself down: {seen}") from None


async def _ready(client: httpx.AsyncClient) -> bool:
    status, _ = await _readyz(client)
    return status == 200


async def _pubsub_is(client: httpx.AsyncClient, value: str) -> bool:
    _, body = await _readyz(client)
    return bool(body["pubsub"] == value)


async def _restore_done(client: httpx.AsyncClient) -> bool:
    status, body = await _readyz(client)
    return status == 200 and body["restore"] == "done"


async def test_sigterm_disconnects_players_and_loses_no_acknowledged_click(stack: Stack) -> None:
    leaving, staying = start_instances(stack, 2)
    async with httpx.AsyncClient(base_url=staying.url, timeout=10) as client:
        names = [f"p{i}" for i in range(8)]
        tokens = [await join(client, name) for name in names]
        players = [await Player(leaving.url, token).connect() for token in tokens]
        acked = dict.fromkeys(names, 0)
        gone: dict[str, asyncio.Event] = {name: asyncio.Event() for name in names}
        for name, player in zip(names, players, strict=True):
            player.sio.on("disconnect", lambda *_, n=name: gone[n].set())

        async def keep_clicking(name: str, player: Player) -> None:
            # About 12 clicks a second: under the limit, so every refusal would be a failure.
            while player.sio.connected:
                try:
                    reply = await player.click(1, timeout=5)
                except Exception:  # the connection closed under this click
                    return
                assert "user" in reply, reply
                acked[name] += 1
                await asyncio.sleep(0.08)

        clicking = [
            asyncio.create_task(keep_clicking(n, p)) for n, p in zip(names, players, strict=True)
        ]
        try:
            await eventually(lambda: all(acked[n] >= 3 for n in names), timeout=10)
            leaving.proc.signal(signal.SIGTERM)
            # Every player is told to go (and can reconnect elsewhere) well before the
            # instance's 5 s graceful-shutdown timeout would cut them off.
            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(g.wait() for g in gone.values())), 10)
            assert time.monotonic() - started < 5
            await asyncio.wait_for(asyncio.gather(*clicking), 10)
        finally:
            for task in clicking:
                task.cancel()
            for player in players:
                await player.close()
        assert leaving.proc.popen is not None
        wait_until(lambda: leaving.proc.popen.poll() is not None, timeout=15)
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert leaving.proc.popen.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in leaving.proc.log()

        counts = await read_counts(client)
        for name in names:
            # An acknowledged click is never lost; at most the one in flight when the
            # connection closed was counted without its acknowledgement arriving.
            assert acked[name] <= counts.board[name] <= acked[name] + 1, (name, acked, counts)
        # The players carry on at the other instance with the same tokens.
        for name, token in zip(names, tokens, strict=True):
            again = await Player(staying.url, token).connect()
            try:
                reply = await again.click(1)
                assert reply["user"] == counts.board[name] + 1
            finally:
                await again.close()
