"""Recovery: when Redis comes back empty, add the last snapshot back, exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis

from service.counter import as_text, load_script, utc_day
from service.keys import Keys
from service.store import Store, Totals
from worker.snapshot import HISTORY_S

log = logging.getLogger(__name__)

BATCH_USERS = 5000


class Restorer:
    """Detects a data loss by the epoch key (not by a zero count) and restores from SQL."""

    def __init__(
        self, redis: Redis, keys: Keys, store: Store, *, batch_users: int = BATCH_USERS
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.store = store
        self.batch_users = batch_users
        self._totals = load_script(redis, "restore_totals")
        self._users = load_script(redis, "restore_users")
        self._finish = load_script(redis, "restore_finish")

    @property
    def _user_keys(self) -> list[str]:
        """The keys both user steps (batches and finish) touch, in their scripts' order."""
        k = self.keys
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

    async def needed(self) -> bool:
        return not await self.redis.exists(self.keys.epoch)

    async def run(self, still_leader: Callable[[], bool]) -> int | None:
        """Restore if Redis lost its data; returns users restored, or None if nothing to do.

        Every step is idempotent (a flag or a compare-and-set cursor), so a
        crash, a retry or a second restorer never adds anything twice.
        """
        k = self.keys
        if not await self.needed():
            return None
        totals = await asyncio.to_thread(self.store.totals)
        if totals is None:
            if await self.redis.set(k.epoch, secrets.token_hex(8), nx=True):
                log.info("fresh deployment: no snapshot to restore, Redis is authoritative")
            return None
        started = time.monotonic()
        log.warning(
            "Redis lost its data; restoring the snapshot taken at %d (global %d)",
            totals.snapshot_ms // 1000,
            totals.global_count,
        )
        await self.redis.hsetnx(k.restore, "started_ms", int(time.time() * 1000))
        await self.redis.hset(k.restore, "expected_users", str(await self._user_count()))
        await self.redis.set(k.secret, await asyncio.to_thread(self.store.secret))

        await self._restore_counters(totals.clicks_total)

        restored = 0
        while True:
            if not still_leader():
                log.warning("lost the lease during a restore; the next leader resumes it")
                return restored
            cursor = as_text(await self.redis.hget(k.restore, "cursor"))
            batch = await asyncio.to_thread(self.store.users_after, cursor, self.batch_users)
            if not batch:
                break
            flat: list[str | int] = [cursor, batch[-1].canon]
            for user in batch:
                flat += [user.canon, user.username, user.nonce, user.count, user.milestone]
            applied = await self._users(keys=[*self._user_keys, k.milestone_personal], args=flat)
            if applied == -1:
                log.info("another restorer finished the restore")
                return restored
            if applied:
                restored += len(batch)
                log.info("restore progress", extra={"users": restored})

        evicted = await self._finish_restore(totals)
        log.warning(
            "restore finished",
            extra={
                "users": restored,
                "evicted": evicted,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return restored

    async def _finish_restore(self, totals: Totals) -> int:
        """Evict dead tokens that clicked since the loss, then set the epoch. Returns evicted.

        Tokens may keep arriving while SQL is asked about the ones read: the script
        finishes only when every provisional name has been checked, else we go again.
        """
        k = self.keys
        epoch = secrets.token_hex(8)
        evicted = 0
        while True:
            provisional = sorted(as_text(c) for c in await self.redis.smembers(k.provisional))
            nonces = await self.redis.hmget(k.nonces, provisional) if provisional else []
            pairs = [(c, as_text(n)) for c, n in zip(provisional, nonces, strict=True)]
            # One query per 1,000 names: every active player may be provisional by now.
            dead = await asyncio.to_thread(self.store.tombstones_of, provisional)
            flat: list[str | int] = [epoch, totals.generation, totals.milestone_global]
            for canon, nonce in pairs:
                flat += [canon, nonce, int((canon, nonce) in dead)]
            outcome = await self._finish(
                keys=[*self._user_keys, k.dirty, k.generation, k.milestone_global], args=flat
            )
            evicted += sum(pair in dead for pair in pairs)
            if outcome != 2:
                return evicted

    async def _restore_counters(self, clicks_total: int) -> None:
        """Clicks total, minute buckets, a week of breakdowns and the country board."""
        k = self.keys
        now = time.time()
        minutes = await asyncio.to_thread(self.store.minutes_between, int(now) - HISTORY_S, 2**62)
        first_day = utc_day(now - HISTORY_S)
        breakdowns = await asyncio.to_thread(self.store.breakdowns_between, first_day, "9999-12-31")
        countries = await asyncio.to_thread(self.store.country_totals)
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
            args=[clicks_total, json.dumps(data)],
        )

    async def _user_count(self) -> int:
        users, _ = await asyncio.to_thread(self.store.user_sum)
        return users
