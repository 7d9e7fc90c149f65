"""Redis Cluster benchmark (issue 11): the same offered load on 1 and on 3 masters, and the
single-Redis bar before and after the cluster work, in one run.

    .venv/bin/python loadtest/cluster_bench.py                      # 1 then 3 masters, 20 s each
    .venv/bin/python loadtest/cluster_bench.py --masters 1,3 --repeat 2 --shards 64
    .venv/bin/python loadtest/cluster_bench.py --single --before main --repeat 2   # before/after

Cluster mode (`--masters`): for each master count in turn (alternating over --repeat) it
starts a fresh local Redis Cluster (`redis-server --cluster-enabled yes` on free ports, no
persistence, no replicas: `redis-cli --cluster create` for 3 and more masters, CLUSTER
ADDSLOTSRANGE for one), `--instances` real instances on
`REDIS_URL=redis+cluster://...` with `REDIS_SHARDS=--shards`, registers `--users`, and
runs loadtest/bench.py's load generator (the page-like players and spectators of its bar)
for `--duration` s. Each master's `INFO cpu` (used_cpu_sys + used_cpu_user) and
`INFO commandstats` are read at the window's start and end.

Single mode (`--single`): bench.py's bar on a private single Redis, for the checkout of
`--before` (a `git archive` of that revision: the code before the cluster work) and for
this working tree, alternating, each on its own fresh Redis (its figures below are those
of its one "master").

One JSON line per configuration on stdout (medians over --repeat), every run on stderr.
Fields besides bench.py's (see loadtest/README.md):

    masters, shards               the cluster's masters and logical shards
    shards_each, hub_on           logical shards per master (by their hash slot), and the
                                  master holding the hub's slot
    redis_cpu_pct_each            each master's CPU over the window, % of one core
    redis_cpu_ms_per_click_each   each master's CPU / clicks counted in the window
    redis_cpu_ms_per_click_sum    all masters' CPU / clicks counted
    commands_per_click, _event    every command the masters ran (those inside scripts
                                  included, tick reads and heartbeats too) / clicks, / events
    capacity_clicks_per_s_est     clicks/s / the busiest master's CPU share: the rate at which
                                  that master's thread would be full with this mix (an
                                  extrapolation from the measured figures, not a measurement)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench
import cluster
import redis
from redis.crc import key_slot
from redis_cluster import local_cluster


def read_masters(ports: list[int]) -> list[tuple[float, dict[str, int]]]:
    """(CPU seconds, calls per command) of each master, from INFO cpu and commandstats."""
    figures = []
    for port in ports:
        with contextlib.closing(redis.Redis(port=port, socket_timeout=5)) as client:
            calls = {name: c for name, (c, _) in cluster.redis_command_stats(client).items()}
            figures.append((cluster.redis_cpu_seconds(client), calls))
    return figures


# -- runs --------------------------------------------------------------------------------------
def bench_args(args: argparse.Namespace) -> argparse.Namespace:
    """bench.py's options for one run: its bar, with our duration and load."""
    return bench.parse_args(
        [
            *("--users", str(args.users), "--players", str(args.players)),
            *("--cps", str(args.cps), "--spectators", str(args.spectators)),
            *("--duration", str(args.duration), "--warmup", str(args.warmup)),
            *("--procs", str(args.procs), "--instances", str(args.instances)),
        ]
    )


def measured(
    options: argparse.Namespace, deployment: cluster.Cluster, run_no: int, probe: Any = None
) -> dict[str, Any]:
    """Start the instances, register the users, run bench.py's generator once, stop them."""
    try:
        deployment.start(options.instances)
        users = asyncio.run(cluster.register(deployment.urls, options.users))
        line = bench.run_once(options, deployment, [t for _, t in users], run_no, probe)
        line["bar"] = bench.bar(line)
        return line
    finally:
        deployment.stop()


def master_figures(line: dict[str, Any], duration: float) -> dict[str, Any]:
    """The per-master figures from the probe's two readings (popped from the line)."""
    before, after = line.pop("probe")
    cpu = [b[0] - a[0] for a, b in zip(before, after, strict=True)]
    by_name: dict[str, int] = {}
    for (_, calls_a), (_, calls_b) in zip(before, after, strict=True):
        for name, calls in calls_b.items():
            by_name[name] = by_name.get(name, 0) + calls - calls_a.get(name, 0)
    commands = sum(by_name.values())
    clicks = line["clicks_per_s"] * duration
    events = line["click_events_per_s"] * duration
    busiest = max(cpu) / duration
    return {
        "redis_cpu_pct_each": [round(100 * c / duration, 1) for c in cpu],
        "redis_cpu_ms_per_click_each": [
            round(1000 * c / clicks, 4) if clicks else None for c in cpu
        ],
        "redis_cpu_ms_per_click_sum": round(1000 * sum(cpu) / clicks, 4) if clicks else None,
        "commands_per_click": round(commands / clicks, 2) if clicks else None,
        "commands_per_event": round(commands / events, 2) if events else None,
        # The commands behind that figure, most frequent first (scripts' own calls included).
        "commands_per_event_by_name": {
            name: round(calls / events, 2)
            for name, calls in sorted(by_name.items(), key=lambda item: -item[1])[:10]
        }
        if events
        else {},
        "capacity_clicks_per_s_est": round(line["clicks_per_s"] / busiest) if busiest else None,
    }


def cluster_run(
    args: argparse.Namespace, masters: int, run_no: int, checkout: Path = cluster.ROOT
) -> dict[str, Any]:
    options = bench_args(args)
    with local_cluster(masters) as nodes:
        deployment = cluster.Cluster(
            cwd=checkout,
            # bench.py reads Redis CPU from this URL (the first master): we read them all.
            redis_url=f"redis://127.0.0.1:{nodes.ports[0]}/0",
            env_extra={"REDIS_URL": nodes.url, "REDIS_SHARDS": str(args.shards)},
        )
        try:
            line = measured(options, deployment, run_no, lambda: read_masters(nodes.ports))
        finally:
            shutil.rmtree(deployment.workdir, ignore_errors=True)
        shards_each: list[list[int]] = [[] for _ in nodes.ports]
        for shard in range(args.shards):
            shards_each[nodes.master_of(key_slot(f"{{s{shard}}}".encode()))].append(shard)
        hub_on = nodes.master_of(key_slot(b"{hub}"))
    # bench.py's redis_* figures are the first master's only: replaced by the per-master ones.
    for key in ("redis_cpu_pct", "redis_cpu_ms_per_click", "redis_evalsha_per_s"):
        line.pop(key, None)
    line.pop("redis_evalsha_us", None)
    line["redis"] = "local cluster"
    figures = master_figures(line, args.duration)
    return {
        "masters": masters,
        "shards": args.shards,
        "revision": describe(checkout),
        **line,
        "shards_each": [len(s) for s in shards_each],
        "hub_on": hub_on,
        **figures,
    }


def single_run(
    args: argparse.Namespace, variant: str, checkout: Path, run_no: int
) -> dict[str, Any]:
    options = bench_args(args)
    deployment = cluster.Cluster(cwd=checkout)
    private = cluster.PrivateRedis(deployment.workdir).start()
    deployment.redis_url = private.url
    try:
        line = measured(options, deployment, run_no, lambda: read_masters([private.port]))
    finally:
        private.stop()
        shutil.rmtree(deployment.workdir, ignore_errors=True)
    line["redis"] = "private"
    figures = master_figures(line, args.duration)
    return {"variant": variant, "revision": describe(checkout), **line, **figures}


def describe(checkout: Path) -> str:
    marker = checkout / ".revision"
    return marker.read_text().strip() if marker.exists() else bench.machine()["commit"]


@contextlib.contextmanager
def archived(revision: str) -> Iterator[Path]:
    """This repository at `revision`, extracted into a temporary directory (git archive)."""
    directory = Path(tempfile.mkdtemp(prefix="clickky-before-"))
    try:
        sha = subprocess.check_output(
            ["git", "rev-parse", "--short", revision], cwd=cluster.ROOT, text=True
        ).strip()
        archive = subprocess.run(
            ["git", "archive", sha], cwd=cluster.ROOT, check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
        (directory / ".revision").write_text(f"{revision} ({sha})\n")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def medians(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """bench.py's medians, plus the per-master lists column by column."""
    merged = bench.median_line(lines)
    for key, value in lines[0].items():
        if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            columns = zip(*(line[key] for line in lines), strict=True)
            middles = [statistics.median(column) for column in columns]
            merged[key] = [int(m) if float(m).is_integer() else round(m, 4) for m in middles]
    merged["bar"] = bench.bar(merged)
    merged["bar_met"] = all(merged["bar"].values())
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--masters", default="1,3", help="master counts to compare (default 1,3)")
    p.add_argument("--shards", type=int, default=16, help="REDIS_SHARDS (default 16)")
    p.add_argument(
        "--single",
        action="store_true",
        help="instead: bench.py's bar on a single Redis, --before against this working tree",
    )
    p.add_argument(
        "--before",
        help="the revision to compare with: --single's (default main); in cluster mode, each "
        "master count runs on it too, alternating with this working tree",
    )
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--players", type=int, default=250)
    p.add_argument("--cps", type=float, default=18.0, help="clicks/s offered per player")
    p.add_argument("--spectators", type=int, default=20)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (medians)")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = bench.machine()
    lines: dict[str, list[dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        before = (
            stack.enter_context(archived(args.before or "main"))
            if args.before or args.single
            else None
        )
        plan: list[tuple[str, int, Path]] = []
        if args.single:
            plan = [("before", 0, before), ("after", 0, cluster.ROOT)]
        for m in (int(m) for m in args.masters.split(",") if m.strip() and not args.single):
            if before is not None:
                plan.append((f"{m} master(s), before", m, before))
            plan.append((f"{m} master(s)", m, cluster.ROOT))
        for run_no in range(args.repeat):
            for name, masters, checkout in plan:  # alternating: a noisy machine hits all alike
                if lines:
                    time.sleep(args.pause)
                if masters:
                    line = cluster_run(args, masters, run_no, checkout)
                else:
                    line = single_run(args, name, checkout, run_no)
                print(json.dumps({"run": run_no + 1, **line}), file=sys.stderr, flush=True)
                lines.setdefault(name, []).append(line)
    failed = False
    for runs in lines.values():
        summary = medians(runs) if len(runs) > 1 else runs[0]
        summary["bar_met"] = all(summary["bar"].values())
        failed = failed or summary["lost"] > 0 or summary["extra_counted"] > 0
        print(json.dumps({"bench": "clickky-cluster", **info, **summary}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
