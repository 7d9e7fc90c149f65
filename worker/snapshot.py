"""The snapshot job: one consistent cut of each Redis shard into the SQL store, only what
changed, all shards in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from service.breakdown import DIMENSIONS
from service.connection import REDIS_ERRORS
from service.counter import Counter, Script, as_text, load_script, utc_day
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
    """Reads every shard's changes since the last snapshot and writes them in one commit.

    Each shard's cut is one instant of that shard (take_cut.lua); the cuts are taken
    together (concurrently: on a cluster each goes to its own primary) and committed in
    one SQL transaction, so global == sum(users) holds in SQL per shard and in sum.
    """

    def __init__(
        self,
        redis: Redis,
        shards: Shards,
        store: Store,
        *,
        max_inline_users: int = MAX_INLINE_USERS,
    ) -> None:
        self.redis = redis
        self.shards = shards
        self.store = store
        self._take_cut = load_script(redis, "take_cut")
        self._drop_cut = load_script(redis, "drop_cut")
        self._read_users = load_script(redis, "read_users")
        self._counter = Counter(redis, shards)  # for deleting users again (reconcile)
        self._raise_generation = Script(
            redis,
            "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[1], ARGV[1]) end",
        )
        self.max_inline_users = max_inline_users
        # The first snapshot of this process re-reads the whole stats history;
        # later ones only the minutes since the previous complete one.
        self._since_ms: int | None = None
        # Counters as last written, keyed by shard first, so an idle minute or value is
        # not rewritten every time.
        self._written_minutes: dict[tuple[int, int], int] = {}
        self._written_breakdowns: dict[tuple[int, str, str, str], int] = {}

    async def read_cuts(self) -> list[Cut]:
        """Every shard's cut, taken concurrently, in shard order. A shard whose restore is
        pending (it is not the truth yet) or that Redis cannot reach is left out, so the
        list may be short or empty; raises Redis's error when no cut could be read and
        some shard could not be reached."""
        now = int(time.time())
        since_ms = self._since_ms
        since = since_ms // 1000 if since_ms else now - HISTORY_S
        first = since // 60 * 60 - 60
        last = now // 60 * 60 + 60
        # Every UTC day the window touches, for the breakdown counters.
        days = sorted({utc_day(t) for t in range(since - 60, now + 61, 3600)} | {utc_day(now)})
        wanted = [(day, dimension) for day in days for dimension in DIMENSIONS]
        found = await asyncio.gather(
            *(self._read_cut(shard, first, last, wanted) for shard in range(self.shards.count)),
            return_exceptions=True,
        )
        # A shard Redis cannot reach now (its primary is down) is left out, so the other
        # shards' changes still reach SQL; its changes wait in its in-flight set.
        unreachable = [i for i, cut in enumerate(found) if isinstance(cut, REDIS_ERRORS)]
        for outcome in found:
            if isinstance(outcome, BaseException) and not isinstance(outcome, REDIS_ERRORS):
                raise outcome
        cuts = [cut for cut in found if isinstance(cut, Cut)]
        if unreachable and not cuts:
            raise cast(Exception, found[unreachable[0]])
        if unreachable:
            log.warning(
                "shards left out of this snapshot: %s",
                ", ".join(f"{i} ({found[i]})" for i in unreachable),
            )
        # The hub's memory of announced global milestones only grows: read after the cuts.
        milestone = int(await self.redis.get(self.shards.hub.milestone_global) or 0)
        for cut in cuts:
            cut.milestone_global = milestone
        return cuts

    async def _read_cut(
        self, shard: int, first: int, last: int, wanted: list[tuple[str, str]]
    ) -> Cut | None:
        """One shard's cut (take_cut.lua), or None while its restore is pending."""
        k = self.shards.shard(shard)
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
                k.milestone_personal,
                k.idempotency_new,
                k.idempotency_inflight,
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
            # in chunks, and let the store take this shard's global count as what makes
            # the sum equal the sum of the users, so the invariant still holds in SQL
            # (though not as of a single instant).
            log.warning(
                "large snapshot: reading the changed users in chunks", extra={"shard": shard}
            )
            users, deleted, later_ids = await self._read_users_in_chunks(k)
            global_count = None
        else:
            later_ids = []
        ids = reply[10]
        return Cut(
            idempotency=[_batch_id(ids[i], ids[i + 1]) for i in range(0, len(ids), 2)] + later_ids,
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
            shard=shard,
        )

    async def _read_users_in_chunks(
        self, k: Keys
    ) -> tuple[list[UserRow], list[str], list[tuple[str, str, str, int]]]:
        """The changed users, read a chunk at a time after the cut: (users, deleted, ids).

        A chunk's counts include batches counted since the cut, so the ids of those
        batches (read with the counts, read_users.lua) go into this snapshot too: SQL
        must never hold a batch's clicks without its id, or a resend after a Redis loss
        would count it twice. The ids stay in idem:new, and the next cut writes them
        again (an upsert).
        """
        users: list[UserRow] = []
        deleted: list[str] = []
        ids: list[tuple[str, str, str, int]] = []
        batch: list[str] = []

        async def read(canons: list[str]) -> None:
            rows, recorded = await self._read_users(
                keys=[k.names, k.nonces, k.board, k.milestone_personal, k.idempotency_new],
                args=canons,
            )
            ids.extend(_batch_id(recorded[i], recorded[i + 1]) for i in range(0, len(recorded), 2))
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
        return users, deleted, ids

    async def snapshot(self, fence: int) -> Report | None:
        """Take one snapshot under this fence; None when every shard's restore is pending.

        Raises what Store.write_snapshot raises (StaleFence, LayoutChanged, RedisWentBack)
        and Redis's or the database's errors; the cuts then stay in flight for the next.
        """
        started = time.monotonic()
        cuts = await self.read_cuts()
        if not cuts:
            return None
        for cut in cuts:
            i = cut.shard
            cut.minutes = {
                minute: clicks
                for minute, clicks in cut.minutes.items()
                if self._written_minutes.get((i, minute)) != clicks
            }
            cut.breakdowns = {
                key: clicks
                for key, clicks in cut.breakdowns.items()
                if self._written_breakdowns.get((i, *key)) != clicks
            }
        rows = await asyncio.to_thread(
            self.store.write_snapshot, cuts, fence, shard_count=self.shards.count
        )
        server_ms = min(cut.server_ms for cut in cuts)
        for cut in cuts:
            self._written_minutes.update(((cut.shard, m), c) for m, c in cut.minutes.items())
            self._written_breakdowns.update(
                ((cut.shard, *key), c) for key, c in cut.breakdowns.items()
            )
        today = utc_day(server_ms / 1000)
        self._written_breakdowns = {
            key: c for key, c in self._written_breakdowns.items() if key[1] >= today
        }
        horizon = server_ms // 1000 - 3600
        self._written_minutes = {
            key: c for key, c in self._written_minutes.items() if key[1] >= horizon
        }
        # Only now are the in-flight changes safely in SQL; unless a later cut (a
        # successor's, while we were paused) took them over and has yet to commit.
        await asyncio.gather(*(self._drop(cut) for cut in cuts))
        if len(cuts) == self.shards.count:
            # A shard left out (restoring, unreachable) has minutes to re-read from the
            # older point.
            self._since_ms = server_ms
        return Report(
            rows=rows,
            users=sum(len(cut.users) for cut in cuts),
            deleted=sum(len(cut.deleted) for cut in cuts),
            duration_s=time.monotonic() - started,
            lag_ms=max(0, int(time.time() * 1000) - server_ms),
            server_ms=server_ms,
        )

    async def _drop(self, cut: Cut) -> None:
        k = self.shards.shard(cut.shard)
        await self._drop_cut(
            keys=[
                k.inflight_owner,
                k.dirty_inflight,
                k.tombstones_inflight,
                k.idempotency_inflight,
            ],
            args=[cut.generation],
        )

    async def reconcile(self, stored: dict[int, int]) -> int:
        """Prepare a full snapshot of the shards that went back in time (a lagging replica).

        `stored`: shard -> the generation SQL last committed for it (RedisWentBack.stored).
        SQL then holds changes those shards never saw, so writing only what changed would
        break global == sum(users) there. Every name such a shard has and every SQL user
        whose shard it is are marked changed (SQL users the shard lacks are then
        deleted), the whole stats history is re-read, and the shard's generation moves
        past SQL's. Users whose deletion SQL had recorded (their token's tombstone) are
        deleted again. Otherwise the shard is the truth from here on: what the replica
        missed is lost, as it already is for the players. Returns the number of names
        marked.
        """
        marked = 0
        batches: dict[int, list[str]] = {shard: [] for shard in stored}

        async def mark(shard: int, force: bool = False) -> None:
            nonlocal marked
            batch = batches[shard]
            if batch and (force or len(batch) >= CHUNK_USERS):
                await self.redis.sadd(self.shards.shard(shard).dirty, *batch)
                marked += len(batch)
                batches[shard] = []

        for shard in stored:
            k = self.shards.shard(shard)
            live: dict[str, str] = {}
            async for canon, nonce in self.redis.hscan_iter(k.nonces, count=CHUNK_USERS):
                live[as_text(canon)] = as_text(nonce)
                batches[shard].append(as_text(canon))
                if len(live) >= CHUNK_USERS:
                    await self._delete_dead(live)
                await mark(shard)
            await self._delete_dead(live)
        cursor = ""
        while rows := await asyncio.to_thread(self.store.users_after, cursor, CHUNK_USERS):
            for row in rows:
                shard = self.shards.of(row.canon)
                if shard in batches:
                    batches[shard].append(row.canon)
            cursor = rows[-1].canon
            for shard in stored:
                await mark(shard)
        for shard, generation in stored.items():
            await mark(shard, force=True)
            await self._raise_generation(
                keys=[self.shards.shard(shard).generation], args=[generation]
            )
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
        """Drop minute buckets and breakdown days older than Redis keeps (SQL keeps all),
        in every shard."""
        horizon = int(time.time()) - HISTORY_S
        oldest_day = utc_day(horizon)
        dropped = 0
        for k in self.shards.all():
            old = [
                field async for field, _ in self.redis.hscan_iter(k.minutes) if int(field) < horizon
            ]
            if old:
                await self.redis.hdel(k.minutes, *old)
            stale = [
                key
                async for key in self.redis.scan_iter(match=k.breakdown_pattern)
                if as_text(key).rsplit(":", 1)[-1] < oldest_day
            ]
            if stale:  # one shard's keys: one hash slot, so one DEL
                await self.redis.delete(*stale)
            dropped += len(old) + len(stale)
        return dropped


def _batch_id(member: Any, expiry: Any) -> tuple[str, str, str, int]:
    """(canon, id, first answer, expiry ms) from a member of the idempotency sets."""
    canon, click_id, answer = as_text(member).split("\n", 2)
    return canon, click_id, answer, int(float(expiry))
