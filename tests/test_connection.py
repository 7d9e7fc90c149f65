"""Redis connections: a lost reply must never make a click count twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from service.connection import connect_redis
from service.counter import Counter, load_script
from service.keys import Keys
from service.shards import Shards
from service.tokens import Player
from tests.support import free_port


class ReplyDropper:
    """A TCP proxy to Redis that cuts the connection once, just after Redis has run a
    command that touches `marker` and before its reply reaches the client."""

    def __init__(self, marker: bytes, upstream: tuple[str, int]) -> None:
        self.marker = marker
        self.upstream = upstream
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
        redis_r, redis_w = await asyncio.open_connection(*self.upstream)
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
    # In front of the test Redis (CLICKKY_TEST_REDIS_URL), whichever host and port it is on.
    parts = urlsplit(redis_url)
    upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
    proxy = ReplyDropper(marker=(keys.prefix + "rate:").encode(), upstream=upstream)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_click_whose_reply_is_lost_is_not_sent_again(
    dropper: ReplyDropper, redis: Any, keys: Keys, redis_url: str
) -> None:
    await redis.set(keys.epoch, "test")
    # Cached first, so the command the proxy cuts is the one that runs the script (on a
    # Redis that never saw it, the first EVALSHA would only answer NOSCRIPT).
    await redis.script_load(load_script(redis, "click").script)
    await redis.hset(keys.nonces, "ann", "n1")
    await redis.hset(keys.names, "ann", "Ann")
    # Same database and credentials as the test Redis, through the proxy.
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]
    through = parts._replace(
        scheme="redis", netloc=f"{auth + '@' if auth else ''}127.0.0.1:{dropper.port}"
    )
    client = connect_redis(through.geturl())
    try:
        with pytest.raises(RedisConnectionError):
            await Counter(client, Shards(keys.prefix)).click(Player("Ann", "ann", "n1"), 1, 20)
    finally:
        await client.aclose()
    assert dropper.dropped
    # Counted once, by the call whose answer was lost; never a second time.
    assert await redis.zscore(keys.board, "Ann") == 1
    assert await redis.get(keys.global_count) == b"1"
