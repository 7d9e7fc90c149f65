"""The snapshot job: one consistent cut of Redis into the SQL store, only what changed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from service.breakdown import DIMENSIONS
from service.counter import Counter, as_text, load_script, utc_day
from service.errors import ApiError
from service.keys import Keys
from service.shards import Shards
from service.store import Cut, Store, UserRow

log = logging.getLogger(__name__)

# Minute buckets older than this are not re-read: a week of stats plus a margin.
HISTORY_S = 8 * 86400
# Up to this many changed users are read at one instant, in one script (~0.5 s of
# Redis at most); more would block Redis for seconds, so they are read in chunks.
MAX_INLINE_USERS = 100_000
CHUNK_USERS = 10_000


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

    def __init__(
        self, redis: Redis, keys: Keys, store: Store, *, max_inline_users: int = MAX_INLINE_USERS
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self._take_cut = load_script(redis, "take_cut")
        self._drop_cut = load_script(redis, "drop_cut")
        self._read_users = load_script(redis, "read_users")
        self._counter = Counter(redis, Shards(keys.prefix))
        self._raise_generation = redis.register_script(
            "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[1], ARGV[1]) end"
        )
        self.max_inline_users = max_inline_users
        # The first snapshot of this process re-reads the whole stats history;
        # later ones only the minutes since the previous cut.
        self._since_ms: int | None = None
        # Counters as last written, so an idle minute or value is not rewritten every time.
        self._written_minutes: dict[int, int] = {}
        self._written_breakdowns: dict[tuple[str, str, str], int] = {}

    async def read_cut(self) -> Cut | None:
        """The cut, or None while a restore is pending (Redis is not the truth yet)."""
        k = self.keys
        now = int(time.time())
        since_ms = self._since_ms
        since = since_ms // 1000 if since_ms else now - HISTORY_S
        first = since // 60 * 60 - 60
        last = now // 60 * 60 + 60
        # Every UTC day the window touches, for the breakdown counters.
        days = sorted({utc_day(t) for t in range(since - 60, now + 61, 3600)} | {utc_day(now)})
        wanted = [(day, dimension) for day in days for dimension in DIMENSIONS]
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
                k.generation,
                k.inflight_owner,
                k.milestone_global,
                k.milestone_personal,
                *(k.breakdown(dimension, day) for day, dimension in wanted),
            ],
            args=[first, last, self.max_inline_users],
        )
        outcome = as_text(reply[0])
        if outcome == "restoring":
            return None
        flat_users, deleted, flat_minutes, flat_tombs = reply[4], reply[5], reply[6], reply[7]
        breakdowns: dict[tuple[str, str, str], int] = {}
        for (day, dimension), flat in zip(wanted, reply[8], strict=True):
            for i in range(0, len(flat), 2):
                breakdowns[(day, dimension, as_text(flat[i]))] = int(flat[i + 1])
        users = [
            UserRow(
                canon=as_text(flat_users[i]),
                username=as_text(flat_users[i + 1]),
                nonce=as_text(flat_users[i + 2]),
                count=int(float(flat_users[i + 3])),
                milestone=int(flat_users[i + 4]),
            )
            for i in range(0, len(flat_users), 5)
        ]
        global_count: int | None = int(reply[1])
        if outcome == "large":
            # Too many changes to read at one instant without blocking Redis: read them
            # in chunks, and let the store take the global count as the sum of its users,
            # so the invariant still holds in SQL (though not as of a single instant).
            log.warning("large snapshot: reading the changed users in chunks")
            users, deleted = await self._read_users_in_chunks()
            global_count = None
        return Cut(
            global_count=global_count,
            clicks_total=int(reply[2]),
            server_ms=int(reply[3]),
            users=users,
            deleted=[as_text(c) for c in deleted],
            minutes={
                int(flat_minutes[i]): int(flat_minutes[i + 1])
                for i in range(0, len(flat_minutes), 2)
            },
            # The hash is nonce -> canonical name (one entry per dead token).
            tombstones=[
                (as_text(flat_tombs[i + 1]), as_text(flat_tombs[i]))
                for i in range(0, len(flat_tombs), 2)
            ],
            breakdowns=breakdowns,
            generation=int(reply[9]),
            milestone_global=int(reply[10]),
        )

    async def _read_users_in_chunks(self) -> tuple[list[UserRow], list[str]]:
        k = self.keys
        users: list[UserRow] = []
        deleted: list[str] = []
        batch: list[str] = []

        async def read(canons: list[str]) -> None:
            rows = await self._read_users(
                keys=[k.names, k.nonces, k.board, k.milestone_personal], args=canons
            )
            for canon, row in zip(canons, rows, strict=True):
                if row:
                    users.append(
                        UserRow(
                            canon, as_text(row[0]), as_text(row[1]), int(float(row[2])), int(row[3])
                        )
                    )
                else:
                    deleted.append(canon)

        async for member in self.redis.sscan_iter(k.dirty_inflight, count=CHUNK_USERS):
            batch.append(as_text(member))
            if len(batch) >= CHUNK_USERS:
                await read(batch)
                batch = []
        if batch:
            await read(batch)
        return users, deleted

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
        cut.breakdowns = {
            key: clicks
            for key, clicks in cut.breakdowns.items()
            if self._written_breakdowns.get(key) != clicks
        }
        rows = await asyncio.to_thread(self.store.write_snapshot, cut, fence)
        self._written_minutes.update(cut.minutes)
        self._written_breakdowns.update(cut.breakdowns)
        today = utc_day(cut.server_ms / 1000)
        self._written_breakdowns = {
            key: c for key, c in self._written_breakdowns.items() if key[0] >= today
        }
        horizon = cut.server_ms // 1000 - 3600
        self._written_minutes = {m: c for m, c in self._written_minutes.items() if m >= horizon}
        # Only now are the in-flight changes safely in SQL; unless a later cut (a
        # successor's, while we were paused) took them over and has yet to commit.
        k = self.keys
        await self._drop_cut(
            keys=[k.inflight_owner, k.dirty_inflight, k.tombstones_inflight],
            args=[cut.generation],
        )
        self._since_ms = cut.server_ms
        return Report(
            rows=rows,
            users=len(cut.users),
            deleted=len(cut.deleted),
            duration_s=time.monotonic() - started,
            lag_ms=max(0, int(time.time() * 1000) - cut.server_ms),
            server_ms=cut.server_ms,
        )

    async def reconcile(self, stored_generation: int) -> int:
        """Prepare a full snapshot after Redis went back in time (a lagging replica).

        SQL then holds changes this Redis never saw, so writing only what changed would
        break global == sum(users) there. Every name Redis has and every user SQL has is
        marked changed (SQL users Redis lacks are then deleted), the whole stats history
        is re-read, and the generation moves past SQL's. Users whose deletion SQL had
        recorded (their token's tombstone) are deleted again. Otherwise Redis is the
        truth from here on: what the replica missed is lost, as it already is for the
        players. Returns the number of names marked.
        """
        k = self.keys
        marked = 0
        batch: list[str] = []

        async def mark(force: bool = False) -> None:
            nonlocal batch, marked
            if batch and (force or len(batch) >= CHUNK_USERS):
                await self.redis.sadd(k.dirty, *batch)
                marked += len(batch)
                batch = []

        live: dict[str, str] = {}
        async for canon, nonce in self.redis.hscan_iter(k.nonces, count=CHUNK_USERS):
            live[as_text(canon)] = as_text(nonce)
            batch.append(as_text(canon))
            if len(live) >= CHUNK_USERS:
                await self._delete_dead(live)
            await mark()
        await self._delete_dead(live)
        cursor = ""
        while rows := await asyncio.to_thread(self.store.users_after, cursor, CHUNK_USERS):
            batch += [row.canon for row in rows]
            cursor = rows[-1].canon
            await mark()
        await mark(force=True)
        await self._raise_generation(keys=[k.generation], args=[stored_generation])
        self._since_ms = None
        self._written_minutes.clear()
        self._written_breakdowns.clear()
        return marked

    async def _delete_dead(self, live: dict[str, str]) -> None:
        """Delete the users among `live` (name -> nonce) whose token SQL knows is dead."""
        tombstones = await asyncio.to_thread(self.store.tombstones_of, sorted(live))
        for canon, nonce in sorted(tombstones):
            if live.get(canon) == nonce:
                with contextlib.suppress(ApiError):  # gone or re-joined meanwhile
                    await self._counter.delete(canon, nonce)
                log.warning("deleted again: its deletion was in SQL", extra={"user": canon})
        live.clear()

    async def prune(self) -> int:
        """Drop minute buckets and breakdown days older than Redis keeps (SQL keeps all)."""
        horizon = int(time.time()) - HISTORY_S
        old = [
            field
            async for field, _ in self.redis.hscan_iter(self.keys.minutes)
            if int(field) < horizon
        ]
        if old:
            await self.redis.hdel(self.keys.minutes, *old)
        oldest_day = utc_day(horizon)
        stale = [
            key
            async for key in self.redis.scan_iter(match=self.keys.breakdown_pattern)
            if as_text(key).rsplit(":", 1)[-1] < oldest_day
        ]
        if stale:
            await self.redis.delete(*stale)
        return len(old) + len(stale)
