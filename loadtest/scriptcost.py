"""Redis's own cost of one click: the service's click script on a private redis-server.

    .venv/bin/python loadtest/scriptcost.py [--users 10000] [--calls 30000] [--n 1 5]

Starts a redis-server of its own on a free port (nothing else runs on it), registers
users through service.counter, resets INFO commandstats, sends `--calls` click batches
(32 in flight, so the counter's queue puts up to 32 in one call of the click script),
and prints one JSON line per `n` with the server-side microseconds per EVALSHA (per call,
of up to 32 entries) and the memory per registered user. That
number bounds how many click events one Redis primary can take per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cluster
import redis

from service.connection import connect_redis
from service.counter import Counter
from service.shards import Shards
from service.tokens import Player
from service.validation import canonical


async def measure(url: str, users: int, calls: int, n: int) -> dict[str, Any]:
    client = connect_redis(url)
    counter = Counter(client, Shards(f"cost-n{n}:"))
    await counter.mark_fresh()
    stats = redis.Redis.from_url(url)
    memory_before = int(stats.info("memory")["used_memory"])
    players = []
    for i in range(users):
        name = f"u{i:06d}"
        nonce = await counter.join(name, canonical(name), "127.0.0.1", 10**9)
        players.append(Player(name, canonical(name), nonce))
    per_user = (int(stats.info("memory")["used_memory"]) - memory_before) / users
    stats.config_resetstat()
    cpu_before = cluster.redis_cpu_seconds(stats)
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            await counter.click(players[i % users], n, 10**6)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(calls)))
    elapsed = time.monotonic() - started
    count, usec = cluster.redis_command_stats(stats).get("evalsha", (0, 0.0))
    cpu = cluster.redis_cpu_seconds(stats) - cpu_before
    stats.close()
    await client.aclose()
    return {
        "scriptcost": "click.lua",
        "users": users,
        "n": n,
        "evalsha_calls": count,
        "usec_per_call": round(usec / count, 1) if count else None,
        "max_calls_per_s": round(1e6 * count / usec) if usec else None,
        "client_calls_per_s": round(calls / elapsed),
        "redis_bytes_per_user": round(per_user),
        # The redis-server process's CPU per call, socket I/O and parsing included.
        "redis_cpu_us_per_call": round(1e6 * cpu / calls, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument(
        "--calls", type=int, default=30_000, help="click batches to send (32 in flight)"
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clickky-scriptcost-"))
    private = cluster.PrivateRedis(workdir).start()
    try:
        for n in args.n:
            line = asyncio.run(measure(private.url, args.users, args.calls, n))
            print(json.dumps(line), flush=True)
    finally:
        private.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
