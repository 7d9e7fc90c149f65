"""Redis connections: a lost reply must never make a click count twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from service.connection import WriteGuard, connect_redis
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


def _write_on_a_closed_connection(url: str, how: str) -> str:
    """Under uvloop, what sending on a pooled connection raises once it was closed.

    how: "transport" (closed as a peer's reset closes it) or "disconnect" (by another task
    while this one waits to write)."""

    async def main() -> str:
        client = connect_redis(url, max_connections=1)
        try:
            await client.ping()
            pool = client.connection_pool
            conn: Any = await pool.get_connection()
            if how == "transport":
                conn._writer.transport.close()
            else:
                disconnect = asyncio.ensure_future(conn.disconnect(nowait=True))
            try:
                await conn.send_command("PING")
                return "nothing"
            except Exception as exc:  # what is raised is the finding
                return type(exc).__name__
            finally:
                if how == "disconnect":
                    await disconnect
                await pool.release(conn)
        finally:
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


@pytest.mark.parametrize("how", ["transport", "disconnect"])
def test_a_write_on_a_closed_connection_is_a_connection_error(redis_url: str, how: str) -> None:
    # uvloop raises RuntimeError on a closed transport (MagicStack/uvloop#506), and a
    # connection disconnected by another task raises AttributeError; redis-py let both
    # through, so a click got `internal` instead of `unavailable` when a Redis Cluster
    # master died.
    assert _write_on_a_closed_connection(redis_url, how) == "ConnectionError"


@pytest.mark.parametrize(
    "url",
    ["redis+cluster://127.0.0.1:1", "redis+sentinel://127.0.0.1:1/mymaster", "rediss://h:1"],
)
def test_every_kind_of_client_guards_its_writes(url: str) -> None:
    client: Any = connect_redis(url)
    if url.startswith("redis+cluster"):
        classes = [n.connection_class for n in client.nodes_manager.startup_nodes.values()]
        classes.append(client.connection_kwargs["connection_class"])
    else:
        classes = [client.connection_pool.connection_class]
    assert classes and all(issubclass(c, WriteGuard) for c in classes), classes
    if url.startswith("rediss"):
        assert "SSL" in classes[0].__name__  # the class the URL chose, guarded


def test_sentinel_addresses_take_ipv6_literals_and_the_default_port() -> None:
    client: Any = connect_redis("redis+sentinel://[::1]:26380,s2/mymaster")
    sentinels = client.connection_pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("::1", 26380), ("s2", 26379)]
