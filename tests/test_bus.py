"""Cross-instance events over Redis pub/sub, and the listener's health, on real Redis servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.bus import Bus, parse
from service.connection import connect_redis
from service.junk import JUNK as JUNK_LOG
from service.junk import Junk
from service.loops import Loop
from tests.checks import ADMIN_TOKEN
from tests.support import Player, RedisServer, eventually, join

MILESTONE = {"scope": "global", "value": 1000, "username": "Ann"}


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
        await b.publish("milestone", MILESTONE)
        await eventually(lambda: len(inbox_a.items) == 2 and len(inbox_b.items) == 2, timeout=5)
        # A's own event was delivered locally (first), B's came over Redis; no duplicates.
        assert inbox_a.items == [
            ("you", {"count": 42}, "player:ann:n1"),
            ("milestone", MILESTONE, None),
        ]
        assert sorted(map(repr, inbox_b.items)) == sorted(map(repr, inbox_a.items))
        # Pings are not events.
        assert all(event in ("you", "milestone") for event, _, _ in inbox_a.items + inbox_b.items)


async def test_buses_on_other_channels_hear_nothing(redis, keys) -> None:
    a, _ = make_bus(redis, keys.events, "host-a")
    other, inbox = make_bus(redis, keys.events + ":other", "host-b")
    async with running(a), running(other):
        await eventually(lambda: a.healthy and other.healthy, timeout=5)
        await a.publish("you", {"count": 1})
        # A marker on the other channel, published after: once it arrives, the first would have.
        marker, _ = make_bus(redis, keys.events + ":other", "host-c")
        await marker.publish("milestone", MILESTONE)
        await eventually(lambda: inbox.items, timeout=5)
        assert inbox.items == [("milestone", MILESTONE, None)]


JUNK = [
    b"\xff not json",
    b"[1]",
    b"42",
    b"null",
    b'"x"',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"host": "x"}',
    b'{"host": 5, "event": "you", "data": {"count": 1}}',
    b'{"host": "x", "event": "you", "data": 1}',
    b'{"host": "x", "event": "you", "data": {"count": "1"}}',
    b'{"host": "x", "event": "you", "data": {"count": 1}, "room": 7}',
    b'{"host": "x", "event": "state", "data": {"global": 1}}',
    b'{"host": "x", "event": ["you"], "data": {"count": 1}}',
    b'{"host": "x", "ping": "soon"}',
    b'{"host": "x", "event": "milestone", "data": {"scope": "all", "value": 1, "username": "a"}}',
]


async def test_junk_is_dropped_counted_and_the_next_event_arrives(
    redis, keys, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(JUNK_LOG, "_last", {})  # a fresh rate-limit period for this test
    a, inbox = make_bus(redis, keys.events, "host-a")
    dropped = REGISTRY.get_sample_value
    before = sum(
        dropped("clickky_redis_junk_total", {"where": "pubsub", "reason": r}) or 0 for r in REASONS
    )
    async with running(a) as loop:
        await eventually(lambda: a.healthy, timeout=5)
        for junk in JUNK:
            await redis.publish(keys.events, junk)
        b, _ = make_bus(redis, keys.events, "host-b")
        await b.publish("you", {"count": 3}, room="player:ann:n1")
        await eventually(lambda: inbox.items, timeout=5)
        assert inbox.items == [("you", {"count": 3}, "player:ann:n1")]
        assert loop.running and a.healthy
    after = sum(
        dropped("clickky_redis_junk_total", {"where": "pubsub", "reason": r}) or 0 for r in REASONS
    )
    assert after - before == len(JUNK)
    # One line for the lot (rate-limited), no traceback.
    lines = [r for r in caplog.records if "junk" in r.getMessage()]
    assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)
    assert "pubsub" in lines[0].getMessage()


REASONS = (
    "not_json",
    "not_an_object",
    "no_host",
    "unknown_event",
    "bad_room",
    "bad_data",
    "bad_ping",
    "not_text",
)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[1]", "not_an_object"),
        (b"null", "not_an_object"),
        (b"[" * 100_000, "not_json"),
        (b'{"host": "x", "event": "you", "data": {"count": -1}}', "bad_data"),
        (b'{"host": "x", "event": "you", "data": {"count": true}}', "bad_data"),
        (b'{"host": "x", "ping": 1, "event": "you"}', "bad_ping"),
        (b'{"host": "", "ping": 1}', "no_host"),
    ],
)
def test_parse_says_why(raw: bytes, reason: str) -> None:
    with pytest.raises(Junk) as info:
        parse(raw)
    assert info.value.reason == reason


def test_parse_accepts_what_instances_publish() -> None:
    assert parse(b'{"host": "h", "ping": 1.5}').ping == 1.5
    message = parse(b'{"host": "h", "event": "you", "data": {"deleted": true}, "room": "r"}')
    assert (message.event, message.data, message.room) == ("you", {"deleted": True}, "r")


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


async def test_junk_between_two_instances_keeps_them_ready_and_delivering(
    serve, counter, redis, keys
) -> None:
    first, second = await serve(), await serve()
    async with first.client() as http_a, second.client() as http_b:
        token = await join(http_a, "Ann")
        player = await Player(second.url, token).connect()
        try:
            await eventually(lambda: second.runtime.bus.healthy and first.runtime.bus.healthy)
            for junk in (b"[1]", b"42", b"null", b'"x"'):
                await redis.publish(keys.events, junk)
            # An admin edit on the first instance right after the junk reaches the
            # player on the second one; neither instance stops being ready.
            response = await http_a.put(
                "/api/admin/users/Ann",
                json={"count": 5},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert response.status_code == 200
            await eventually(lambda: player.you == [{"count": 5}], timeout=5)
            for http in (http_a, http_b):
                assert (await http.get("/readyz")).status_code == 200
        finally:
            await player.close()
