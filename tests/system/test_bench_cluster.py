"""loadtest/cluster_bench.py and cluster_failover.py, short: they run, clean up, and report
figures that add up (every click exact, each master's share, the shards over the masters,
a replica taking over)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.system

SMALL = ("--users", "60", "--players", "20", "--cps", "5", "--spectators", "2", "--procs", "1")


def script(name: str, *options: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the summary lines, every run's line) of one run of loadtest/<name>, which must pass."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / name), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    runs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith('{"run"')]
    return [json.loads(line) for line in done.stdout.splitlines()], runs


def run(*options: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """cluster_bench.py with a small, short load."""
    short = ("--duration", "3", "--warmup", "1", "--pause", "0")
    return script("cluster_bench.py", *SMALL, *short, *options)


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
        assert line["commands_per_event_by_name"]["evalsha"] > 0, report  # the click script
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


@pytest.mark.timeout(300)
def test_a_master_lost_under_clicks_fails_over_exactly() -> None:
    lines, _ = script(
        "cluster_failover.py",
        *("--runs", "1", "--users", "24", "--before", "1", "--after", "1", "--limit", "40"),
    )
    line = lines[-1]
    report = json.dumps(line)
    assert line["players_own"] > 0 and line["players_others"] > 0, report
    # Its replica took over: within node.conf's 5 s node timeout, an election and the
    # client's new slot map (7-9 s in our runs), and its players were refused meanwhile.
    assert 5 <= line["failover_s"] <= 30 and line["refused_own"] > 0, report
    # Every acknowledged click counted, none twice; the other players kept clicking (up to
    # two of theirs were refused in a run, while the client relearnt the slot map).
    assert line["exact"] and line["lost"] == 0 and line["extra"] == 0, report
    assert line["refused_others"] <= 3 and line["last_other_ok_s"] < 2, report
    assert not leftover_nodes()
