"""A bad setting ends each real entry point at once, with one line naming it (secrets masked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from worker.stack import plan_environment

pytestmark = pytest.mark.system

BIN = Path(sys.executable).parent
ENTRY_POINTS = {
    "clickky run": [str(BIN / "clickky"), "run", "--port", "1"],
    "python -m worker": [sys.executable, "-m", "worker"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "service.app:app", "--port", "1"],
}
BAD = [
    ("REDIS_URL", "redis://127.0.0.1:6379/0garbage", "'0garbage' must be a number"),
    ("REDIS_URL", "htp://nowhere", "unknown scheme htp://"),
    ("DATABASE_URL", "mysql://root:hunter2@127.0.0.1:3306", "one database name"),
    ("SNAPSHOT_INTERVAL_S", "soon", "a number"),
    ("BROADCAST_INTERVAL_MS", "0", "a positive number"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("variable", "value", "accepted"), BAD)
def test_a_bad_setting_ends_the_process_with_one_line(
    entry: str, variable: str, value: str, accepted: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env[variable] = value
    done = subprocess.run(
        ENTRY_POINTS[entry], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"clickky: {variable}='"), lines[0]
    assert accepted in lines[0] and "is not accepted" in lines[0]
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".clickky").exists(), "clickky run started something before refusing"


def test_log_format_defaults_say_what_each_command_does() -> None:
    """A bare process logs JSON lines; `clickky run` (a person at a terminal) logs text."""
    from service.settings import Settings

    assert Settings.from_environ({}).log_format == "json"
    assert plan_environment({}).env["LOG_FORMAT"] == "text"
    assert plan_environment({"LOG_FORMAT": "json"}).env["LOG_FORMAT"] == "json"


@pytest.mark.parametrize("entry", ["python -m worker", "uvicorn"])
def test_a_redis_laid_out_with_other_shards_ends_the_process_with_one_line(
    entry: str, tmp_path: Path, redis_url: str, prefix: str
) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        client.set(prefix + "shards", "16:any")  # what a 16-shard deployment records
    finally:
        client.close()
    env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": prefix, "REDIS_SHARDS": "4"}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}", LOG_FORMAT="text")
    done = subprocess.run(
        ENTRY_POINTS[entry], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    refusals = [line for line in output.splitlines() if "16 shard(s)" in line]
    assert len(refusals) == 1 and "REDIS_SHARDS" in refusals[0], output
