"""Snapshot benchmark: time and SQL rows of one snapshot when 1% of N users changed.

    python loadtest/snapshot_bench.py --users 10000 100000 1000000 --backend mysql sqlite

Prints one JSON line per (backend, users). Needs a real Redis (REDIS_URL, default
127.0.0.1:6379) and, for mysql, a server (MYSQL_URL, default root@127.0.0.1:3306);
it uses its own key prefix and database and removes both afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.connection import connect_redis
from service.keys import Keys
from service.shards import Shards
from service.store import Store
from worker.snapshot import Snapshotter

CHUNK = 20_000


async def populate(redis, keys: Keys, users: int) -> list[str]:  # type: ignore[no-untyped-def]
    """N users straight into Redis (bypassing joins, which are not what we measure)."""
    names = [f"user{i:07d}" for i in range(users)]
    for start in range(0, users, CHUNK):
        chunk = names[start : start + CHUNK]
        pipe = redis.pipeline(transaction=False)
        pipe.hset(keys.names, mapping={n: n for n in chunk})
        pipe.hset(keys.nonces, mapping={n: "0123456789abcdef" for n in chunk})
        pipe.zadd(keys.board, {n: 1 for n in chunk})
        pipe.sadd(keys.dirty, *chunk)
        await pipe.execute()
    await redis.set(keys.global_count, users)
    await redis.set(keys.clicks_total, users)
    await redis.set(keys.epoch, "bench")
    return names


async def touch(redis, keys: Keys, names: list[str], fraction: float) -> int:  # type: ignore[no-untyped-def]
    """Click a random `fraction` of the users once each, as the click script would."""
    chosen = random.sample(names, max(1, int(len(names) * fraction)))
    for start in range(0, len(chosen), CHUNK):
        chunk = chosen[start : start + CHUNK]
        pipe = redis.pipeline(transaction=True)
        for name in chunk:
            pipe.zincrby(keys.board, 1, name)
        pipe.incrby(keys.global_count, len(chunk))
        pipe.sadd(keys.dirty, *chunk)
        await pipe.execute()
    return len(chosen)


async def bench(backend: str, users: int, rounds: int, redis_url: str, mysql_url: str) -> dict:  # type: ignore[type-arg]
    keys = Keys(f"snapbench-{uuid.uuid4().hex[:8]}:")
    redis = connect_redis(redis_url)
    tmp = tempfile.TemporaryDirectory()
    if backend == "mysql":
        db = f"clickky_bench_{uuid.uuid4().hex[:8]}"
        url = f"{mysql_url.rstrip('/')}/{db}"
    else:
        url = f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    store = Store(url)
    try:
        store.migrate()
        names = await populate(redis, keys, users)
        snapshotter = Snapshotter(redis, Shards(keys.prefix), store)
        started = time.monotonic()
        await snapshotter.snapshot(fence=1)  # the first one writes everybody
        initial_s = time.monotonic() - started
        timings, rows = [], []
        for _ in range(rounds):
            await touch(redis, keys, names, 0.01)
            report = await snapshotter.snapshot(fence=1)
            assert report is not None
            timings.append(report.duration_s)
            rows.append(report.rows)
        count, total = store.user_sum()
        assert count == users and total == int(await redis.get(keys.global_count))
        return {
            "backend": backend,
            "users": users,
            "dirty": max(1, users // 100),
            "rows_median": statistics.median(rows),
            "snapshot_s_median": round(statistics.median(timings), 4),
            "snapshot_s_max": round(max(timings), 4),
            "rounds": rounds,
            "initial_full_snapshot_s": round(initial_s, 2),
        }
    finally:
        found = [k async for k in redis.scan_iter(match=keys.prefix + "*", count=1000)]
        for start in range(0, len(found), 500):
            await redis.delete(*found[start : start + 500])
        await redis.aclose()
        if backend == "mysql":
            conn = pymysql.connect(
                **{k: v for k, v in store._mysql_args.items() if k != "database"}
            )
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{store._mysql_args['database']}`")
            conn.close()
        tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--backend", nargs="+", default=["mysql", "sqlite"], choices=["mysql", "sqlite"]
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    mysql_url = os.environ.get("MYSQL_URL", "mysql://root@127.0.0.1:3306")
    machine = f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}"
    for backend in args.backend:
        for users in args.users:
            result = asyncio.run(bench(backend, users, args.rounds, redis_url, mysql_url))
            result["machine"] = machine
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
