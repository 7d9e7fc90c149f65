"""The live activity feed: notable events, kept in a capped Redis stream and sent to admins.

Joins, global milestones, admin actions, blocked logins (the instances) and restores,
lease takeovers and failed snapshots (the worker) are appended to one stream, then
sent as the Socket.IO event `activity` to the admin room on every instance (over the
bus's pub/sub channel). Players and spectators are never in that room. The stream is
the history the dashboard pages back through; it is capped, and a Redis loss empties
it (the durable record of admin actions is the audit log in SQL).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.admin import ADMIN_ROOM
from service.bus import encode_message
from service.counter import as_text
from service.keys import Keys

log = logging.getLogger(__name__)

EVENT = "activity"
# Roughly this many entries are kept (XADD MAXLEN ~ trims whole nodes, cheaply).
MAX_ENTRIES = 5000
KINDS = (
    "join",
    "milestone",
    "admin",
    "login_blocked",
    "restore",
    "lease",
    "snapshot_failed",
)

Publish = Callable[[str, Any, str | None], Awaitable[None]]


def relay(redis: Redis, channel: str, host_id: str) -> Publish:
    """A publisher for processes without a Bus (the worker): every instance delivers it."""

    async def publish(event: str, data: Any, room: str | None) -> None:
        await redis.publish(channel, encode_message(host_id, event, data, room))

    return publish


class Feed:
    """Append an event to the history and send it to every admin connection."""

    def __init__(self, redis: Redis, keys: Keys, publish: Publish) -> None:
        self.redis = redis
        self.key = keys.activity
        self.publish = publish

    async def add(self, kind: str, **data: Any) -> dict[str, Any] | None:
        """Record and send one event; a Redis failure is logged, never raised."""
        entry: dict[str, Any] = {"kind": kind, "at_ms": int(time.time() * 1000), **data}
        try:
            entry_id = await self.redis.xadd(
                self.key,
                {"e": json.dumps(entry, separators=(",", ":"))},
                maxlen=MAX_ENTRIES,
                approximate=True,
            )
            entry = {"id": as_text(entry_id), **entry}
            await self.publish(EVENT, entry, ADMIN_ROOM)
        except RedisError as exc:
            log.warning("could not add a %s event to the activity feed: %s", kind, exc)
            return None
        return entry

    async def page(self, limit: int, before: str | None = None) -> list[dict[str, Any]]:
        """Newest first: up to `limit` entries older than the stream id `before`."""
        high = f"({before}" if before else "+"
        rows = await self.redis.xrevrange(self.key, max=high, min="-", count=limit) or []
        entries = []
        for entry_id, fields in rows:
            try:
                body = json.loads((fields or {}).get(b"e") or b"")
            except (TypeError, ValueError):
                continue  # not ours: the stream holds only JSON entries
            entries.append({"id": as_text(entry_id), **body})
        return entries
