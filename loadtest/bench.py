"""Clickky benchmark: N Socket.IO players and spectators against 1..k real instances.

Prints one JSON line per configuration (median of --repeat runs) on stdout, and
every single run's line on stderr. See loadtest/README.md for what each figure
means. Typical runs:

    .venv/bin/python loadtest/bench.py                      # 2 instances, the issue's bar
    .venv/bin/python loadtest/bench.py --repeat 3           # medians of 3 runs
    .venv/bin/python loadtest/bench.py --scale 1,2,3 --players 150 --duration 15
    .venv/bin/python loadtest/bench.py --url http://127.0.0.1:8201 --url http://...:8202
    .venv/bin/python loadtest/bench.py --overload 2 --cpu-quota 0.5 --duration 60   # overload
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from array import array
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cluster
import httpx
import redis
import wire
from client import Refused, SocketIO
from quota import CpuQuota

GROUPS = 10  # phase groups per batch interval, so the offered load is smooth, not bursty
ACK_WAIT_S = 60.0  # after the run, how long to wait for acks still in flight (lost needs all)
LATE_S = 10.0  # an answer later than this is a time-out for a client (the bound)
DRAIN_S = 1.5  # after the run, how long spectators keep listening for the last clicks
STATE_LEN = len(wire.STATE_PREFIX)
LOCAL = ("from", "to", "draining", "drained")  # book entries that stay in the generator


# -- the load generator (runs in child processes) ----------------------------------------------
class Player(SocketIO):
    """Clicks on schedule and books every ack: counted, refused (by code), or never answered."""

    def __init__(
        self, auth: Any, host: str, *, book: dict[str, Any], inst: int, single: bool = False
    ) -> None:
        super().__init__(auth, host)
        self.book = book
        self.inst = inst
        self.single = single  # one event per click, on schedule, whatever is in flight
        self.pending: dict[int, tuple[float, int]] = {}
        self.credit = random.random()
        self.leaving = False

    def click(self, n: int, now: float) -> None:
        self.pending[self.emit("click", {"n": n})] = (now, n)
        self.book["sent"] += n
        self.book["sent_events"] += 1
        if self.book["from"] <= now < self.book["to"]:
            self.book["win_sent_events"] += 1

    def on_ack(self, ack_id: int, text: str, now: float) -> None:
        sent, n = self.pending.pop(ack_id, (0.0, 0))
        book = self.book
        if not self.pending and book["draining"] is not None:
            book["draining"].discard(self)
            if not book["draining"]:
                book["drained"].set()
        if now - sent > LATE_S:
            book["late"] += n
        _, body = wire.split_ack(text)
        count = body.get("global") if isinstance(body, dict) else None
        if count is None:
            code = body.get("error", "?") if isinstance(body, dict) else "?"
            book["refused"][code] += n
            if code == "overloaded" and book["from"] <= sent < book["to"]:
                book["win_overloaded"] += n
            return
        book["acked"] += n
        if book["from"] <= sent < book["to"]:
            book["win_acked"] += n
            book["win_events"] += 1
            book["ack_s"].append(now - sent)
            book["click_t"].append(sent)
            book["click_g"].append(count)
            book["click_i"].append(self.inst)
            book["click_n"].append(n)

    def on_event(self, text: str, now: float) -> None:
        self.book["player_states"] += 1

    def on_closed(self) -> None:
        if not self.leaving:
            self.book["disconnects"] += 1
        draining = self.book["draining"]
        if draining is not None and self in draining:
            draining.discard(self)
            if not draining:
                self.book["drained"].set()


class Spectator(SocketIO):
    """Records when each state arrived and which global count it showed."""

    def __init__(self, auth: Any, host: str, *, inst: int, deflate: bool = False) -> None:
        super().__init__(auth, host, deflate)
        self.inst = inst
        self.times = array("d")
        self.walls = array("d")
        self.globals = array("q")
        self.ticks = array("q")
        self.messages = 0

    def on_event(self, text: str, now: float) -> None:
        if text.startswith(wire.STATE_PREFIX):
            body = json.loads(text[STATE_LEN:-1])
            self.messages += 1
            self.times.append(now)
            self.walls.append(time.time())
            self.globals.append(int(body["global"]))
            self.ticks.append(int(body.get("tick", -1)))


async def _open_all(factories: list[Any], concurrency: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(factory: Any) -> Any:
        async with gate:
            for attempt in range(20):
                try:
                    return await factory()
                except Refused as exc:  # an overloaded instance: come back when it says
                    data = exc.body.get("data") if isinstance(exc.body, dict) else None
                    body = data if isinstance(data, dict) else {}
                    if body.get("error") != "overloaded" or attempt == 19:
                        raise
                    await asyncio.sleep(body.get("retry_after_ms", 1000) / 1000)

    return list(await asyncio.gather(*(one(f) for f in factories)))


async def _generate(conn: Any, spec: dict[str, Any]) -> None:
    urls = spec["urls"]
    book: dict[str, Any] = {
        "sent": 0,
        "sent_events": 0,
        "win_sent_events": 0,
        "acked": 0,
        "win_acked": 0,
        "win_events": 0,
        "refused": Tally(),
        "late": 0,
        "win_overloaded": 0,
        "disconnects": 0,
        "player_states": 0,
        "ack_s": array("d"),
        "click_t": array("d"),
        "click_g": array("q"),
        "click_i": array("b"),
        "click_n": array("b"),
        "from": float("inf"),
        "to": float("inf"),
        "draining": None,
        "drained": asyncio.Event(),
    }
    spectators: list[Spectator] = await _open_all(
        [
            (lambda i=i: Spectator.open(urls[i], None, inst=i, deflate=spec["deflate"]))
            for i in spec["spectators"]  # instance index of each spectator
        ]
    )
    players: list[Player] = await _open_all(
        [
            (
                lambda t=token, i=i, one=one: Player.open(
                    urls[i], {"token": t}, book=book, inst=i, single=one
                )
            )
            for token, i, one in spec["players"]
        ]
    )
    loop = asyncio.get_running_loop()
    conn.send("ready")
    t0, t_measure, t_end = await loop.run_in_executor(None, conn.recv)
    book["from"], book["to"] = t_measure, t_end

    per_batch = spec["cps"] * spec["batch_s"]
    closed_loop = not spec["open_loop"]
    # The page never sends more than the rate limit in one batch (more is refused whole).
    cap = 50 if spec["open_loop"] else min(50, spec["rate_limit"])
    # Calibrating: one click per event, one in flight per player (a closed loop, so the
    # server is saturated without a standing queue): the events/s it can take.
    if spec["calibrate"]:
        cap = 1
    step = spec["batch_s"] / GROUPS
    phase = spec["worker"] / spec["workers"] * step
    random.shuffle(players)
    groups = [players[g::GROUPS] for g in range(GROUPS)]
    lag = array("d")
    snap: dict[str, Any] = {}
    cpu = [time.process_time(), 0.0]

    def snapshot(name: str) -> None:
        snap[name] = [(s.messages, s.payload_in, s.wire_in) for s in spectators]

    k = 0
    while True:
        target = t0 + phase + k * step
        if target >= t_end:
            break
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        if "from" not in snap and now >= t_measure:
            snapshot("from")
            cpu[0] = time.process_time()
        if now >= t_measure:
            lag.append(now - target)
        for p in groups[k % GROUPS]:
            p.credit += per_batch
            if p.single:
                while p.credit >= 1 and not p.closed:
                    p.credit -= 1
                    p.click(1, now)
                continue
            if closed_loop and p.pending:
                continue  # like the page: one batch in flight; later clicks join the next
            n = min(int(p.credit), cap)
            if n and not p.closed:
                p.credit -= n
                p.click(n, now)
        k += 1
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    snapshot("to")
    cpu[1] = time.process_time()
    if "from" not in snap:
        snap["from"] = snap["to"]

    book["draining"] = {p for p in players if p.pending and not p.closed}
    if book["draining"]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(book["drained"].wait(), ACK_WAIT_S)
    # A few more ticks, so spectators can see the last acknowledged clicks.
    await asyncio.sleep(max(0.5, t_end + DRAIN_S - time.monotonic()))
    unacked = sum(n for p in players for _, n in p.pending.values())
    unsent = sum(int(p.credit) for p in players)
    for p in players:
        p.leaving = True
        p.close()
    for s in spectators:
        s.close()

    conn.send(
        {
            "book": {k: v for k, v in book.items() if k not in LOCAL},
            "unacked": unacked,
            "unsent": unsent,
            "lag_s": lag,
            "cpu_s": cpu[1] - cpu[0],
            "spectators": [
                {
                    "inst": s.inst,
                    "times": s.times,
                    "walls": s.walls,
                    "globals": s.globals,
                    "ticks": s.ticks,
                    "window": [b - a for a, b in zip(snap["from"][j], snap["to"][j], strict=True)],
                }
                for j, s in enumerate(spectators)
            ],
        }
    )


def generator_main(conn: Any, spec: dict[str, Any]) -> None:
    """Entry point of one load generator process."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    try:
        asyncio.run(_generate(conn, spec))
    except Exception as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        raise


# -- figures -----------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def visibility(
    clicks: list[tuple[float, int, int]], spectators: list[dict[str, Any]], instances: int
) -> tuple[list[float], int]:
    """Click-to-visible latencies: for each acked click and each spectator on ANOTHER instance
    (the same one when there is only one), the time from sending the click to the first state
    whose global includes it. Returns (latencies in s, count of click/spectator pairs unseen)."""
    latencies: list[float] = []
    unseen = 0
    for s in spectators:
        times, globals_ = s["times"], s["globals"]
        size = len(globals_)
        for sent, count, inst in clicks:
            if instances > 1 and inst == s["inst"]:
                continue
            index = bisect_left(globals_, count)
            if index < size:
                latencies.append(times[index] - sent)
            else:
                unseen += 1
    return latencies, unseen


def summarize(
    args: argparse.Namespace,
    instances: int,
    results: list[dict[str, Any]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    books = [r["book"] for r in results]
    duration = args.duration
    acked = sum(b["acked"] for b in books)
    win_acked = sum(b["win_acked"] for b in books)
    refused: Tally[str] = Tally()
    for b in books:
        refused.update(b["refused"])
    sent = sum(b["sent"] for b in books)
    refused_all = sum(refused.values())
    clicks = [
        (t, g, i)
        for b in books
        for t, g, i in zip(b["click_t"], b["click_g"], b["click_i"], strict=True)
    ]
    t_from = extra.pop("t_measure")
    # acked clicks per second of the window, by send time: the slowest second shows "sustained"
    by_second = [0] * max(1, int(duration))
    for b in books:
        for t, n in zip(b["click_t"], b["click_n"], strict=True):
            second = int(t - t_from)
            if 0 <= second < len(by_second):
                by_second[second] += n
    spectators = [s for r in results for s in r["spectators"]]
    started = time.monotonic()
    latencies, unseen = visibility(clicks, spectators, instances)
    spent = time.monotonic() - started
    tick_delays: list[float] = []
    gaps: list[float] = []
    duplicates = skipped = 0
    for s in spectators:
        times, walls, ticks = s["times"], s["walls"], s["ticks"]
        for j in range(1, len(ticks)):
            if ticks[j] <= ticks[j - 1]:
                duplicates += 1
        for j, t in enumerate(times):
            if t_from <= t < t_from + duration:
                tick_delays.append(walls[j] - ticks[j] * args.tick_ms / 1000)
                if j and times[j - 1] >= t_from:
                    gaps.append(t - times[j - 1])
                    skipped += max(0, ticks[j] - ticks[j - 1] - 1)
    windows = [s["window"] for s in spectators] or [[0, 0, 0]]
    n_spec = max(1, len(spectators))
    acks = [x for b in books for x in b["ack_s"]]
    lags = [x for r in results for x in r["lag_s"]]
    server_cpu = extra.pop("server_cpu_s")
    redis_cpu = extra.pop("redis_cpu_s")
    loadgen_cpu = sum(r["cpu_s"] for r in results)
    busy = extra.pop("machine_busy_s")
    others = busy - server_cpu - redis_cpu - loadgen_cpu - extra.pop("parent_cpu_s")
    delta = extra.pop("counter_delta")
    evalsha_calls, evalsha_usec = extra.pop("redis_evalsha")
    win_events = sum(b["win_events"] for b in books)
    win_sent = sum(b["win_sent_events"] for b in books)
    line: dict[str, Any] = {
        "instances": instances,
        "users": args.users,
        "players": args.players,
        "spectators": args.spectators,
        "name_len": args.name_len,
        "deflate": args.deflate,
        "offered_cps": round(args.players * args.cps),
        "loop": "open" if args.open_loop else "closed",
        "rate_limit_cps": args.rate_limit_cps or 20,
        "tick_ms": args.tick_ms,
        "server_args": " ".join(args.server_arg),
        "app": args.app,
        "redis": "private" if args.own_redis else "shared",
        "duration_s": duration,
        "clicks_per_s": round(win_acked / duration, 1),
        "click_events_per_s": round(win_events / duration, 1),
        "min_1s_clicks": min(by_second),
        "acked": acked,
        "counter_delta": delta,
        "lost": max(0, acked - delta),
        "unacked": sum(r["unacked"] for r in results),
        "unsent_at_end": sum(r["unsent"] for r in results),
        "mean_batch_n": round(win_acked / win_events, 2) if win_events else None,
        "extra_counted": max(0, delta - acked),
        "sent": sent,
        # The equation: every click sent was answered (counted or refused), and the
        # counter moved by exactly the clicks acknowledged.
        "exact": sent == acked + refused_all + sum(r["unacked"] for r in results)
        and delta == acked
        and sum(r["unacked"] for r in results) == 0,
        "answered_late": sum(b["late"] for b in books),
        "refused_per_s": round(sum(b["win_overloaded"] for b in books) / duration, 1),
        "refused_rate_limited": refused.pop("rate_limited", 0),
        "refused_other": dict(refused),
        "disconnects": sum(b["disconnects"] for b in books),
        "ack_ms_p50": ms(percentile(acks, 50)),
        "ack_ms_p99": ms(percentile(acks, 99)),
        "visible_ms_p50": ms(percentile(latencies, 50)),
        "visible_ms_p99": ms(percentile(latencies, 99)),
        "visible_ms_max": ms(max(latencies, default=None)),
        "visible_pairs": len(latencies),
        "visible_unseen": unseen,
        "tick_delay_ms_p50": ms(percentile(tick_delays, 50)),
        "tick_delay_ms_p99": ms(percentile(tick_delays, 99)),
        "tick_gap_ms_p50": ms(percentile(gaps, 50)),
        "tick_gap_ms_p99": ms(percentile(gaps, 99)),
        "tick_gap_ms_max": ms(max(gaps, default=None)),
        "duplicate_ticks": duplicates,
        "skipped_ticks_per_s": round(skipped / max(1, len(spectators)) / duration, 2),
        "spectator_msgs_per_s": round(sum(w[0] for w in windows) / n_spec / duration, 2),
        "spectator_payload_Bps": round(sum(w[1] for w in windows) / n_spec / duration),
        "spectator_wire_Bps": round(sum(w[2] for w in windows) / n_spec / duration),
        "server_cpu_pct": round(100 * server_cpu / duration, 1) if server_cpu else None,
        "server_cpu_ms_per_click": round(1000 * server_cpu / win_acked, 4)
        if server_cpu and win_acked
        else None,
        "server_cpu_ms_per_event": round(1000 * server_cpu / win_events, 4)
        if server_cpu and win_events
        else None,
        # Per click event sent in the window, served or refused: when nearly all are refused
        # (far over capacity), this is about what a refusal costs (ticks included).
        "server_cpu_ms_per_sent_event": round(1000 * server_cpu / win_sent, 4)
        if server_cpu and win_sent
        else None,
        "redis_cpu_pct": round(100 * redis_cpu / duration, 1),
        "redis_cpu_ms_per_click": round(1000 * redis_cpu / win_acked, 4) if win_acked else None,
        # Server-side time of EVALSHA (the click script, plus a few tick reads) from
        # INFO commandstats: Redis's own view, other tenants' scripts included.
        "redis_evalsha_per_s": round(evalsha_calls / duration),
        "redis_evalsha_us": round(evalsha_usec / evalsha_calls, 1) if evalsha_calls else None,
        "loadgen_cpu_pct": round(100 * loadgen_cpu / duration, 1),
        "loadgen_lag_ms_p99": ms(percentile(lags, 99)),
        # Every core's busy time over the window, and the part no process of this run used:
        # other people's work on a shared machine (noise), and py-spy when profiling.
        "machine_cpu_pct": round(100 * busy / duration, 1),
        "others_cpu_pct": round(100 * max(0.0, others) / duration, 1),
        "analysis_s": round(spent, 2),
    }
    line.update(extra)
    return line


# -- orchestration -----------------------------------------------------------------------------
def run_once(
    args: argparse.Namespace,
    deployment: cluster.Cluster,
    tokens: list[str],
    run_no: int,
    probe: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """One measured run. `probe`, if given, is called at the window's start and end; the
    line's `probe` is the pair of what it returned (cluster_bench.py reads every master)."""
    urls = deployment.urls
    k = len(urls)
    # The first --single-players send one event per click; the rest batch like the page.
    players = [(tokens[i], i % k, i < args.single_players) for i in range(args.players)]
    spectators = [j % k for j in range(args.spectators)]
    ctx = multiprocessing.get_context("spawn")
    workers = max(1, args.procs)
    pipes, procs = [], []
    for w in range(workers):
        parent, child = ctx.Pipe()
        spec = {
            "urls": urls,
            "players": players[w::workers],
            "spectators": spectators[w::workers],
            "cps": args.cps,
            "open_loop": args.open_loop,
            "rate_limit": args.rate_limit_cps or 20,
            "deflate": args.deflate,
            "batch_s": args.batch_ms / 1000,
            "calibrate": getattr(args, "calibrating", False),
            "worker": w,
            "workers": workers,
        }
        proc = ctx.Process(target=generator_main, args=(child, spec), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    profilers: list[subprocess.Popen[bytes]] = []
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a load generator did not connect its sockets in 120 s")
            message = pipe.recv()
            if message != "ready":
                raise RuntimeError(f"load generator failed: {message}")
        start_count = cluster.global_count(urls[0])
        t0 = time.monotonic() + 0.5
        t_measure = t0 + args.warmup
        t_end = t_measure + args.duration
        for pipe in pipes:
            pipe.send((t0, t_measure, t_end))
        rcli = redis.Redis.from_url(deployment.redis_url)
        time.sleep(max(0.0, t_measure - time.monotonic()))
        cpu_a, redis_a = deployment.server_cpu(), cluster.redis_cpu_seconds(rcli)
        commands_a = cluster.redis_command_stats(rcli)
        probe_a = probe() if probe else None
        busy_a, mine_a = cluster.machine_busy_seconds(), time.process_time()
        load_at_start = cluster.load_average()
        if args.profile:
            profilers = start_profilers(args, deployment, run_no)
        time.sleep(max(0.0, t_end - time.monotonic()))
        cpu_b, redis_b = deployment.server_cpu(), cluster.redis_cpu_seconds(rcli)
        probe_b = probe() if probe else None
        rss = [cluster.rss_mb(pid) for pid in deployment.pids]
        commands_b = cluster.redis_command_stats(rcli)
        busy_b, mine_b = cluster.machine_busy_seconds(), time.process_time()
        rcli.close()
        results = []
        for pipe in pipes:
            if not pipe.poll(ACK_WAIT_S + DRAIN_S + 60):
                raise RuntimeError("a load generator did not report")
            result = pipe.recv()
            if "error" in result:
                raise RuntimeError(f"load generator failed: {result['error']}")
            results.append(result)
        end_count = cluster.global_count(urls[0])
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for profiler in profilers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(args.duration + 30)
            if profiler.poll() is None:
                profiler.kill()
                profiler.wait()
    if args.dump:
        with open(f"{args.dump}.k{k}.run{run_no}.pickle", "wb") as f:
            pickle.dump({"t_measure": t_measure, "results": results}, f)
    line = summarize(
        args,
        k,
        results,
        {
            "t_measure": t_measure,
            "server_cpu_s": sum(cpu_b) - sum(cpu_a),
            "server_cpu_pct_each": [
                round(100 * (b - a) / args.duration, 1) for a, b in zip(cpu_a, cpu_b, strict=True)
            ],
            "redis_cpu_s": redis_b - redis_a,
            "redis_evalsha": [
                b - a
                for a, b in zip(
                    commands_a.get("evalsha", (0, 0.0)),
                    commands_b.get("evalsha", (0, 0.0)),
                    strict=True,
                )
            ],
            "machine_busy_s": busy_b - busy_a,
            "parent_cpu_s": mine_b - mine_a,
            "counter_delta": end_count - start_count,
            "loadavg": load_at_start,
            "server_rss_mb_each": rss,
        },
    )
    if probe:
        line["probe"] = (probe_a, probe_b)
    return line


def start_profilers(
    args: argparse.Namespace, deployment: cluster.Cluster, run_no: int
) -> list[subprocess.Popen[bytes]]:
    """py-spy record each instance for the measured window, as collapsed stacks."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for index, pid in enumerate(deployment.pids):
        target = out / f"k{len(deployment.pids)}-run{run_no}-inst{index}.txt"
        procs.append(
            subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(pid), "--duration", str(int(args.duration))),
                    *("--rate", "100", "--format", "raw", "--nonblocking", "-o", str(target)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


OVERLOAD_BAR = {"visible_ms_p99": 1000, "states_per_s": 8, "goodput": 0.75}


def overload_bar(line: dict[str, Any]) -> dict[str, bool]:
    """Issue 10's bar for an --overload run, judged against the calibrated capacity."""
    capacity = line["capacity_events_per_s"]
    return {
        "visible_p99<=1s": (line["visible_ms_p99"] or 1e9) <= OVERLOAD_BAR["visible_ms_p99"],
        "states>=8/s": line["spectator_msgs_per_s"] >= OVERLOAD_BAR["states_per_s"],
        "reads<=1s": (line["state_read_ms_max"] or 1e9) <= 1000
        and (line["page_read_ms_max"] or 1e9) <= 1000
        and line["reads_failed"] == 0,
        "goodput>=75%": line["click_events_per_s"] >= OVERLOAD_BAR["goodput"] * capacity,
        "no_timeouts": line["answered_late"] == 0 and line["unacked"] == 0,
        "counted==acked": line["exact"],
    }


class ReadPoller(threading.Thread):
    """Reads GET /api/state and the play page from every instance, one after the other,
    through a run: how long a person waits for them while the instances are overloaded."""

    PATHS = ("/api/state", "/")

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.stop = threading.Event()
        self.seconds: dict[str, list[float]] = {path: [] for path in self.PATHS}
        self.failed = 0

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.wait(0.2):
                for url in self.urls:
                    for path in self.PATHS:
                        started = time.monotonic()
                        try:
                            ok = http.get(url + path).status_code == 200
                        except httpx.HTTPError:
                            ok = False
                        self.seconds[path].append(time.monotonic() - started)
                        self.failed += not ok

    def __enter__(self) -> ReadPoller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(15)

    def figures(self) -> dict[str, Any]:
        state, page = self.seconds["/api/state"], self.seconds["/"]
        return {
            "state_read_ms_p99": ms(percentile(state, 99)),
            "state_read_ms_max": ms(max(state, default=None)),
            "page_read_ms_max": ms(max(page, default=None)),
            "reads_failed": self.failed,
        }


def overload_run(
    args: argparse.Namespace, deployment: cluster.Cluster, tokens: list[str], run_no: int
) -> dict[str, Any]:
    """Measure capacity (click events/s, one click per event, one in flight per player), then
    offer --overload times that from one-event-per-click players plus --page-players."""
    calibration = argparse.Namespace(**vars(args))
    calibration.calibrating = True
    calibration.duration = args.calibrate
    calibration.single_players = 0
    calibration.players = min(args.users, args.players)
    probe = run_once(calibration, deployment, tokens, run_no)
    print(json.dumps({"calibration": probe}), file=sys.stderr, flush=True)
    capacity = probe["click_events_per_s"]
    measured = argparse.Namespace(**vars(args))
    singles = int(args.overload * capacity / args.cps + 0.5)
    poller = ReadPoller(deployment.urls)
    measured.single_players = singles
    measured.players = singles + args.page_players
    if measured.players > len(tokens):
        raise RuntimeError(f"--overload needs {measured.players} users; raise --users")
    with poller:
        line = run_once(measured, deployment, tokens, run_no)
    line.update(poller.figures())
    line["capacity_events_per_s"] = capacity
    line["overload"] = args.overload
    line["single_players"] = singles
    line["page_players"] = args.page_players
    line["cpu_quota_cores"] = args.cpu_quota
    return line


BAR = {"clicks_per_s": 4000, "lost": 0, "visible_ms_p99": 250, "spectator_payload_Bps": 5000}


def bar(line: dict[str, Any]) -> dict[str, bool]:
    """The issue's bar, judged on this line (meaningful for 2 instances, 10,000 users, 30 s)."""
    return {
        "clicks_per_s>=4000": (line["clicks_per_s"] or 0) >= BAR["clicks_per_s"],
        "lost==0": line["lost"] == 0 and line["unacked"] == 0,
        "visible_p99<=250ms": (line["visible_ms_p99"] or 1e9) <= BAR["visible_ms_p99"],
        "spectator<=5KB/s": line["spectator_payload_Bps"] <= BAR["spectator_payload_Bps"],
    }


def median_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures over repeated runs; the spread of the headline ones."""
    merged: dict[str, Any] = {}
    for key, value in lines[0].items():
        values = [line[key] for line in lines]
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers = [v for v in values if v is not None]
            middle = statistics.median(numbers) if numbers else None
            if isinstance(middle, float) and middle.is_integer() and isinstance(value, int):
                middle = int(middle)
            merged[key] = round(middle, 4) if isinstance(middle, float) else middle
        elif key == "loadavg":
            merged[key] = values
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            merged[key] = [
                round(statistics.median(column), 2) for column in zip(*values, strict=True)
            ]
        else:
            merged[key] = value
    merged["lost"] = sum(line["lost"] for line in lines)  # any loss in any run counts
    merged["unacked"] = sum(line["unacked"] for line in lines)
    if "exact" in merged:
        merged["exact"] = all(line["exact"] for line in lines)
    merged["runs"] = len(lines)
    for key in ("clicks_per_s", "visible_ms_p99", "server_cpu_ms_per_click"):
        merged[f"runs_{key}"] = [line[key] for line in lines]
    return merged


def wait_quiet(limit_s: float, pct: float) -> float:
    """Wait (up to limit_s) until the machine's busy time over 3 s is under pct of one core.

    Our instances are idle between runs, so what is busy then is someone else's work.
    Returns the seconds waited (limit_s when it never got quiet)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cluster.machine_busy_seconds()
        time.sleep(3)
        if 100 * (cluster.machine_busy_seconds() - before) / 3 < pct:
            break
    return round(time.monotonic() - started, 1)


def machine() -> dict[str, Any]:
    def git(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.check_output(
                ["git", *argv], cwd=cluster.ROOT, text=True, stderr=subprocess.DEVNULL
            ).strip()
        return "?"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git("rev-parse", "--short", "HEAD")
        + ("+dirty" if git("status", "--porcelain", "--", "service", "worker") else ""),
        "nproc": os.cpu_count(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--instances", type=int, default=2, help="instances to start (default 2)")
    p.add_argument(
        "--url", action="append", default=[], help="use running instances instead (repeatable)"
    )
    p.add_argument(
        "--server-pid", type=int, action="append", default=[], help="their pids, for CPU figures"
    )
    p.add_argument("--scale", default="", help="instance counts to run in turn, e.g. 1,2,3")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument(
        "--own-redis",
        action="store_true",
        help="start a private redis-server for the run (Redis CPU figures are then ours alone)",
    )
    p.add_argument("--users", type=int, default=10_000, help="users registered first")
    p.add_argument("--players", type=int, default=250, help="concurrent players (socket each)")
    p.add_argument("--spectators", type=int, default=20, help="spectator sockets")
    p.add_argument("--cps", type=float, default=18.0, help="clicks/s offered per player")
    p.add_argument("--batch-ms", type=int, default=100, help="a player sends its clicks this often")
    p.add_argument(
        "--open-loop",
        action="store_true",
        help="send every batch on schedule even while the last one awaits its ack (a stress "
        "test: the page keeps one batch in flight, so a slow server gets fewer, larger ones)",
    )
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument(
        "--deflate",
        action="store_true",
        help="spectators offer permessage-deflate, as browsers do (wire bytes are compressed)",
    )
    p.add_argument(
        "--name-len",
        type=int,
        default=7,
        help="username length (7..32); the top 10 in every state carries ten of them",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (medians)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    p.add_argument("--rate-limit-cps", type=int, help="RATE_LIMIT_CPS for started instances")
    p.add_argument("--tick-ms", type=int, default=100, help="BROADCAST_INTERVAL_MS")
    p.add_argument("--max-wait-ms", type=int, help="MAX_WAIT_MS for started instances")
    p.add_argument(
        "--app",
        default="service.app:app",
        help="the ASGI app started instances serve (to measure a patched copy; PYTHONPATH)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra uvicorn option for started instances, e.g. --server-arg=--loop=asyncio",
    )
    p.add_argument(
        "--overload",
        type=float,
        default=0.0,
        metavar="FACTOR",
        help="measure capacity for --calibrate s, then offer FACTOR times it (issue 10)",
    )
    p.add_argument("--calibrate", type=float, default=10.0, help="seconds of capacity probe")
    p.add_argument(
        "--cpu-quota",
        type=float,
        default=0.0,
        metavar="CORES",
        help="run the started instances in one cgroup v1 cpu group of this many cores (root)",
    )
    p.add_argument(
        "--single-players",
        type=int,
        default=0,
        help="this many players send one event per click, on schedule (open loop)",
    )
    p.add_argument(
        "--page-players",
        type=int,
        default=20,
        help="with --overload: players batching like the page, besides the single-click ones",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy record the instances into DIR")
    p.add_argument("--dump", metavar="PATH", help="pickle each run's raw samples to PATH.*")
    p.add_argument("--keep", action="store_true", help="keep the instances' logs (work dir)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for the machine to be idle",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=30.0,
        help="idle means other work uses under this %% of one core (over 3 s)",
    )
    args = p.parse_args(argv)
    if args.players > args.users:
        p.error("--players cannot exceed --users")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env: dict[str, str] = {"BROADCAST_INTERVAL_MS": str(args.tick_ms)}
    if args.rate_limit_cps:
        env["RATE_LIMIT_CPS"] = str(args.rate_limit_cps)
    if args.max_wait_ms:
        env["MAX_WAIT_MS"] = str(args.max_wait_ms)
    deployment = cluster.Cluster(
        redis_url=args.redis_url, env_extra=env, server_args=list(args.server_arg), app=args.app
    )
    private = None
    if args.own_redis and not args.url:
        private = cluster.PrivateRedis(deployment.workdir).start()
        deployment.redis_url = private.url
    counts = [int(c) for c in args.scale.split(",") if c.strip()] or [args.instances]
    if args.url:
        deployment.urls = list(args.url)
        deployment.pids = list(args.server_pid)
        counts = [len(args.url)]
    info = machine()
    failed = False
    tokens: list[str] = []
    quota = CpuQuota(args.cpu_quota).__enter__() if args.cpu_quota else None
    try:
        for count in counts:
            if not args.url:
                deployment.start(count)
            for pid in deployment.pids if quota else ():
                quota.add(pid)
            if not tokens:
                started = time.monotonic()
                memory_before = cluster.redis_used_memory(deployment.redis_url)
                users = asyncio.run(
                    cluster.register(deployment.urls, args.users, name_len=args.name_len)
                )
                tokens = [token for _, token in users]
                # Meaningful with --own-redis only: a shared Redis moves with other tenants.
                per_user = (cluster.redis_used_memory(deployment.redis_url) - memory_before) / max(
                    1, len(tokens)
                )
                print(
                    json.dumps(
                        {
                            "registered": len(tokens),
                            "seconds": round(time.monotonic() - started, 1),
                            "prefix": deployment.prefix,
                            "redis_bytes_per_user": round(per_user),
                        }
                    ),
                    file=sys.stderr,
                    flush=True,
                )
            lines = []
            for run_no in range(args.repeat):
                if run_no:
                    time.sleep(args.pause)
                waited = wait_quiet(args.quiet_wait, args.quiet_pct)
                runner = overload_run if args.overload else run_once
                line = runner(args, deployment, tokens, run_no)
                line["quiet_wait_s"] = waited
                if args.own_redis:
                    line["redis_bytes_per_user"] = round(per_user)
                line["bar"] = overload_bar(line) if args.overload else bar(line)
                print(json.dumps({"run": run_no + 1, **line}), file=sys.stderr, flush=True)
                lines.append(line)
            summary = median_line(lines) if len(lines) > 1 else lines[0]
            summary["bar"] = overload_bar(summary) if args.overload else bar(summary)
            summary["bar_met"] = all(summary["bar"].values())
            failed = failed or summary["lost"] > 0 or summary["extra_counted"] > 0
            print(json.dumps({"bench": "clickky", **info, **summary}), flush=True)
            if not args.url:
                deployment.stop()
    finally:
        deployment.stop()
        if quota is not None:
            quota.__exit__(None, None, None)
        if not args.url:
            deployment.delete_keys()
        if private is not None:
            private.stop()
        if args.keep:
            print(json.dumps({"logs": str(deployment.workdir)}), file=sys.stderr)
        else:
            shutil.rmtree(deployment.workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
