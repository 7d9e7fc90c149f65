"""loadtest/cluster_bench.py, short: both of its modes run, clean up, and report figures
that add up (every click exact, each master's share, the shards over the masters)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.system

SMALL = ("--users", "60", "--players", "20", "--cps", "5", "--spectators", "2", "--procs", "1")


def run(*options: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the summary lines, every run's line) of one cluster_bench.py run."""
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "loadtest" / "cluster_bench.py"), *SMALL),
            *("--duration", "3", "--warmup", "1", "--pause", "0", *options),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    runs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"run"')]
    return [json.loads(line) for line in done.stdout.splitlines()], runs


def leftover_nodes() -> list[str]:
    """redis-servers in cluster mode that this benchmark started (its temp dir's prefix)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if "clickky-cluster-bench-" in line]


@pytest.mark.timeout(300)
def test_one_and_three_masters_at_the_same_load() -> None:
    lines, runs = run("--masters", "1,3", "--shards", "8", "--repeat", "2")
    assert [line["masters"] for line in lines] == [1, 3]
    # Alternating: 1, 3, 1, 3.
    assert [r["masters"] for r in runs] == [1, 3, 1, 3]
    for line in lines:
        report = json.dumps(line)[:3000]
        masters = line["masters"]
        assert line["exact"] and line["lost"] == 0 and line["unacked"] == 0, report
        assert line["clicks_per_s"] > 0 and line["runs"] == 2, report
        assert sum(line["shards_each"]) == 8 and len(line["shards_each"]) == masters, report
        assert 0 <= line["hub_on"] < masters, report
        each = line["redis_cpu_ms_per_click_each"]
        assert len(each) == len(line["redis_cpu_pct_each"]) == masters, report
        assert all(x > 0 for x in each), report  # every master works (ticks read its shards)
        assert line["redis_cpu_ms_per_click_sum"] == pytest.approx(sum(each), rel=0.05), report
        assert line["commands_per_click"] > 1 and line["commands_per_event"] > 1, report
        assert "redis_cpu_ms_per_click" not in line  # bench.py's: the first master's only
    three = lines[1]
    assert sorted(three["shards_each"]) == [2, 2, 4]  # {s0}..{s7} over create's 3 ranges
    assert not leftover_nodes()


@pytest.mark.timeout(300)
def test_single_redis_before_and_after() -> None:
    lines, runs = run("--single", "--before", "HEAD")
    assert [line["variant"] for line in lines] == ["before", "after"]
    assert [r["variant"] for r in runs] == ["before", "after"]
    assert lines[0]["revision"].startswith("HEAD (")
    for line in lines:
        report = json.dumps(line)[:3000]
        assert line["exact"] and line["lost"] == 0 and line["redis"] == "private", report
        assert len(line["redis_cpu_pct_each"]) == 1 and line["commands_per_click"] > 1, report
