"""Start and stop real service instances for a benchmark, register users, read CPU times."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process from /proc/<pid>/stat, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces; the fields we want follow its ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def redis_used_memory(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def redis_cpu_seconds(client: redis.Redis) -> float:
    """used_cpu_user + used_cpu_sys of the Redis server (includes other tenants' work)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user/nice
    return (sum(fields[:8]) - idle) / CLK_TCK


def redis_command_stats(client: redis.Redis) -> dict[str, tuple[int, float]]:
    """(calls, microseconds) per command from INFO commandstats (server-side time only)."""
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for name, v in stats.items()
        if isinstance(v, dict)
    }


@dataclass
class PrivateRedis:
    """A redis-server of our own on a free port (no persistence), so its CPU is ours alone."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("--own-redis needs redis-server on PATH")
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Cluster:
    """A deployment under its own key prefix: 0..k instances we started, or URLs we were given."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}:")
    env_extra: dict[str, str] = field(default_factory=dict)
    server_args: list[str] = field(default_factory=list)  # more uvicorn options
    app: str = "service.app:app"
    cwd: Path = ROOT  # the checkout whose service/ the instances run
    urls: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="clickky-bench-")))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "REDIS_URL": self.redis_url,
                "KEY_PREFIX": self.prefix,
                "DATABASE_URL": f"sqlite:///{self.workdir / 'bench.db'}",
                # Registering 10,000 users from one address must not hit the join limit.
                "JOIN_RATE_PER_MIN": "1000000000",
                "LOG_FORMAT": "text",
                "LOG_LEVEL": "WARNING",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(self.env_extra)
        return env

    def start(self, count: int) -> None:
        """Start `count` uvicorn instances (one process each) and wait until all are ready."""
        env = self.env()
        for _ in range(count):
            port = free_port()
            log = (self.workdir / f"instance-{port}.log").open("ab")
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1"),
                    *("--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "3"),
                    *self.server_args,
                ],
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.procs.append(proc)
            self.pids.append(proc.pid)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(self.urls, self.procs, strict=True):
            self._wait_ready(url, proc)

    def _wait_ready(self, url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"instance {url} exited early; see {self.workdir}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"instance {url} not ready after {timeout}s; see {self.workdir}")

    def stop(self) -> None:
        """SIGTERM every instance we started, SIGKILL the ones that do not leave in time."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.pids.clear()
        self.urls.clear()

    def delete_keys(self) -> int:
        """Delete every Redis key under our prefix (never anything else)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            found = list(client.scan_iter(match=self.prefix + "*", count=1000))
            for start in range(0, len(found), 500):
                client.delete(*found[start : start + 500])
            return len(found)
        finally:
            client.close()

    def server_cpu(self) -> list[float]:
        """CPU seconds used so far by each instance process."""
        return [cpu_seconds(pid) for pid in self.pids]


async def register(
    urls: list[str], count: int, concurrency: int = 64, name_len: int = 7
) -> list[tuple[str, str]]:
    """POST /api/join `count` fresh users, spread over the instances; (username, token) pairs."""
    users: list[tuple[str, str]] = [("", "")] * count
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def work(session: aiohttp.ClientSession, slot: int) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            name = f"b{i:06d}".ljust(max(7, min(32, name_len)), "x")
            url = urls[(i + slot) % len(urls)] + "/api/join"
            for attempt in range(5):
                async with session.post(url, json={"username": name}) as response:
                    if response.status == 201:
                        users[i] = (name, (await response.json())["token"])
                        break
                    body = await response.text()
                    if response.status == 409:
                        raise RuntimeError(f"{name} is taken: the prefix was not fresh")
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                raise RuntimeError(f"join {name} failed: {response.status} {body}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(work(session, slot) for slot in range(concurrency)))
    return users


def global_count(url: str) -> int:
    return int(httpx.get(url + "/api/state", timeout=10).json()["global"])
