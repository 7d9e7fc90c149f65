"""Presence: connection counts under heartbeats that expire, on the real counter."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from service.counter import Counter
from service.presence import Presence
from tests.support import Player, eventually


async def online(counter: Counter) -> int:
    return (await counter.state()).online


# A TTL of 1 s: each step waits at most a beat (0.2 s), and the beat outlives the read after it.
async def test_step_publishes_this_instances_connections(counter: Counter) -> None:
    presence = Presence(counter, "inst-a", ttl_s=1)
    for _ in range(3):
        presence.connected()
    await presence.step()
    assert await online(counter) == 3
    presence.disconnected()
    await presence.step()
    assert await online(counter) == 2


async def test_instances_add_up(counter: Counter) -> None:
    a, b = Presence(counter, "inst-a", ttl_s=1), Presence(counter, "inst-b", ttl_s=1)
    a.connected()
    for _ in range(4):
        b.connected()
    await a.step()
    await b.step()
    assert await online(counter) == 5
    await a.leave()
    assert await online(counter) == 4


async def test_more_disconnects_than_connects_never_go_negative(counter: Counter) -> None:
    presence = Presence(counter, "inst-a", ttl_s=1)
    presence.connected()
    presence.disconnected()
    presence.disconnected()
    assert presence.connections == 0
    await presence.step()
    assert await online(counter) == 0


async def test_a_silent_instance_expires(counter: Counter) -> None:
    """As after SIGKILL: nobody calls leave(), the heartbeat just stops."""
    dead = Presence(counter, "killed", ttl_s=0.5)
    for _ in range(3):
        dead.connected()
    await counter.heartbeat("alive", 1, ttl_ms=30_000)
    await dead.step()
    assert await online(counter) in (4, 1)  # 4 unless this machine took 0.5 s to get here

    async def only_alive() -> bool:
        return await online(counter) == 1

    await eventually(only_alive, timeout=5)


async def test_step_returns_early_on_a_change(counter: Counter) -> None:
    presence = Presence(counter, "inst-a", ttl_s=10)  # a beat every 2 s
    step = asyncio.create_task(presence.step())
    await asyncio.sleep(0.05)  # let it write its beat and start waiting
    started = time.monotonic()
    presence.connected()
    await asyncio.wait_for(step, timeout=1.5)
    assert time.monotonic() - started < 1.5, "a change must not wait for the next beat"
    step = asyncio.create_task(presence.step())
    try:

        async def reported() -> bool:
            return await online(counter) == 1

        await eventually(reported, timeout=1.5)
    finally:
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step


async def test_a_stopping_instance_leaves_at_once(serve, counter: Counter) -> None:
    server = await serve(presence_ttl_s=30)
    players = [await Player(server.url).connect() for _ in range(2)]
    try:
        await eventually(lambda: players[0].states and players[0].last["online"] == 2, timeout=5)
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/api/state")).json()["online"] == 2
    finally:
        for player in players:
            await player.close()
    await server.stop()
    # Long before the 30 s TTL: the lifespan removed this instance's heartbeat.
    assert await online(counter) == 0
