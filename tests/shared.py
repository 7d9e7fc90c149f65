"""One in-process instance shared by a module's read-only and refusal tests.

Starting an instance costs a few hundred milliseconds; a hundred table-driven
cases that only send a request and check that nothing changed do not each need
their own. Tests that use it run in the module's event loop (`shared_loop`),
create players with unique names, and compare the counts before and after.
Tests that need an empty board or special settings keep the per-test `server`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.connection import connect_redis
from service.settings import Settings
from tests.conftest import IDLE_LOOP_MAX_WAIT_MS, TEST_SECRET, Server

shared_loop = pytest.mark.asyncio(loop_scope="module")


@contextlib.asynccontextmanager
async def shared_server(redis_url: str, directory: Path, **overrides: Any) -> AsyncIterator[Server]:
    """An instance on a key prefix of its own, deleted when the module is done."""
    prefix = f"t-{uuid.uuid4().hex[:12]}:"
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "database_url": f"sqlite:///{directory / 'clickky.db'}",
        "secret_key": TEST_SECRET,
        "admin_token": "admin-test-token-0123456789abcdef",
        "join_rate_per_min": 100_000,
        "log_format": "text",
        "log_level": "WARNING",
        "max_wait_ms": IDLE_LOOP_MAX_WAIT_MS,
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.validate()
    server = await Server(settings).start()
    try:
        yield server
    finally:
        await server.stop()
        redis = connect_redis(redis_url)
        try:
            keys = [k async for k in redis.scan_iter(match=prefix + "*", count=1000)]
            for start in range(0, len(keys), 500):
                await redis.delete(*keys[start : start + 500])
        finally:
            await redis.aclose()


def unique(stem: str = "p") -> str:
    """A player name no other test of the module uses."""
    return f"{stem}{uuid.uuid4().hex[:10]}"
