"""Cross-instance events over Redis pub/sub, and the listener's health, on real Redis servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.bus import Bus
from service.connection import connect_redis
from service.loops import Loop
from tests.support import RedisServer, eventually


class Inbox:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any, str | None]] = []

    async def __call__(self, event: str, data: Any, room: str | None) -> None:
        self.items.append((event, data, room))


@contextlib.asynccontextmanager
async def running(bus: Bus) -> AsyncIterator[Loop]:
    """The listener as the app runs it: a supervised loop that retries quickly here."""
    loop = Loop("pubsub", bus.listen, first_backoff_s=0.1, max_backoff_s=0.5)
    loop.start()
    try:
        yield loop
    finally:
        await loop.stop()


def make_bus(redis: Any, channel: str, host: str) -> tuple[Bus, Inbox]:
    inbox = Inbox()
    return Bus(redis, channel, host, inbox, ping_interval_s=0.2), inbox


async def test_two_buses_deliver_to_each_other_and_skip_their_own(redis, keys) -> None:
    a, inbox_a = make_bus(redis, keys.events, "host-a")
    b, inbox_b = make_bus(redis, keys.events, "host-b")
    async with running(a), running(b):
        await eventually(lambda: a.healthy and b.healthy, timeout=5)
        await a.publish("you", {"count": 42}, room="player:ann:n1")
        await b.publish("state", {"global": 1})
        await eventually(lambda: len(inbox_a.items) == 2 and len(inbox_b.items) == 2, timeout=5)
        # A's own event was delivered locally (first), B's came over Redis; no duplicates.
        assert inbox_a.items == [
            ("you", {"count": 42}, "player:ann:n1"),
            ("state", {"global": 1}, None),
        ]
        assert sorted(map(repr, inbox_b.items)) == sorted(map(repr, inbox_a.items))
        # Pings are not events.
        assert all(event in ("you", "state") for event, _, _ in inbox_a.items + inbox_b.items)


async def test_buses_on_other_channels_hear_nothing(redis, keys) -> None:
    a, _ = make_bus(redis, keys.events, "host-a")
    other, inbox = make_bus(redis, keys.events + ":other", "host-b")
    async with running(a), running(other):
        await eventually(lambda: a.healthy and other.healthy, timeout=5)
        await a.publish("you", {"count": 1})
        # A marker on the other channel, published after: once it arrives, the first would have.
        marker, _ = make_bus(redis, keys.events + ":other", "host-c")
        await marker.publish("marker", None)
        await eventually(lambda: inbox.items, timeout=5)
        assert inbox.items == [("marker", None, None)]


async def test_malformed_messages_are_ignored(redis, keys) -> None:
    a, inbox = make_bus(redis, keys.events, "host-a")
    async with running(a) as loop:
        await eventually(lambda: a.healthy, timeout=5)
        await redis.publish(keys.events, b"\xff not json")
        await redis.publish(keys.events, b'{"host": "x"}')
        await redis.publish(keys.events, b'{"host": "x", "event": "you", "data": 1}')
        await eventually(lambda: inbox.items, timeout=5)
        assert inbox.items == [("you", 1, None)]
        assert loop.running and a.healthy


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


async def test_health_follows_the_listeners_redis(private_redis: RedisServer) -> None:
    redis = connect_redis(private_redis.url)
    a, inbox_a = make_bus(redis, "t:events", "host-a")
    restarted: RedisServer | None = None
    try:
        async with running(a) as loop:
            await eventually(lambda: a.healthy, timeout=5)
            private_redis.kill()
            await eventually(lambda: not a.healthy, timeout=5)
            assert loop.running, "the loop keeps retrying"
            # Same port, empty data: the listener resubscribes by itself.
            restarted = RedisServer(private_redis.directory, port=private_redis.port).start()
            await eventually(lambda: a.healthy, timeout=15)
            # And it delivers again: another bus on the restarted server reaches it.
            other_client = connect_redis(private_redis.url)
            try:
                b, _ = make_bus(other_client, "t:events", "host-b")
                await b.publish("you", {"count": 7})
                await eventually(lambda: ("you", {"count": 7}, None) in inbox_a.items, timeout=5)
            finally:
                await other_client.aclose()
    finally:
        await redis.aclose()
        if restarted is not None:
            restarted.kill()
