"""A short headless locust against two real instances, then loadtest/check.py on the result."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, Stack

pytestmark = pytest.mark.system

LOADTEST = ROOT / "loadtest"
CUSTOM_EVENTS = {"connect", "click ack", "click visible", "tick gap", "tick latency"}


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def stats_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_headless_locust_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    first, second = stack.instance(), stack.instance()
    acks, prefix = tmp_path / "acks", tmp_path / "locust"
    locust = run(
        [
            *(sys.executable, "-m", "locust", "-f", str(LOADTEST / "locustfile.py")),
            *("--headless", "-u", "20", "-r", "10", "-t", "6s", "--only-summary"),
            *("--host", first.url, "--clickky-hosts", f"{first.url},{second.url}"),
            *("--clickky-out", str(acks), "--csv", str(prefix), "--loglevel", "WARNING"),
        ],
        timeout=60,
    )
    assert locust.returncode == 0, locust.stdout[-2000:] + locust.stderr[-4000:]

    check = run(
        [sys.executable, str(LOADTEST / "check.py"), "--url", second.url, "--acks", str(acks)],
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    summary = json.loads(check.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["lost"] == 0 and summary["phantom"] == 0
    assert summary["acked"] > 0 and summary["global"] == summary["leaderboard_sum"]

    rows = stats_rows(Path(f"{prefix}_stats.csv"))
    recorded = {row["Name"]: row for row in rows if row["Type"] == "socketio"}
    assert CUSTOM_EVENTS <= set(recorded), sorted(recorded)
    assert int(recorded["click ack"]["Request Count"]) > 0
    assert int(recorded["tick gap"]["Failure Count"]) == 0
    assert "tick duplicate" not in recorded, "a spectator saw a tick id twice"
    assert {"/api/join", "/api/click"} <= {row["Name"] for row in rows}
