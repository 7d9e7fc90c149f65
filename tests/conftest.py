"""Fixtures: real Redis and MariaDB, a key prefix per test, servers and processes on demand.

Tests that need Redis or MariaDB fail (never skip) when the service is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import redis as sync_redis
import uvicorn

from service.app import create_app
from service.connection import connect_redis
from service.counter import Counter
from service.keys import Keys
from service.runtime import Runtime
from service.settings import Settings
from service.shards import Shards
from tests.support import Stack, free_port

REDIS_URL = os.environ.get("CLICKKY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MYSQL = {
    "host": os.environ.get("CLICKKY_TEST_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("CLICKKY_TEST_MYSQL_PORT", "3306")),
    "user": os.environ.get("CLICKKY_TEST_MYSQL_USER", "root"),
    "password": os.environ.get("CLICKKY_TEST_MYSQL_PASSWORD", ""),
}
TEST_SECRET = "test-secret-not-for-production"
# The event loop of a test (or a module-scoped fixture) stands still while pytest runs
# sync code, which the lag probe cannot tell from a loop too busy to run: admission
# control would refuse the next requests. Tests of admission control set their own.
IDLE_LOOP_MAX_WAIT_MS = 3_600_000


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis; its absence is a failure, not a skip."""
    client = sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except sync_redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is required for this test and is down: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; everything under it is deleted afterwards."""
    value = f"t-{uuid.uuid4().hex[:12]}:"
    yield value
    client = sync_redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=value + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def make_settings(redis_url: str, prefix: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for this test: its own prefix and SQLite file, overridable per call."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "key_prefix": prefix,
            "database_url": f"sqlite:///{tmp_path / 'clickky.db'}",
            "secret_key": TEST_SECRET,
            "admin_token": "admin-test-token-0123456789abcdef",
            "join_rate_per_min": 10_000,
            "log_format": "text",
            "log_level": "WARNING",
            "max_wait_ms": IDLE_LOOP_MAX_WAIT_MS,
        }
        values.update(overrides)
        settings = Settings(**values)
        settings.validate()
        return settings

    return factory


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    client = connect_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def counter(redis: Any, keys: Keys) -> Counter:
    """A counter on this test's prefix, marked as a fresh deployment (nothing to restore)."""
    result = Counter(redis, Shards(keys.prefix))
    await result.mark_fresh()
    return result


class Server:
    """An app served by a real uvicorn on a free port, inside the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.runtime: Runtime = self.app.runtime  # type: ignore[attr-defined]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Server:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=15)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)


@pytest.fixture
async def serve(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process servers (same Redis, same prefix); all stopped at the end."""
    servers: list[Server] = []

    async def factory(**overrides: Any) -> Server:
        server = await Server(make_settings(**overrides)).start()
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        await server.stop()


@pytest.fixture
async def server(serve: Callable[..., Any], counter: Counter) -> Server:
    """One in-process instance on a fresh prefix."""
    result: Server = await serve()
    return result


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as http:
        yield http


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A MariaDB database of this test's own, dropped afterwards."""
    name = f"clickky_t_{uuid.uuid4().hex[:10]}"
    try:
        conn = pymysql.connect(**MYSQL, connect_timeout=3)  # type: ignore[arg-type]
    except pymysql.MySQLError as exc:
        pytest.fail(f"MariaDB at {MYSQL['host']}:{MYSQL['port']} is required and is down: {exc}")
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    password = f":{MYSQL['password']}" if MYSQL["password"] else ""
    yield f"mysql://{MYSQL['user']}{password}@{MYSQL['host']}:{MYSQL['port']}/{name}"
    conn = pymysql.connect(**MYSQL)  # type: ignore[arg-type]
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(params=["sqlite", "mysql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQL store URL: every store test runs on SQLite and on MariaDB alike."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("mysql_url")
    return url


@pytest.fixture
def stack(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """Real processes (instances, workers) sharing this test's prefix; stopped afterwards."""
    base_env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'clickky.db'}",
        "ADMIN_TOKEN": "admin-test-token-0123456789abcdef",
        "JOIN_RATE_PER_MIN": "100000",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
        "PYTHONDONTWRITEBYTECODE": "1",
        # These tests are about other things than overload; on a machine busy with other
        # work, admission control would rightly turn their clicks away. The overload
        # tests run their own instances with the default.
        "MAX_WAIT_MS": "10000",
    }
    result = Stack(tmp_path, base_env)
    yield result
    result.stop_all()


@pytest.fixture
def mark_fresh(redis_url: str, prefix: str) -> Callable[[], None]:
    """Declare this prefix a fresh deployment, as the worker or an instance would."""

    def run() -> None:
        with contextlib.closing(sync_redis.Redis.from_url(redis_url)) as client:
            client.set(prefix + "epoch", "test", nx=True)

    return run
