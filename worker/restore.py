"""Recovery: when Redis shards come back empty, add the last snapshot back, exactly once.

A loss is detected per shard (its epoch key is missing), so a Redis Cluster primary
that restarts empty restores only its own shards, while the others keep serving. Each
lost shard gets its share of the shared counters and its users (those whose name maps
to it) added to whatever was counted since. The hub's durable state (the token secret,
the memory of announced global milestones) comes back when the hub's epoch is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import cast

from redis.asyncio import Redis

from service.counter import as_text, load_script, utc_day
from service.keys import Keys
from service.shards import Shards
from service.store import Store, Totals, UserRow
from worker.snapshot import HISTORY_S

log = logging.getLogger(__name__)

BATCH_USERS = 5000


class Restorer:
    """Detects a data loss by the epoch keys (not by a zero count) and restores from SQL."""

    def __init__(
        self, redis: Redis, shards: Shards, store: Store, *, batch_users: int = BATCH_USERS
    ) -> None:
        self.redis = redis
        self.shards = shards
        self.store = store
        self.batch_users = batch_users
        self._totals = load_script(redis, "restore_totals")
        self._users = load_script(redis, "restore_users")
        self._finish = load_script(redis, "restore_finish")
        self._hub = load_script(redis, "restore_hub")

    @staticmethod
    def _user_keys(k: Keys) -> list[str]:
        """The keys both user steps (batches and finish) touch, in their scripts' order."""
        return [
            k.restore,
            k.nonces,
            k.names,
            k.board,
            k.global_count,
            k.lex,
            k.provisional,
            k.epoch,
        ]

    async def lost(self) -> list[int]:
        """The shards whose epoch key is missing (lost, or being restored), in order."""
        present = await asyncio.gather(
            *(self.redis.exists(k.epoch) for k in self.shards.all()), return_exceptions=True
        )
        if all(isinstance(found, BaseException) for found in present):
            raise cast(Exception, present[0])
        # A shard whose primary is down is not known lost yet: the others go on.
        return [shard for shard, found in enumerate(present) if found == 0]

    async def hub_lost(self) -> bool:
        """On several shards: the hub's epoch is missing. (On one, it is shard 0's.)"""
        return self.shards.sharded and not await self.redis.exists(self.shards.hub.epoch)

    async def needed(self) -> bool:
        return bool(await self.lost()) or await self.hub_lost()

    async def run(self, still_leader: Callable[[], bool], fence: int = 0) -> int | None:
        """Restore what Redis lost; returns users restored, or None if nothing to do.

        `fence` is the caller's SQL fence: a change of shard count rewrites SQL
        (Store.relayout, refused with StaleFence under an older fence). Every Redis
        step is idempotent (a flag or a compare-and-set cursor per shard), so a crash,
        a retry or a second restorer never adds anything twice.
        """
        lost, hub_lost = await self.lost(), await self.hub_lost()
        if not lost and not hub_lost:
            return None
        totals = await asyncio.to_thread(self.store.totals)
        if totals is None:
            epochs = [self.shards.shard(i).epoch for i in lost]
            epochs += [self.shards.hub.epoch] if hub_lost else []
            marked = await asyncio.gather(
                *(self.redis.set(key, secrets.token_hex(8), nx=True) for key in epochs)
            )
            if any(marked):
                log.info("fresh deployment: no snapshot to restore, Redis is authoritative")
            return None
        if totals.shard_count != self.shards.count:
            if len(lost) < self.shards.count:
                log.error(
                    "not restoring: the snapshot was written with %d shard(s), this worker"
                    " runs %d, and only a full restore (every shard lost) may change that;"
                    " set REDIS_SHARDS=%d",
                    totals.shard_count,
                    self.shards.count,
                    totals.shard_count,
                )
                return None
            if await asyncio.to_thread(self.store.relayout, self.shards.count, fence):
                log.warning(
                    "shard count changed from %d to %d: the shared counters go to shard 0",
                    totals.shard_count,
                    self.shards.count,
                )
            totals = await asyncio.to_thread(self.store.totals)
            assert totals is not None  # relayout never removes the snapshot
        if hub_lost:
            await self._restore_hub(totals, set_epoch=True)
        if not lost:
            return 0
        started = time.monotonic()
        log.warning(
            "Redis lost its data; restoring the snapshot taken at %d (global %d)",
            totals.snapshot_ms // 1000,
            totals.global_count,
            extra={"shards": lost},
        )
        now_ms = int(time.time() * 1000)
        await asyncio.gather(
            *(self.redis.hsetnx(self.shards.shard(i).restore, "started_ms", now_ms) for i in lost)
        )
        await asyncio.gather(*(self._restore_counters(i, totals) for i in lost))
        finished, pending = await self._restore_users(lost, still_leader)
        restored = sum(pending.values())
        if not finished:
            log.warning("lost the lease during a restore; the next leader resumes it")
            return restored
        if not self.shards.sharded:
            await self._restore_hub(totals, set_epoch=False)  # its epoch is the shard's
        await self._restore_batch_ids(set(pending))
        evicted = await asyncio.gather(*(self._finish_restore(i, totals) for i in pending))
        log.warning(
            "restore finished",
            extra={
                "users": restored,
                "shards": lost,
                "evicted": sum(evicted),
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return restored

    async def _restore_users(
        self, lost: list[int], still_leader: Callable[[], bool]
    ) -> tuple[bool, dict[int, int]]:
        """Add SQL's users to their (lost) shards in batches: one pass over the users
        table whatever the number of shards lost.

        Each batch (the users after the lowest shard cursor) gives every shard the users
        that map to it beyond its own cursor, by compare-and-set on that cursor. Returns
        (False when the lease was lost, {shard still to finish: users restored into it}).
        """
        pending = dict.fromkeys(lost, 0)
        while pending:
            if not still_leader():
                return False, pending
            cursors = dict(
                zip(
                    pending,
                    await asyncio.gather(
                        *(self.redis.hget(self.shards.shard(i).restore, "cursor") for i in pending)
                    ),
                    strict=True,
                )
            )
            after = {i: as_text(c) for i, c in cursors.items()}
            batch = await asyncio.to_thread(
                self.store.users_after, min(after.values()), self.batch_users
            )
            if not batch:
                break
            end = batch[-1].canon
            behind = [i for i in pending if after[i] < end]
            applied = await asyncio.gather(
                *(
                    self._apply(
                        i,
                        after[i],
                        end,
                        [u for u in batch if u.canon > after[i] and self.shards.of(u.canon) == i],
                    )
                    for i in behind
                )
            )
            for i, users in zip(behind, applied, strict=True):
                if users == -1:
                    log.info("another restorer finished the restore", extra={"shard": i})
                    del pending[i]
                else:
                    pending[i] += users
            log.info("restore progress", extra={"users": sum(pending.values())})
        return True, pending

    async def _apply(self, shard: int, cursor: str, end: str, users: list[UserRow]) -> int:
        """One shard's share of a batch; users added, 0 if another restorer moved the
        cursor meanwhile, -1 if the shard's restore is over."""
        k = self.shards.shard(shard)
        flat: list[str | int] = [cursor, end]
        for user in users:
            flat += [user.canon, user.username, user.nonce, user.count, user.milestone]
        outcome = int(
            await self._users(keys=[*self._user_keys(k), k.milestone_personal], args=flat)
        )
        return len(users) if outcome == 1 else outcome

    async def _restore_hub(self, totals: Totals, *, set_epoch: bool) -> None:
        """The secret and the global milestone memory; on several shards, the hub's epoch."""
        hub = self.shards.hub
        secret = await asyncio.to_thread(self.store.secret)
        done = await self._hub(
            keys=[hub.epoch, hub.milestone_global, hub.secret],
            args=[secrets.token_hex(8), totals.milestone_global, secret, int(set_epoch)],
        )
        if set_epoch and int(done):
            log.warning("restored the hub (secret, global milestone memory)")

    async def _restore_batch_ids(self, shards: set[int]) -> int:
        """Put the snapshot's click batch ids (with their first answers) back on these
        shards, before their epochs: until then the click script makes a batch with an
        id wait, so one counted before the loss cannot count again. Returns how many."""
        now_ms = int(time.time() * 1000)
        rows = await asyncio.to_thread(self.store.idempotency, now_ms)
        pipe = self.redis.pipeline(transaction=False)
        put = 0
        for canon, click_id, answer, expires_ms in rows:
            shard = self.shards.of(canon)
            if shard in shards:
                key = self.shards.shard(shard).idempotency(canon, click_id)
                pipe.set(key, answer, px=expires_ms - now_ms, nx=True)
                put += 1
        if put:
            await pipe.execute()
        return put

    async def _finish_restore(self, shard: int, totals: Totals) -> int:
        """Evict dead tokens that clicked since the loss, then set the shard's epoch.
        Returns evicted.

        Tokens may keep arriving while SQL is asked about the ones read: the script
        finishes only when every provisional name has been checked, else we go again.
        """
        k = self.shards.shard(shard)
        epoch = secrets.token_hex(8)
        evicted = 0
        while True:
            provisional = sorted(as_text(c) for c in await self.redis.smembers(k.provisional))
            nonces = await self.redis.hmget(k.nonces, provisional) if provisional else []
            pairs = [(c, as_text(n)) for c, n in zip(provisional, nonces, strict=True)]
            # One query per 1,000 names: every active player may be provisional by now.
            dead = await asyncio.to_thread(self.store.tombstones_of, provisional)
            flat: list[str | int] = [epoch, totals.generation(shard)]
            for canon, nonce in pairs:
                flat += [canon, nonce, int((canon, nonce) in dead)]
            outcome = await self._finish(
                keys=[*self._user_keys(k), k.dirty, k.generation], args=flat
            )
            evicted += sum(pair in dead for pair in pairs)
            if outcome != 2:
                return evicted

    async def _restore_counters(self, shard: int, totals: Totals) -> None:
        """The shard's share of the clicks total, minute buckets, a week of breakdowns
        and the country board."""
        k = self.shards.shard(shard)
        share = totals.shares.get(shard)
        now = time.time()
        minutes = await asyncio.to_thread(
            self.store.minutes_between, int(now) - HISTORY_S, 2**62, shard
        )
        first_day = utc_day(now - HISTORY_S)
        breakdowns = await asyncio.to_thread(
            self.store.breakdowns_between, first_day, "9999-12-31", shard
        )
        countries = await asyncio.to_thread(self.store.country_totals, shard)
        hashes: dict[str, list[list[str | int]]] = {}
        for (day, dimension, value), clicks in sorted(breakdowns.items()):
            hashes.setdefault(k.breakdown(dimension, day), []).append([value, clicks])
        data = {
            "minutes": [[str(m), c] for m, c in sorted(minutes.items())],
            "countries": [[code, clicks] for code, clicks in sorted(countries.items())],
            "hashes": list(hashes.values()),
        }
        await self._totals(
            keys=[k.epoch, k.restore, k.clicks_total, k.minutes, k.country_board, *hashes],
            args=[share.clicks_total if share else 0, json.dumps(data)],
        )
