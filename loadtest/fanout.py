"""Fan-out benchmark: N bare-websocket spectators on one instance, players moving the count.

For each N it starts a fresh instance, opens N spectators (Engine.IO v4 websockets
without permessage-deflate, spread over --procs processes), measures the idle RSS
they add, then lets four HTTP players click 40 times a second in all, on a
fixed clock (so every tick changes), and measures for --duration seconds. One
JSON line per (variant, N) on stdout, the median of --repeat runs; every run on
stderr. Runs alternate between
variants (before/after), so a noisy machine hits them alike:

    .venv/bin/python loadtest/fanout.py --n 1000,3000,5000
    .venv/bin/python loadtest/fanout.py --n 1000,3000 --repeat 3 \\
        --variant 'before=/tmp/before' --variant 'after=.' --variant 'wsproto=.|--ws wsproto'

Figures: `news_per_s` (distinct tick ids any spectator got per second: the ticks
that had news), `states_per_s` (mean states a spectator received per second; `_min` the
worst spectator's), `delay_ms_p50/p99` (tick start to arrival: the tick id times the tick
on Redis's clock against the receiver's wall clock, same host; if tick ids are
not time-based, the start of the wall-clock tick the state arrived in, which
under-reports delays above one tick), `us_per_msg` (instance CPU from
/proc/PID/stat over the window / states delivered in it), `rss_kb_per_conn`
(instance RSS with N idle spectators minus without, / N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import cluster
import httpx
import wire
from client import SocketIO

TICK = re.compile(r'"tick":(-?\d+)')
# Players taking turns at 40 clicks a second in all: 10 each, half the rate limit.
PLAYERS = 4


class Watcher(SocketIO):
    """A spectator that keeps, for states arriving inside the window, count and delay."""

    window = (math.inf, math.inf)
    interval_s = 0.1
    offset = 0.0  # wall clock minus monotonic clock
    delays = array("d")
    ticks: set[int] = set()  # tick ids seen in the window, by any spectator of this process

    def __init__(self, auth: Any, host: str, deflate: bool = False) -> None:
        super().__init__(auth, host, deflate)
        self.count = 0
        self.last_tick = -1
        self.stale = 0

    def on_event(self, text: str, now: float) -> None:
        if not text.startswith(wire.STATE_PREFIX):
            return
        wall = now + self.offset
        found = TICK.search(text, len(text) - 40)
        tick = int(found.group(1)) if found else -1
        if tick <= self.last_tick:
            self.stale += 1
        self.last_tick = tick
        start, end = self.window
        if start <= wall < end:
            self.count += 1
            self.ticks.add(tick)
            started = tick * self.interval_s
            if abs(wall - started) > 60:  # not a time-based tick id
                started = wall // self.interval_s * self.interval_s
            self.delays.append(wall - started)


async def _watch(conn: Any, spec: dict[str, Any]) -> None:
    Watcher.interval_s = spec["interval_ms"] / 1000
    Watcher.offset = time.time() - time.monotonic()
    gate = asyncio.Semaphore(32)

    async def one() -> Watcher | None:
        async with gate:
            for _ in range(3):
                with contextlib.suppress(Exception):
                    return await Watcher.open(  # type: ignore[no-any-return]
                        spec["url"], None, timeout=30, deflate=spec["deflate"]
                    )
                await asyncio.sleep(0.5)
            return None

    opened = await asyncio.gather(*(one() for _ in range(spec["count"])))
    watchers = [w for w in opened if w is not None]
    conn.send({"ready": len(watchers)})
    loop = asyncio.get_running_loop()
    Watcher.window = await loop.run_in_executor(None, conn.recv)
    await asyncio.sleep(max(0.0, Watcher.window[1] - time.time()) + 1.0)
    conn.send(
        {
            "counts": [w.count for w in watchers],
            "delays": Watcher.delays.tobytes(),
            "stale": sum(w.stale for w in watchers),
            "ticks": sorted(Watcher.ticks),
            "closed": sum(w.closed for w in watchers),
        }
    )
    for w in watchers:
        w.close()


def spectators_main(conn: Any, spec: dict[str, Any]) -> None:
    """Entry point of one spectator process."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_watch(conn, spec))


def _click(url: str, tokens: list[str], stop: threading.Event) -> None:
    """Players clicking on a fixed clock (one click every 25 ms, taking turns), each
    click sent without waiting for the previous answer: clicks stay spread over every
    tick however slowly the server answers, so every tick has news."""

    async def run() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            pending: set[asyncio.Task[Any]] = set()
            turn = 0
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {tokens[turn % len(tokens)]}"}
                task = asyncio.create_task(
                    http.post(url + "/api/click", json={"n": 1}, headers=headers)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
                turn += 1
                await asyncio.sleep(0.025)
            await asyncio.gather(*pending, return_exceptions=True)

    asyncio.run(run())


def _profile(args: argparse.Namespace, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy record the instance for the window (collapsed stacks for hotspots.py)."""
    if not args.profile:
        return None
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--duration", str(int(args.duration))),
            *("--rate", "100", "--format", "raw", "--nonblocking", "-o", str(out / f"{name}.txt")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_once(args: argparse.Namespace, label: str, code: Path, extra: list[str], n: int) -> dict:
    deployment = cluster.Cluster(
        redis_url=args.redis_url,
        server_args=extra,
        env_extra={"BROADCAST_INTERVAL_MS": str(args.interval_ms), "LOG_LEVEL": "ERROR"},
        cwd=code,
    )
    children: list[Any] = []
    stop = threading.Event()
    clicker: threading.Thread | None = None
    try:
        deployment.start(1)
        url, pid = deployment.urls[0], deployment.pids[0]
        players = asyncio.run(cluster.register([url], PLAYERS))
        time.sleep(1.0)
        rss_before = cluster.rss_mb(pid)
        ctx = multiprocessing.get_context("fork")
        for index in range(args.procs):
            count = n // args.procs + (1 if index < n % args.procs else 0)
            parent, child = ctx.Pipe()
            spec = {
                "url": url,
                "count": count,
                "interval_ms": args.interval_ms,
                "deflate": args.deflate,
            }
            proc = ctx.Process(target=spectators_main, args=(child, spec), daemon=True)
            proc.start()
            children.append((proc, parent))
        opened = sum(parent.recv()["ready"] for _, parent in children)
        time.sleep(2.0)
        rss_idle = cluster.rss_mb(pid)
        tokens = [token for _, token in players]
        clicker = threading.Thread(target=_click, args=(url, tokens, stop), daemon=True)
        clicker.start()
        start = time.time() + args.warmup
        end = start + args.duration
        for _, parent in children:
            parent.send((start, end))
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cluster.cpu_seconds(pid)
        spy = _profile(args, pid, f"{label}-n{n}")
        time.sleep(max(0.0, end - time.time()))
        cpu1 = cluster.cpu_seconds(pid)
        if spy is not None:
            spy.wait(args.duration + 30)
        rss_busy = cluster.rss_mb(pid)
        results = [parent.recv() for _, parent in children]
    finally:
        stop.set()
        if clicker is not None:
            clicker.join(15)
        for proc, _ in children:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        deployment.stop()
        deployment.delete_keys()
    counts = [c for r in results for c in r["counts"]]
    delays: list[float] = []
    for r in results:
        chunk = array("d")
        chunk.frombytes(r["delays"])
        delays.extend(chunk)
    delivered = sum(counts)
    rates = [c / args.duration for c in counts]
    return {
        "variant": label,
        "n": n,
        "deflate": args.deflate,
        "opened": opened,
        "news_per_s": round(len(set().union(*(r["ticks"] for r in results))) / args.duration, 2),
        "states_per_s": round(statistics.mean(rates), 2) if rates else 0,
        "states_per_s_min": round(min(rates), 2) if rates else 0,
        "delay_ms_p50": round((percentile(delays, 50) or 0) * 1000, 1),
        "delay_ms_p99": round((percentile(delays, 99) or 0) * 1000, 1),
        "us_per_msg": round((cpu1 - cpu0) / delivered * 1e6, 1) if delivered else None,
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / args.duration, 1),
        "rss_kb_per_conn": round((rss_idle - rss_before) * 1024 / max(1, opened), 1),
        "rss_mb": [rss_before, rss_idle, rss_busy],
        "stale_states": sum(r["stale"] for r in results),
        "dropped": sum(r["closed"] for r in results),
        "loadavg": cluster.load_average(),
    }


def median_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in lines[0].items():
        values = [line[key] for line in lines]
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "n":
            numbers = [v for v in values if v is not None]
            merged[key] = round(statistics.median(numbers), 2) if numbers else None
        else:
            merged[key] = value
    merged["runs"] = len(lines)
    merged["runs_us_per_msg"] = [line["us_per_msg"] for line in lines]
    return merged


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", default="1000,3000,5000", help="spectator counts, comma-separated")
    p.add_argument("--procs", type=int, default=3, help="spectator processes")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--interval-ms", type=int, default=100)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument(
        "--deflate", action="store_true", help="spectators offer permessage-deflate, as browsers do"
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy record the instance into DIR")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="LABEL=DIR[|uvicorn options]: the code to run (a checkout) and how; repeatable",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = []
    for spec in args.variant or ["current=."]:
        label, _, rest = spec.partition("=")
        directory, _, options = rest.partition("|")
        variants.append((label, Path(directory or ".").resolve(), options.split()))
    sizes = [int(x) for x in args.n.split(",")]
    lines: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for n in sizes:
            for label, code, options in variants:
                line = run_once(args, label, code, options, n)
                print(json.dumps(line), file=sys.stderr, flush=True)
                lines.setdefault((label, n), []).append(line)
    for runs in lines.values():
        print(json.dumps(median_line(runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
