"""Socket.IO: connect as player or spectator, click with acks, state on connect, refusals."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import socketio

from tests.support import Player, eventually, join


async def test_spectator_gets_state_at_once(server, client: httpx.AsyncClient) -> None:
    await join(client, "Ann")
    spectator = await Player(server.url).connect()
    try:
        await eventually(lambda: spectator.states, timeout=2)
        first = spectator.states[0]
        assert first["users"] == 1
        assert set(first) >= {"global", "online", "cps", "users", "top", "tick"}
    finally:
        await spectator.close()


async def test_player_click_ack_and_tick(server, client: httpx.AsyncClient) -> None:
    token = await join(client, "Bea")
    player = await Player(server.url, token).connect()
    spectator = await Player(server.url).connect()
    try:
        assert await player.click(3) == {"user": 3, "global": 3, "rank": 1}
        assert await player.click(None) == {"user": 4, "global": 4, "rank": 1}
        await eventually(lambda: spectator.states and spectator.last["global"] == 4, timeout=2)
        assert spectator.last["top"] == [{"username": "Bea", "count": 4}]
        ticks = [s["tick"] for s in spectator.states]
        assert ticks == sorted(set(ticks)), "a tick was sent twice or out of order"
    finally:
        await player.close()
        await spectator.close()


async def test_spectator_cannot_click(server) -> None:
    spectator = await Player(server.url).connect()
    try:
        reply = await spectator.click(1)
        assert reply["error"] == "not_a_player"
    finally:
        await spectator.close()


@pytest.mark.parametrize("token", ["nonsense", "x" * 5000, "WyJBIiwiYiJd.forged"])
async def test_bad_token_is_refused_at_connect(server, token: str) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    errors: list = []
    sio.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(server.url, auth={"token": token}, transports=["websocket"])
    assert errors and errors[0]["message"] == "invalid_token"
    assert errors[0]["data"]["error"] == "invalid_token"
    assert "join again" in errors[0]["data"]["detail"]
    await sio.disconnect()


@pytest.mark.parametrize(
    "payload", [{"n": 0}, {"n": 51}, {"n": "3"}, {"n": True}, {"n": 2.0}, [1], "n"]
)
async def test_bad_n_changes_nothing(server, client: httpx.AsyncClient, payload) -> None:
    token = await join(client, "Cid")
    player = await Player(server.url, token).connect()
    try:
        reply = await player.sio.call("click", payload, timeout=5)
        assert reply["error"] == "invalid_n"
        state = (await client.get("/api/state")).json()
        assert state["global"] == 0
    finally:
        await player.close()


async def test_unknown_event_gets_an_error_ack(server) -> None:
    spectator = await Player(server.url).connect()
    try:
        reply = await spectator.sio.call("explode", {"x": 1}, timeout=5)
        assert reply["error"] == "unknown_event"
    finally:
        await spectator.close()


async def test_admin_edit_reaches_the_player_live(server, client: httpx.AsyncClient) -> None:
    token = await join(client, "Dee")
    player = await Player(server.url, token).connect()
    try:
        headers = {"Authorization": "Bearer admin-test-token-0123456789abcdef"}
        response = await client.put("/api/admin/users/dee", json={"count": 42}, headers=headers)
        assert response.status_code == 200
        await eventually(lambda: {"count": 42} in player.you, timeout=3)
        response = await client.delete("/api/admin/users/Dee", headers=headers)
        assert response.status_code == 200
        await eventually(lambda: {"deleted": True} in player.you, timeout=3)
        assert (await player.click(1))["error"] == "invalid_token"
    finally:
        await player.close()


async def test_online_counts_connections(server, client: httpx.AsyncClient) -> None:
    players = [await Player(server.url).connect() for _ in range(3)]
    try:
        await eventually(lambda: players[0].states and players[0].last["online"] == 3, timeout=3)
        await players[2].close()
        await eventually(lambda: players[0].last["online"] == 2, timeout=3)
    finally:
        for p in players:
            await p.close()
    await asyncio.sleep(0)
