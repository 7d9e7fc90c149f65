"""What an instance needs before it can serve: the token secret, and a fresh-start check."""

from __future__ import annotations

import asyncio
import logging
import os

from redis.asyncio import Redis

from service.connection import REDIS_ERRORS
from service.counter import Counter
from service.settings import Settings
from service.shards import LayoutMismatch, Shards
from service.store import Store

log = logging.getLogger(__name__)

ATTEMPTS = 8


async def token_secret(settings: Settings, counter: Counter, store: Store) -> str:
    """SECRET_KEY, else the one kept in SQL (cached in Redis); retried a bounded number of times.

    The SQL store is the source of truth so that tokens outlive a Redis loss;
    Redis only caches it so instances can start while SQL is down.
    """
    if settings.secret_key:
        return settings.secret_key
    delay = 0.5
    for attempt in range(1, ATTEMPTS + 1):
        try:
            cached = await counter.redis.get(counter.keys.secret)
            if cached:
                return cached.decode() if isinstance(cached, bytes) else str(cached)
        except REDIS_ERRORS as exc:
            log.warning("cannot read the cached secret from Redis: %s", exc)
        try:
            secret = await asyncio.to_thread(store.secret)
        except Exception as exc:
            log.warning(
                "cannot read the token secret from %s (%s); %d attempts left",
                store.describe(),
                exc,
                ATTEMPTS - attempt,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        try:
            await counter.redis.set(counter.keys.secret, secret)
        except REDIS_ERRORS:
            pass  # the cache is an optimisation; SQL answered
        return secret
    raise RuntimeError("no token secret: set SECRET_KEY, or make Redis or the SQL store reachable")


async def check_layout(shards: Shards, redis: Redis) -> None:
    """End the process (status 2, one log line) on a Redis laid out with other shards.

    A Redis that cannot be reached is not checked: the instance starts and answers
    `unavailable` until it returns, as it would without sharding.
    """
    try:
        await shards.check_layout(redis)
    except LayoutMismatch as exc:
        # Like a bad setting: one line and exit status 2. Raising would end the lifespan
        # with the server's traceback of it instead.
        log.error("refusing to start: %s", exc)
        logging.shutdown()
        os._exit(2)
    except REDIS_ERRORS as exc:
        log.warning("shard layout not checked, Redis is unreachable: %s", exc)


async def mark_fresh_start(counter: Counter, store: Store) -> None:
    """An empty Redis with no snapshot in SQL is a new deployment, not a data loss."""
    try:
        if await counter.is_restored():
            return
        await asyncio.to_thread(store.migrate)
        if await asyncio.to_thread(store.totals) is None and await counter.mark_fresh():
            log.info("fresh deployment: no snapshot to restore, Redis is authoritative")
    except Exception as exc:
        log.warning("fresh-start check skipped (%s); the worker will decide", exc)
