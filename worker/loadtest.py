"""`clickky loadtest`: a private stack with load-test settings, locust against it, the loss check.

One command from a source checkout: a fresh embedded Redis (unless REDIS_URL is set) and SQLite
store in the output folder, N instances, the worker, nginx in front when it is installed
(without it, said so, the clients talk to the instances directly), then a headless locust run
(loadtest/locustfile.py), then loadtest/check.py comparing the counter with every
acknowledged click. The exit status is 0 only when locust and the check both pass.

Load-test settings: every locust user joins from the same address, and the join limit is per
address (JOIN_RATE_PER_MIN, 30 by default), so the run raises it (unless JOIN_RATE_PER_MIN is
set). Faking an address per user through X-Forwarded-For would also work, but only when
locust's host is trusted (FORWARDED_ALLOW_IPS) and nginx does not sit in between; raising the
limit keeps the click path exactly as in production.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.stack import (
    ROOT,
    TIER_CLIENT,
    LaunchError,
    Plan,
    Supervisor,
    find_nginx,
    free_port,
    launch,
    plan_environment,
    start_instances,
    start_nginx,
    start_worker,
)

LOADTEST_DIR = ROOT / "loadtest"
# High enough that no locust run meets it; the per-player click limit stays as configured.
LOADTEST_SETTINGS = {"JOIN_RATE_PER_MIN": "1000000", "LOG_LEVEL": "WARNING"}


@dataclass(frozen=True)
class LoadTest:
    instances: int
    users: int
    spawn_rate: float
    duration: str
    out: Path
    nginx: str | None = None
    locust_args: Sequence[str] = ()


def locust_argv(test: LoadTest, host: str, hosts: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOADTEST_DIR / "locustfile.py"),
        "--headless",
        "--only-summary",
        *("-u", str(test.users), "-r", f"{test.spawn_rate:g}", "-t", test.duration),
        *("--host", host, "--clickky-hosts", ",".join(hosts)),
        *("--clickky-out", str(test.out / "acks"), "--csv", str(test.out / "clickky")),
        *test.locust_args,
    ]


def check_argv(test: LoadTest, url: str) -> list[str]:
    return [
        sys.executable,
        str(LOADTEST_DIR / "check.py"),
        *("--url", url, "--acks", str(test.out / "acks")),
    ]


def _prepare(test: LoadTest, environ: dict[str, str]) -> Plan:
    """A clean output folder (stale acks would fail the check) and the run's environment."""
    if not (LOADTEST_DIR / "locustfile.py").is_file():
        raise LaunchError(f"{LOADTEST_DIR} not found: `clickky loadtest` runs from a checkout")
    if importlib.util.find_spec("locust") is None:
        raise LaunchError("locust is not installed: pip install -e '.[loadtest]'")
    shutil.rmtree(test.out / "acks", ignore_errors=True)
    shutil.rmtree(test.out / "redis", ignore_errors=True)
    test.out.mkdir(parents=True, exist_ok=True)
    store = test.out / "clickky.db"
    for stale in test.out.glob("clickky.db*"):
        stale.unlink()
    plan = plan_environment(
        environ, {**LOADTEST_SETTINGS, "DATABASE_URL": f"sqlite:///{store.resolve()}"}
    )
    plan.redis_dir = test.out / "redis"
    return plan


def run(test: LoadTest, environ: dict[str, str]) -> int:
    """Start the stack, run locust and then the check; 0 only if both pass."""
    try:
        plan = _prepare(test, environ)
    except LaunchError as exc:
        print(f"clickky: {exc}", file=sys.stderr)
        return 1
    targets: dict[str, list[str]] = {}

    def body(sup: Supervisor, plan: Plan, resources: contextlib.ExitStack) -> list[tuple[str, str]]:
        binary = find_nginx(sup, test.nginx)
        start_worker(sup, plan)
        ports = [free_port() for _ in range(test.instances)]
        urls = start_instances(sup, plan, "127.0.0.1", ports)
        front = urls[0]
        if binary is not None:
            front = start_nginx(
                sup, plan, resources, binary=binary, host="127.0.0.1", port=free_port(), ports=ports
            )
        targets["front"], targets["instances"] = [front], urls
        return [("front", front), ("instances", ", ".join(urls)), ("results", str(test.out))]

    def then(sup: Supervisor) -> int:
        front, urls = targets["front"][0], targets["instances"]
        locust = sup.start(
            "locust", locust_argv(test, front, urls), env=plan.env, tier=TIER_CLIENT, task=True
        )
        locust_status = sup.wait_task(locust)
        check = sup.start(
            "check", check_argv(test, urls[-1]), env=plan.env, tier=TIER_CLIENT, task=True
        )
        check_status = sup.wait_task(check)
        sup.say(
            f"clickky: locust exited {locust_status}, the loss check {check_status}; "
            f"statistics in {test.out}/clickky_stats.csv"
        )
        return 0 if locust_status == check_status == 0 else 1

    # Interrupted, the run proves nothing: 130, as a shell reports a Ctrl-C.
    footer = "Running locust; Ctrl-C stops everything."
    return launch(body, plan, then=then, footer=footer, stopped=130)
