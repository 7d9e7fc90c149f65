"""The worker process: snapshot leader election, snapshots, restore, and shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pymysql
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service.activity import Feed
from service.bootstrap import check_layout
from service.connection import REDIS_ERRORS, connect_redis
from service.counter import as_text
from service.logs import configure_logging
from service.settings import Settings
from service.store import LayoutChanged, RedisWentBack, StaleFence, Store
from worker.eviction import eviction_policy, refusal, unsafe
from worker.export import ExportError, export_day, yesterday
from worker.lease import Lease
from worker.restore import Restorer
from worker.snapshot import Snapshotter

log = logging.getLogger("worker")

# Failures we expect from the outside world: one log line each, then retry.
OUTSIDE_ERRORS: tuple[type[Exception], ...] = (
    *REDIS_ERRORS,
    pymysql.MySQLError,
    sqlite3.Error,
    OSError,
)
SNAPSHOT_ERRORS: tuple[type[Exception], ...] = (*OUTSIDE_ERRORS, LayoutChanged)
EXPORT_ERRORS: tuple[type[Exception], ...] = (*OUTSIDE_ERRORS, ExportError)


def lease_ttl_s(interval_s: float) -> float:
    """Short enough that a standby takes over within one snapshot interval.

    Takeover needs the TTL plus one check (TTL/4): half an interval keeps that
    under one interval; the cap keeps a lost leader's gap short at 30 s.
    """
    return max(1.0, min(10.0, interval_s / 2))


class Worker:
    """Runs the jobs on an APScheduler; only the lease holder writes to SQL.

    The lease, health and snapshot status are hub keys (service/shards.py); the
    snapshot and the restore work on every shard.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.shards = settings.shards
        self.keys = self.shards.hub
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}"
        # A snapshot or a restore calls every shard at once; on a cluster the pool is per
        # node and refuses (not waits) past its size, and all shards may sit on one node.
        self.redis = connect_redis(settings.redis_url, max_connections=8 + self.shards.count)
        self.store = Store(settings.database_url)
        ttl = lease_ttl_s(settings.snapshot_interval_s)
        self.lease = Lease(self.redis, self.keys, self.worker_id, ttl)
        self.guard_interval_s = ttl / 4
        self.snapshotter = Snapshotter(self.redis, self.shards, self.store)
        self.restorer = Restorer(self.redis, self.shards, self.store)
        # The admins' live feed: lease takeovers, restores and failed snapshots.
        self.feed = Feed(self.redis, self.keys, self.worker_id)
        self.scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self.failures = 0
        # (lease term, fence claimed from SQL for it): one claim per acquisition.
        self._claimed: tuple[int, int] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._restore_task: asyncio.Task[int | None] | None = None
        self._closed = False

    def start(self) -> None:
        now = datetime.now(UTC)
        self.scheduler.add_job(
            self.guard, "interval", seconds=self.guard_interval_s, id="guard", next_run_time=now
        )
        self.scheduler.add_job(
            self.snapshot, "interval", seconds=self.settings.snapshot_interval_s, id="snapshot"
        )
        self.scheduler.add_job(self.prune, "interval", hours=1, id="prune")
        if self.settings.export_hour is not None:
            self.scheduler.add_job(
                self.export, "cron", hour=self.settings.export_hour, minute=5, id="export"
            )
        self.scheduler.start()
        log.info(
            "worker %s started (snapshot every %ss into %s)",
            self.worker_id,
            self.settings.snapshot_interval_s,
            self.store.describe(),
        )

    # -- jobs --------------------------------------------------------------
    async def guard(self) -> None:
        """Keep (or take) the lease, report health, and start a restore if Redis lost data."""
        try:
            had_lease = self.lease.fence is not None
            leader = await self.lease.keep()
            if leader and not had_lease:
                await self.feed.add("lease", worker=self.worker_id, fence=self.lease.fence)
            now_ms = int(time.time() * 1000)
            health = {"worker": self.worker_id, "leader": leader, "at": now_ms}
            ttl_s = max(10, int(self.guard_interval_s * 4))
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(self.keys.worker_health(self.worker_id), json.dumps(health), ex=ttl_s)
            pipe.zadd(self.keys.workers, {self.worker_id: now_ms + ttl_s * 1000})
            pipe.zremrangebyscore(self.keys.workers, "-inf", now_ms)
            await pipe.execute()
            restoring = self._restore_task is not None and not self._restore_task.done()
            if leader and not restoring and await self.restorer.needed():
                self._restore_task = asyncio.create_task(self._restore(), name="restore")
        except OUTSIDE_ERRORS as exc:
            log.warning("lease/health check failed: %s", exc)

    async def _fence(self) -> int | None:
        """The SQL fence of our current lease term, claimed from SQL once per term."""
        term = self.lease.term
        if self.lease.fence is None:
            return None
        if self._claimed is None or self._claimed[0] != term:
            fence = await asyncio.to_thread(self.store.claim_fence, self.worker_id)
            self._claimed = (term, fence)
            log.info("claimed the snapshot fence", extra={"fence": fence})
        return self._claimed[1]

    async def _stand_down(self, exc: StaleFence) -> None:
        log.warning("a newer fence was claimed in the snapshot store (%s); standing down", exc)
        self._claimed = None
        with contextlib.suppress(*REDIS_ERRORS):
            await self.lease.release()
        self.lease.lost()

    async def _restore(self) -> int | None:
        """Restore under the snapshot lock, as the newest writer of the SQL store.

        The lock keeps a snapshot read before the loss from committing in the middle;
        claiming a fence first refuses any older leader's late commit too. Under an
        allkeys-* eviction policy a missing epoch may be an eviction: no restore then.
        """
        try:
            async with self._snapshot_lock:
                await self._migrate()
                if self.lease.fence is None or not await self.restorer.needed():
                    return None
                policy = await eviction_policy(self.redis)
                if unsafe(policy):
                    log.error("not restoring: %s", refusal(policy or ""))
                    return None
                fence = await self._fence()
                if fence is None:
                    return None
                restored = await self.restorer.run(lambda: self.lease.held, fence)
                if restored is not None:
                    await self.feed.add("restore", users=restored, worker=self.worker_id)
                return restored
        except StaleFence as exc:  # a newer leader claimed a fence (a shard-count change)
            await self._stand_down(exc)
            return None
        except OUTSIDE_ERRORS as exc:
            log.warning("restore attempt failed (%s); retrying on the next check", exc)
            return None

    async def snapshot(self) -> None:
        """One snapshot if we lead; on failure, retry with backoff, keeping every change."""
        fence = self.lease.fence
        if fence is None or not self.lease.held:
            return
        async with self._snapshot_lock:
            try:
                await self._migrate()
                claimed = await self._fence()
                if claimed is None:
                    return
                fence = claimed
                try:
                    report = await self.snapshotter.snapshot(fence)
                except RedisWentBack as exc:
                    log.error(
                        "Redis went back in time (%s): a failover to a lagging replica? "
                        "Reconciling: the SQL store now takes what those shards hold, in full",
                        exc,
                    )
                    marked = await self.snapshotter.reconcile(exc.stored)
                    report = await self.snapshotter.snapshot(fence)
                    log.warning("reconciled", extra={"users": marked})
            except StaleFence as exc:
                await self._stand_down(exc)
                return
            except SNAPSHOT_ERRORS as exc:
                await self._failed(exc)
                return
            if report is None:
                log.info("snapshot skipped: a restore is pending")
                return
            self.failures = 0
            with contextlib.suppress(*REDIS_ERRORS):
                await self.redis.hset(
                    self.keys.snapshot_status,
                    mapping={
                        "last_ok_ms": report.server_ms,
                        "duration_s": f"{report.duration_s:.4f}",
                        "rows": report.rows,
                        "failures": 0,
                        "last_error": "",
                        "worker": self.worker_id,
                        "fence": fence,
                    },
                )
            log.info(
                "snapshot written",
                extra={
                    "rows": report.rows,
                    "users": report.users,
                    "deleted": report.deleted,
                    "duration_s": round(report.duration_s, 4),
                    "lag_ms": report.lag_ms,
                    "fence": fence,
                },
            )

    async def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        backoff = min(2 ** (self.failures - 1), self.settings.snapshot_interval_s)
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "snapshot failed (%s); %d in a row; retrying in %ss",
            error,
            self.failures,
            backoff,
        )
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.hset(
                self.keys.snapshot_status,
                mapping={"failures": self.failures, "last_error": error[:500]},
            )
        await self.feed.add("snapshot_failed", error=error[:300], failures=self.failures)
        if not self._closed:
            self.scheduler.add_job(
                self.snapshot,
                "date",
                run_date=datetime.now(UTC) + timedelta(seconds=backoff),
                id="snapshot-retry",
                replace_existing=True,
            )

    async def _migrate(self) -> None:
        await asyncio.to_thread(self.store.migrate)

    async def prune(self) -> None:
        if self.lease.held:
            try:
                dropped = await self.snapshotter.prune()
            except OUTSIDE_ERRORS as exc:
                log.warning("pruning old counters failed: %s", exc)
                return
            if dropped:
                log.info("pruned old counters from Redis", extra={"entries": dropped})

    async def export(self) -> None:
        """The daily export of the previous UTC day, by the leader only."""
        if not self.lease.held:
            return
        day = yesterday()
        try:
            await asyncio.to_thread(
                export_day,
                self.store,
                day,
                self.settings.export_format,
                Path(self.settings.export_dir),
            )
        except EXPORT_ERRORS as exc:
            log.warning("daily export of %s failed: %s", day, exc)

    # -- shutdown ------------------------------------------------------------
    async def close(self) -> None:
        """Final snapshot if we lead, then give up the lease. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.shutdown(wait=False)
        if self._restore_task is not None:
            self._restore_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._restore_task
        if self.lease.held:
            log.info("final snapshot before exit")
            await self.snapshot()
        with contextlib.suppress(*OUTSIDE_ERRORS):
            await self.lease.release()
            await self.redis.delete(self.keys.worker_health(self.worker_id))
            await self.redis.zrem(self.keys.workers, self.worker_id)
        await self.redis.aclose()
        log.info("worker %s stopped", self.worker_id)


async def run(settings: Settings) -> None:
    worker = Worker(settings)
    try:
        policy = await eviction_policy(worker.redis)
    except REDIS_ERRORS:
        policy = None  # Redis is down: the guard reports it, and checks again before a restore
    if unsafe(policy):
        log.error("refusing to start: %s", refusal(policy or ""))
        await worker.redis.aclose()
        sys.exit(2)
    await check_layout(worker.shards, worker.redis)  # as the instances do: ends on a mismatch
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker.start()
    try:
        await stop.wait()
    finally:
        await worker.close()


async def check(settings: Settings) -> int:
    """Exit status for a deploy healthcheck: 0 if a worker on this host reported recently.

    Reads the hub's sorted set of live workers (no keyspace scan: on a cluster every key
    read is in the hub's slot), then each candidate's health key.
    """
    keys = settings.shards.hub
    redis = connect_redis(settings.redis_url, max_connections=2)
    mine = socket.gethostname() + ":"
    try:
        alive = await redis.zrangebyscore(keys.workers, int(time.time() * 1000), "+inf")
        ours = [as_text(w) for w in alive if as_text(w).startswith(mine)]
        found = [w for w in ours if await redis.exists(keys.worker_health(w))]
    except REDIS_ERRORS as exc:
        print(f"unhealthy: Redis unreachable ({exc})", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    if not found:
        print("unhealthy: no live worker on this host", file=sys.stderr)
        return 1
    print("healthy")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if a worker on this host is alive, else 1"
    )
    args = parser.parse_args(argv)
    settings = Settings.load("clickky")
    configure_logging(settings.log_level, settings.log_format, process="worker")
    if args.check:
        sys.exit(asyncio.run(check(settings)))
    asyncio.run(run(settings))
