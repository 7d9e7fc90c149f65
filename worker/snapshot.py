"""The snapshot job: one consistent cut of Redis into the SQL store, only what changed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from service.counter import load_script
from service.keys import Keys
from service.store import Cut, Store, UserRow

log = logging.getLogger(__name__)

# Minute buckets older than this are not re-read: a week of stats plus a margin.
HISTORY_S = 8 * 86400


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Report:
    """What one snapshot did, for logs, /readyz and /metrics."""

    rows: int
    users: int
    deleted: int
    duration_s: float
    lag_ms: int
    server_ms: int


class Snapshotter:
    """Reads the changes since the last snapshot at one instant and writes them in one commit."""

    def __init__(self, redis: Redis, keys: Keys, store: Store) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self._take_cut = load_script(redis, "take_cut")
        # The first snapshot of this process re-reads the whole stats history;
        # later ones only the minutes since the previous cut.
        self._since_ms: int | None = None
        # Minute buckets as last written, so an idle minute is not rewritten every time.
        self._written_minutes: dict[int, int] = {}

    async def read_cut(self) -> Cut | None:
        """The cut, or None while a restore is pending (Redis is not the truth yet)."""
        k = self.keys
        now = int(time.time())
        since_ms = self._since_ms
        first = (since_ms // 1000 if since_ms else now - HISTORY_S) // 60 * 60 - 60
        last = now // 60 * 60 + 60
        reply = await self._take_cut(
            keys=[
                k.epoch,
                k.dirty,
                k.dirty_inflight,
                k.nonces,
                k.names,
                k.board,
                k.global_count,
                k.clicks_total,
                k.minutes,
                k.tombstones,
                k.tombstones_inflight,
            ],
            args=[first, last],
        )
        if _text(reply[0]) == "restoring":
            return None
        flat_users, deleted, flat_minutes, flat_tombs = reply[4], reply[5], reply[6], reply[7]
        users = [
            UserRow(
                canon=_text(flat_users[i]),
                username=_text(flat_users[i + 1]),
                nonce=_text(flat_users[i + 2]),
                count=int(float(flat_users[i + 3])),
            )
            for i in range(0, len(flat_users), 4)
        ]
        return Cut(
            global_count=int(reply[1]),
            clicks_total=int(reply[2]),
            server_ms=int(reply[3]),
            users=users,
            deleted=[_text(c) for c in deleted],
            minutes={
                int(flat_minutes[i]): int(flat_minutes[i + 1])
                for i in range(0, len(flat_minutes), 2)
            },
            tombstones=[
                (_text(flat_tombs[i]), _text(flat_tombs[i + 1]))
                for i in range(0, len(flat_tombs), 2)
            ],
        )

    async def snapshot(self, fence: int) -> Report | None:
        """Take one snapshot under this fence; None when a restore is pending."""
        started = time.monotonic()
        cut = await self.read_cut()
        if cut is None:
            return None
        cut.minutes = {
            minute: clicks
            for minute, clicks in cut.minutes.items()
            if self._written_minutes.get(minute) != clicks
        }
        rows = await asyncio.to_thread(self.store.write_snapshot, cut, fence)
        self._written_minutes.update(cut.minutes)
        horizon = cut.server_ms // 1000 - 3600
        self._written_minutes = {m: c for m, c in self._written_minutes.items() if m >= horizon}
        # Only now are the in-flight changes safely in SQL.
        await self.redis.delete(self.keys.dirty_inflight, self.keys.tombstones_inflight)
        self._since_ms = cut.server_ms
        return Report(
            rows=rows,
            users=len(cut.users),
            deleted=len(cut.deleted),
            duration_s=time.monotonic() - started,
            lag_ms=max(0, int(time.time() * 1000) - cut.server_ms),
            server_ms=cut.server_ms,
        )

    async def prune_minutes(self) -> int:
        """Drop minute buckets older than the history Redis keeps (SQL keeps them all)."""
        horizon = int(time.time()) - HISTORY_S
        old = [
            field
            async for field, _ in self.redis.hscan_iter(self.keys.minutes)
            if int(field) < horizon
        ]
        if old:
            await self.redis.hdel(self.keys.minutes, *old)
        return len(old)
