"""Redis connections: a lost reply must never make a click count twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.connection import connect_redis
from service.counter import Counter
from service.keys import Keys
from service.tokens import Player
from tests.support import free_port


class ReplyDropper:
    """A TCP proxy to Redis that cuts the connection once, just after Redis has run a
    command that touches `marker` and before its reply reaches the client."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.port = free_port()
        self.dropped = False
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client_r: Any, client_w: Any) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", 6379)
        armed = False

        async def upstream() -> None:
            nonlocal armed
            while data := await client_r.read(65536):
                armed = armed or (not self.dropped and self.marker in data)
                redis_w.write(data)
                await redis_w.drain()
            redis_w.close()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if armed and not self.dropped:
                    self.dropped = True
                    client_w.transport.abort()  # Redis ran it; the reply is lost
                    redis_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


@pytest.fixture
async def dropper(keys: Keys, redis_url: str) -> AsyncIterator[ReplyDropper]:
    proxy = ReplyDropper(marker=(keys.prefix + "rate:").encode())
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_click_whose_reply_is_lost_is_not_sent_again(
    dropper: ReplyDropper, redis: Any, keys: Keys
) -> None:
    await redis.set(keys.epoch, "test")
    await redis.hset(keys.nonces, "ann", "n1")
    await redis.hset(keys.names, "ann", "Ann")
    client = connect_redis(f"redis://127.0.0.1:{dropper.port}/0")
    try:
        with pytest.raises(RedisConnectionError):
            await Counter(client, keys).click(Player("Ann", "ann", "n1"), 1, 20)
    finally:
        await client.aclose()
    assert dropper.dropped
    # Counted once, by the call whose answer was lost; never a second time.
    assert await redis.zscore(keys.board, "Ann") == 1
    assert await redis.get(keys.global_count) == b"1"
