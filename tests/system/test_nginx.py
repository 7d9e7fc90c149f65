"""The real nginx (deploy/nginx config) in front of real instances: play through it."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
import socketio

from tests.support import Player, Stack, eventually, join
from tests.system.ops_support import instance_pid, start_nginx

pytestmark = pytest.mark.system


async def connect(player: Player, origin: str) -> Player:
    """Connect as a browser on `origin` would: websocket only, with an Origin header."""
    auth = {"token": player.token} if player.token else None
    await player.sio.connect(
        player.url,
        auth=auth,
        transports=["websocket"],
        headers={"Origin": origin},
        wait_timeout=10,
    )
    return player


def source(address: str) -> httpx.AsyncHTTPTransport:
    """Connect from another loopback address, as a different client would."""
    return httpx.AsyncHTTPTransport(local_address=address)


async def test_players_and_spectators_play_through_nginx(stack: Stack) -> None:
    instances = [stack.instance(), stack.instance()]
    _, url = start_nginx(stack, [i.port for i in instances])
    players: list[Player] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        served_by = set()
        for _ in range(20):
            response = await http.get("/readyz")
            assert response.status_code == 200, response.text
            served_by.add(response.json()["instance"])
            if len(served_by) == 2:
                break
        assert len(served_by) == 2, "nginx should spread requests over both instances"

        token = await join(http, "Alice")
        response = await http.post(
            "/api/click", json={"n": 3}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text
        assert (response.json()["user"], response.json()["global"]) == (3, 3)

        try:
            # Socket.IO through nginx: the websocket upgrade, and the Origin check that
            # needs nginx to pass the Host header with its port.
            spectator = await connect(Player(url), origin=url)
            player = await connect(Player(url, token), origin=url)
            players += [spectator, player]
            await eventually(lambda: spectator.states, timeout=10)
            ack = await player.click(4)
            assert (ack["user"], ack["global"]) == (7, 7), ack
            await eventually(lambda: spectator.last["global"] == 7, timeout=10)

            response = await http.post(
                "/api/click", json={"n": 2}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.json()["global"] == 9
            await eventually(lambda: spectator.last["global"] == 9, timeout=10)
            await eventually(lambda: spectator.last["online"] == 2, timeout=10)
            ticks = [state["tick"] for state in spectator.states[1:]]
            assert ticks == sorted(set(ticks)), "a tick arrived twice or out of order"

            stranger = Player(url)
            players.append(stranger)
            with pytest.raises(socketio.exceptions.ConnectionError):
                await connect(stranger, origin="http://elsewhere.example")
        finally:
            await asyncio.gather(*(p.close() for p in players))

        state = (await http.get("/api/state")).json()
        assert state["global"] == 9
        assert state["top"] == [{"username": "Alice", "count": 9}]


async def test_nginx_limits_join_floods(stack: Stack) -> None:
    # The service's own limit is out of reach here (the fixture sets it to 100000/min),
    # so every 429 comes from nginx's limit_req.
    instances = [stack.instance(), stack.instance()]
    _, url = start_nginx(stack, [i.port for i in instances])
    async with httpx.AsyncClient(base_url=url, timeout=10, transport=source("127.0.0.4")) as http:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(http.post("/api/join", json={"username": f"flood{i}"}) for i in range(80))
        )
        elapsed = time.monotonic() - started
        codes = [r.status_code for r in responses]
        limited = [r for r in responses if r.status_code == 429]
        assert set(codes) == {201, 429}, codes
        # A burst of 30, then one per second while the 80 requests went through.
        assert 30 <= codes.count(201) <= 31 + elapsed, (codes, elapsed)
        assert limited[0].json()["error"] == "rate_limited"
        assert limited[0].headers["retry-after"] == "1"
        assert limited[0].headers["content-type"].startswith("application/json")
        # A refused join reserved nothing.
        state = (await http.get("/api/state")).json()
        assert state["users"] == codes.count(201)


async def test_service_join_limit_sees_the_forwarded_address(stack: Stack) -> None:
    # nginx connects to the instances from 127.0.0.1, which uvicorn trusts for
    # X-Forwarded-For: each client address gets its own JOIN_RATE_PER_MIN.
    instances = [stack.instance({"JOIN_RATE_PER_MIN": "3"}) for _ in range(2)]
    _, url = start_nginx(stack, [i.port for i in instances])
    async with (
        httpx.AsyncClient(base_url=url, timeout=10, transport=source("127.0.0.2")) as first,
        httpx.AsyncClient(base_url=url, timeout=10, transport=source("127.0.0.3")) as second,
    ):
        for i in range(3):
            response = await first.post("/api/join", json={"username": f"first{i}"})
            assert response.status_code == 201, response.text
        refused = await first.post("/api/join", json={"username": "first3"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "rate_limited"
        assert "retry-after" in refused.headers
        # Another address is not affected: the service did not see everyone as nginx.
        response = await second.post("/api/join", json={"username": "second0"})
        assert response.status_code == 201, response.text
        # And a client cannot dodge the limit by sending its own X-Forwarded-For.
        spoofed = await first.post(
            "/api/join",
            json={"username": "first4"},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert spoofed.status_code == 429, spoofed.text


async def test_a_dead_instance_is_skipped(stack: Stack) -> None:
    instances = [stack.instance(), stack.instance()]
    _, url = start_nginx(stack, [i.port for i in instances])
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        token = await join(http, "Bob")
        survivor = instances[0].proc.popen
        assert survivor is not None
        instances[1].proc.signal(signal.SIGKILL)
        await eventually(lambda: not instances[1].proc.alive, timeout=10)
        # Connection refused: nginx marks the server failed and retries the next one,
        # for clicks (POST, not yet sent) as for reads.
        for i in range(1, 11):
            response = await http.post(
                "/api/click", json={"n": 1}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200, response.text
            assert response.json()["global"] == i
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert instance_pid(ready.json()["instance"]) == survivor.pid
