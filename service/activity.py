"""The live activity feed: notable events, kept in a capped Redis stream and sent to admins.

Joins, global milestones, admin actions, blocked logins (the instances) and restores,
lease takeovers and failed snapshots (the worker) are appended to one stream, then
sent as the Socket.IO event `activity` to the admin room on every instance (over the
bus's pub/sub channel). Players and spectators are never in that room. The stream is
the history the dashboard pages back through; it is capped, and a Redis loss empties
it (the durable record of admin actions is the audit log in SQL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from service.admin import ADMIN_ROOM
from service.bus import encode_message
from service.connection import REDIS_ERRORS
from service.counter import as_text, load_script
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

Deliver = Callable[[str, Any, str | None], Awaitable[None]]
# Stands for the stream id in the message until the script knows it (JSON-escaped once).
_ID_MARK = "\x00id\x00"


class Feed:
    """Append an event to the history and send it to every admin connection.

    `host_id` is the bus's host stamp; an instance passes its own and its local
    `deliver`, since its listener skips its own messages. The worker passes neither
    deliver nor a Bus: every instance delivers what it publishes.
    """

    def __init__(
        self, redis: Redis, keys: Keys, host_id: str, deliver: Deliver | None = None
    ) -> None:
        self.redis = redis
        self.key = keys.activity
        self.channel = keys.events
        self.host_id = host_id
        self.deliver = deliver
        self._add = load_script(redis, "feed_add")
        self._posting: set[asyncio.Task[Any]] = set()

    def post(self, kind: str, **data: Any) -> None:
        """Add an event without waiting: a join or a click need not wait for the admins."""
        task = asyncio.create_task(self.add(kind, **data))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Wait (bounded) for posted events at shutdown."""
        if self._posting:
            await asyncio.wait(set(self._posting), timeout=timeout_s)

    async def add(self, kind: str, **data: Any) -> dict[str, Any] | None:
        """Record and send one event (one round trip); a Redis failure is logged, not raised."""
        entry: dict[str, Any] = {"kind": kind, "at_ms": int(time.time() * 1000), **data}
        message = encode_message(self.host_id, EVENT, {"id": _ID_MARK, **entry}, ADMIN_ROOM)
        head, tail = message.split(json.dumps(_ID_MARK)[1:-1], 1)
        try:
            entry_id = as_text(
                await self._add(
                    keys=[self.key],
                    args=[MAX_ENTRIES, _compact(entry), self.channel, head, tail],
                )
            )
            entry = {"id": entry_id, **entry}
            if self.deliver is not None:
                await self.deliver(EVENT, entry, ADMIN_ROOM)
        except REDIS_ERRORS as exc:
            log.warning("could not add a %s event to the activity feed: %s", kind, exc)
            return None
        except Exception:
            log.exception("could not send a %s event to the admins", kind)
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


def _compact(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"))
