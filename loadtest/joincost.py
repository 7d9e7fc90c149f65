"""Latency of POST /api/join on running instances, alternating between them round by round.

    .venv/bin/python loadtest/joincost.py --url before=http://127.0.0.1:8101 \\
        --url after=http://127.0.0.1:8102 [--pid before=PID --pid after=PID] \\
        [--joins 200] [--rounds 5]

Each round sends `--joins` sequential joins (fresh names) to every URL in turn, so a
noisy neighbour hits both alike. Prints one JSON line: per label, the median over
rounds of each round's p50 and p99 join latency in milliseconds and, with `--pid`
(the instance's process, Linux), of its CPU time per join. Issue 15 measured what
the activity feed (one script call and one pub/sub message per join) costs this way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import httpx


async def round_of(url: str, joins: int) -> list[float]:
    stem = uuid.uuid4().hex[:8]
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for i in range(joins):
            started = time.perf_counter()
            response = await http.post("/api/join", json={"username": f"j{stem}{i}"})
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return sorted(times)


def cpu_ms(pid: int | None) -> float:
    """User + system CPU time of a process so far, in ms (0 without a pid)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def quantile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


async def run(
    urls: dict[str, str], pids: dict[str, int], joins: int, rounds: int
) -> dict[str, dict[str, float]]:
    p50s: dict[str, list[float]] = {label: [] for label in urls}
    p99s: dict[str, list[float]] = {label: [] for label in urls}
    cpus: dict[str, list[float]] = {label: [] for label in urls}
    for _ in range(rounds):
        for label, url in urls.items():
            before = cpu_ms(pids.get(label))
            times = await round_of(url, joins)
            cpus[label].append((cpu_ms(pids.get(label)) - before) / joins)
            p50s[label].append(quantile(times, 0.5))
            p99s[label].append(quantile(times, 0.99))
    result = {}
    for label in urls:
        result[label] = {
            "p50_ms": round(statistics.median(p50s[label]), 2),
            "p99_ms": round(statistics.median(p99s[label]), 2),
        }
        if label in pids:
            result[label]["cpu_ms_per_join"] = round(statistics.median(cpus[label]), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", required=True, help="label=http://host:port")
    parser.add_argument("--pid", action="append", default=[], help="label=PID of that instance")
    parser.add_argument("--joins", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    urls = dict(item.split("=", 1) for item in args.url)
    pids = {label: int(pid) for label, pid in (item.split("=", 1) for item in args.pid)}
    result = asyncio.run(run(urls, pids, args.joins, args.rounds))
    print(json.dumps({"joins": args.joins, "rounds": args.rounds, **result}))


if __name__ == "__main__":
    main()
