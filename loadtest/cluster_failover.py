"""A master of a Redis Cluster SIGKILLed under clicks: how long its players wait for its
replica, what the others see meanwhile, and whether every acknowledged click is counted.

    .venv/bin/python loadtest/cluster_failover.py                 # 3 runs, one line each + medians
    .venv/bin/python loadtest/cluster_failover.py --runs 1 --rate 40

Each run starts a fresh local cluster of 3 masters with a replica each, on
deploy/redis-cluster/node.conf (so `cluster-node-timeout` 5000 ms), waits until every
replica is in sync, starts `--instances` instances (REDIS_SHARDS 16), registers `--users`,
and clicks over HTTP (`POST /api/click`, n = 1) at `--rate` a second, alternating between
players whose shard lives on the doomed master and the others, without waiting for
answers. After `--before` seconds it SIGKILLs the master of shard `--shard`, and goes on
until its players have been counted again for `--after` seconds (or `--limit` seconds
passed). Then it compares each player's count with the clicks acknowledged to them.

One JSON line per run on stderr, one of medians on stdout:

    failover_s        the kill to the first acknowledged click of a player of that master
    refused_own       clicks of that master's players answered with an error meanwhile
    refused_others    clicks of the other masters' players answered with an error
    last_other_ok_s   the longest the other players went without an acknowledged click
    exact             every player's count equals the clicks acknowledged to them
    lost / extra      clicks acknowledged but not counted / counted but not acknowledged
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import time
from typing import Any

import cluster
import httpx
from redis.crc import key_slot
from redis_cluster import local_cluster

from service.shards import shard_of
from service.validation import canonical

NODE_CONF = cluster.ROOT / "deploy" / "redis-cluster" / "node.conf"


async def clicking(
    url: str,
    own: list[tuple[str, str]],
    others: list[tuple[str, str]],
    args: argparse.Namespace,
    kill: Any,
) -> dict[str, Any]:
    """Click on schedule, kill the master after --before s, stop --after s after the
    first acknowledged click of its players (or at --limit)."""
    acked: dict[str, int] = {}
    answers: list[tuple[float, bool, bool]] = []  # (sent, own master?, acknowledged?)
    killed_at: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def click(http: httpx.AsyncClient, name: str, token: str, is_own: bool) -> None:
        sent = time.monotonic()
        try:
            response = await http.post(
                url + "/api/click", headers={"Authorization": f"Bearer {token}"}, json={"n": 1}
            )
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            acked[name] = acked.get(name, 0) + 1
        answers.append((sent, is_own, ok))

    async with httpx.AsyncClient(timeout=30) as http:
        started = time.monotonic()
        k = 0
        while True:
            now = time.monotonic()
            if not killed_at and now - started >= args.before:
                kill()
                killed_at.append(time.monotonic())
            if killed_at:
                back = [s for s, is_own, ok in answers if is_own and ok and s > killed_at[0]]
                if (back and now - back[0] >= args.after) or now - killed_at[0] >= args.limit:
                    break
            players = own if k % 2 == 0 else others
            name, token = players[(k // 2) % len(players)]
            task = asyncio.create_task(click(http, name, token, k % 2 == 0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
            await asyncio.sleep(max(0.0, started + k / args.rate - time.monotonic()))
        await asyncio.gather(*tasks)
        counts = {}
        for name, _ in own + others:
            response = await http.get(f"{url}/api/users/{name}")
            counts[name] = int(response.json()["count"])

    t0 = killed_at[0]
    after = sorted((s, is_own, ok) for s, is_own, ok in answers if s >= t0)
    own_back = [s for s, is_own, ok in after if is_own and ok]
    other_ok = [t0] + [s for s, is_own, ok in after if not is_own and ok]
    lost = sum(max(0, acked.get(n, 0) - counts[n]) for n in counts)
    extra = sum(max(0, counts[n] - acked.get(n, 0)) for n in counts)
    return {
        "failover_s": round(own_back[0] - t0, 2) if own_back else None,
        "refused_own": sum(1 for _, is_own, ok in after if is_own and not ok),
        "refused_others": sum(1 for _, is_own, ok in after if not is_own and not ok),
        "last_other_ok_s": round(max(b - a for a, b in itertools.pairwise(other_ok)), 2)
        if len(other_ok) > 1
        else None,
        "acked": sum(acked.values()),
        "exact": lost == 0 and extra == 0,
        "lost": lost,
        "extra": extra,
    }


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    with local_cluster(3, replicas=1, conf=NODE_CONF) as nodes:
        nodes.wait_replicas_in_sync()
        deployment = cluster.Cluster(
            redis_url=f"redis://127.0.0.1:{nodes.ports[0]}/0",
            env_extra={"REDIS_URL": nodes.url, "REDIS_SHARDS": "16"},
        )
        try:
            deployment.start(args.instances)
            users = asyncio.run(cluster.register(deployment.urls, args.users))
            doomed = nodes.master_of(key_slot(f"{{s{args.shard}}}".encode()))
            own, others = [], []
            for name, token in users:
                slot = key_slot(f"{{s{shard_of(canonical(name), 16)}}}".encode())
                (own if nodes.master_of(slot) == doomed else others).append((name, token))
            line = asyncio.run(
                clicking(deployment.urls[0], own, others, args, lambda: nodes.kill(doomed))
            )
        finally:
            deployment.stop()
            shutil.rmtree(deployment.workdir, ignore_errors=True)
    return {"players_own": len(own), "players_others": len(others), **line}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--users", type=int, default=48)
    p.add_argument("--rate", type=float, default=20.0, help="clicks per second, all players")
    p.add_argument("--shard", type=int, default=1, help="the master of this shard is killed")
    p.add_argument("--before", type=float, default=2.0, help="seconds of clicks before the kill")
    p.add_argument("--after", type=float, default=3.0, help="seconds after the first own ack")
    p.add_argument("--limit", type=float, default=40.0, help="give up this long after the kill")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lines = []
    for run in range(args.runs):
        line = one_run(args)
        print(json.dumps({"run": run + 1, **line}), file=sys.stderr, flush=True)
        lines.append(line)
    summary: dict[str, Any] = {"bench": "clickky-cluster-failover", "runs": len(lines)}
    for key, value in lines[0].items():
        values = [line[key] for line in lines if line[key] is not None]
        if isinstance(value, bool):
            summary[key] = all(line[key] for line in lines)
        elif values:
            summary[key] = statistics.median(values)
            summary[f"runs_{key}"] = [line[key] for line in lines]
    summary["lost"] = sum(line["lost"] for line in lines)
    print(json.dumps(summary), flush=True)
    return 0 if summary["exact"] and all(line["failover_s"] for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
