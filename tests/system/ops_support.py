"""Helpers for the operations tests: nginx, gunicorn, process trees, metrics, sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, Proc, Stack, free_port, wait_until
from worker import stack as local_stack

GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def start_nginx(stack: Stack, ports: Iterable[int], name: str = "nginx") -> tuple[Proc, str]:
    """The real nginx on a free port in front of `ports`, rendered as `clickky stack` does."""
    port = free_port()
    run_dir = stack.tmp / name
    config = local_stack.write_nginx_config(run_dir, listen=f"127.0.0.1:{port}", ports=list(ports))
    proc = stack.spawn(name, local_stack.nginx_argv(local_stack.nginx_binary(), run_dir, config))
    wait_until(lambda: port_open(port) or _dead(proc), timeout=15)
    assert proc.alive, f"nginx exited:\n{proc.log()}"
    return proc, f"http://127.0.0.1:{port}"


def _dead(proc: Proc) -> bool:
    return not proc.alive


def start_gunicorn(stack: Stack, workers: int = 2, **extra: str) -> tuple[Proc, str]:
    """gunicorn with deploy/gunicorn.conf.py on a free port (wait with wait_ready)."""
    port = free_port()
    env = {
        "WEB_CONCURRENCY": str(workers),
        "BIND": f"127.0.0.1:{port}",
        "GRACEFUL_TIMEOUT": "5",
        "LOG_LEVEL": "INFO",
        **extra,
    }
    proc = stack.spawn(
        "gunicorn",
        [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "service.app:app"],
        env,
    )
    return proc, f"http://127.0.0.1:{port}"


# -- processes -------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> dict[int, int]:
    """Every live process below `pid`, with its start time (so a reused pid is not confused)."""
    result: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            stat = _stat(child)
            if stat is not None:
                result[child] = stat[1]
                todo.append(child)
    return result


def still_running(processes: dict[int, int]) -> list[int]:
    """Those of `processes` (pid -> start time) that are still alive."""
    alive = []
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            alive.append(pid)
    return alive


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def established_by_pid(port: int, pids: Iterable[int]) -> dict[int, int]:
    """How many established TCP connections to local `port` each process holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        count = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        count += 1
        counts[pid] = count
    return counts


# -- HTTP ------------------------------------------------------------------------------
def instance_pid(instance_id: str) -> int:
    """The pid inside an instance id (hostname-pid-random)."""
    return int(instance_id.rsplit("-", 2)[1])


@contextlib.asynccontextmanager
async def pinned_clients(url: str, count: int, attempts: int = 80) -> AsyncIterator[dict[int, Any]]:
    """One keep-alive client per server process (pid -> client), found by asking /readyz.

    A client holds a single connection, so all its requests reach the process that
    accepted it: the tests can then tell which gunicorn worker answered.
    """
    pinned: dict[int, httpx.AsyncClient] = {}
    try:
        for _ in range(attempts):
            client = httpx.AsyncClient(
                base_url=url, timeout=10, limits=httpx.Limits(max_connections=1)
            )
            response = await client.get("/readyz")
            pid = instance_pid(response.json()["instance"])
            if pid in pinned:
                await client.aclose()
            else:
                pinned[pid] = client
            if len(pinned) >= count:
                break
        assert len(pinned) >= count, f"only {len(pinned)} of {count} processes answered"
        yield pinned
    finally:
        for client in pinned.values():
            await client.aclose()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called `name` in Prometheus text: (labels, value)."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the one sample called `name` with exactly these labels."""
    found = [value for got, value in samples(text, name) if got == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in\n{text}"
    return found[0]
