"""The README's load-test command, run as written (smaller and shorter): it must pass."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.system

# Enough to prove the chain (stack, locust, check) on a shared 2-core machine, and more
# users than the default join limit (30 a minute per address) would let in.
SMALLER = {"USERS": "40", "TIME": "8s"}


def readme_loadtest_commands() -> list[list[str]]:
    """The `make loadtest` lines of the README's first shell block under "Load testing"."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Load testing\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Load testing section has no sh block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c[:2] == ["make", "loadtest"] for c in commands), commands
    return commands


def smaller(command: list[str], out: Path) -> list[str]:
    """The same command with USERS and TIME made smaller, and the results in `out`."""
    names = {arg.split("=", 1)[0] for arg in command if "=" in arg}
    assert set(SMALLER) <= names, f"the README's command no longer sets {set(SMALLER) - names}"
    args = [
        f"{name}={SMALLER[name]}" if name in SMALLER else arg
        for arg in command
        for name in [arg.split("=", 1)[0]]
    ]
    return [*args, f"OUT={out}"]


def test_the_readme_loadtest_command_runs_and_loses_nothing(tmp_path: Path) -> None:
    # A fresh clone's environment: no Redis or database of ours, the embedded ones instead.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    for command in readme_loadtest_commands():
        done = subprocess.run(
            smaller(command, tmp_path),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-5000:]
        assert "locust exited 0, the loss check 0" in output, output[-3000:]
        summary = json.loads(
            next(
                line.split("| ", 1)[1] for line in output.splitlines() if line.startswith("check ")
            )
        )
        assert summary["ok"] and summary["lost"] == 0 and summary["acked"] > 0, summary
        assert summary["rate_limited"] == 0 and summary["refused_other"] == 0, summary
        with (tmp_path / "clickky_stats.csv").open(newline="", encoding="utf-8") as stats:
            joins = next(row for row in csv.DictReader(stats) if row["Name"] == "/api/join")
        assert int(joins["Request Count"]) > 0 and int(joins["Failure Count"]) == 0, joins
