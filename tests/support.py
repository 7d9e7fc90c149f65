"""Helpers for tests that start real things: ports, processes, servers, clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import socketio
import uvicorn

from service.counter import Counter
from service.tokens import Player as TokenPlayer
from service.validation import canonical

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InProcessServer:
    """A real uvicorn serving `app` (an ASGI callable) in this event loop, on a free port,
    with the websocket implementation `ws`: for tests of code that reaches into uvicorn."""

    def __init__(self, ws: str = "websockets-sansio") -> None:
        self.ws = ws
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    async def start(self) -> Any:
        self.port = free_port()
        config = uvicorn.Config(
            self.app, port=self.port, ws=self.ws, lifespan="off", log_config=None, interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                return self
            await asyncio.sleep(0.01)
        raise AssertionError("uvicorn did not start")

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll a function until it returns something truthy; fail with what we waited for."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}; last={last!r}")


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """The async twin of wait_until; `predicate` may be sync or async."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s; last={last!r}")


@dataclass
class Proc:
    """A real child process with its log captured to a file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen is None:
            return None
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Instance:
    """One real service instance (uvicorn in its own process)."""

    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Starts real processes for a test and stops every one of them afterwards."""

    tmp: Path
    base_env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.base_env)
        env.update(extra or {})
        return env

    def spawn(self, name: str, args: list[str], extra: Mapping[str, str] | None = None) -> Proc:
        proc = Proc(name, args, self.env(extra), self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def instance(
        self, extra: Mapping[str, str] | None = None, port: int | None = None, wait: bool = True
    ) -> Instance:
        port = port or free_port()
        proc = self.spawn(
            f"instance-{port}",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "service.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--timeout-graceful-shutdown",
                "5",
            ],
            extra,
        )
        instance = Instance(proc, port)
        if wait:
            wait_ready(instance.url, proc)
        return instance

    def worker(self, extra: Mapping[str, str] | None = None, name: str = "worker") -> Proc:
        return self.spawn(f"{name}-{len(self.procs)}", [sys.executable, "-m", "worker"], extra)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=10)


def wait_ready(url: str, proc: Proc | None = None, timeout: float = 30.0) -> None:
    """Wait for GET /readyz to answer 200; show the process log if it died or never did."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise AssertionError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
        try:
            response = httpx.get(url + "/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    log = proc.log()[-3000:] if proc else ""
    raise AssertionError(f"{url} not ready after {timeout}s: {last}\n{log}")


@dataclass
class RedisServer:
    """A private redis-server on a free port, for tests that kill and restart Redis."""

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server must be on PATH for this test (apt-get install redis-server)"
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            str(self.directory / "log"),
        ]
        if self.appendonly:
            args += ["--appendfsync", "everysec"]
        self.popen = subprocess.Popen(args, start_new_session=True)
        wait_until(self.ping, timeout=10)
        return self

    def ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def kill(self) -> None:
        """SIGKILL: the data in memory is gone, as in a crash."""
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)


class Player:
    """A Socket.IO client that records every state message it receives."""

    def __init__(self, url: str, token: str | None = None, auth: Any = None) -> None:
        self.url = url
        self.token = token
        self.auth = auth  # when set, sent as is (e.g. {"admin": ...}) instead of the token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.states: list[dict[str, Any]] = []
        self.state_times: list[float] = []
        self.you: list[dict[str, Any]] = []
        self.events: list[tuple[str, Any]] = []
        self.sio.on("state", self._on_state)
        self.sio.on("you", self._on_you)
        self.sio.on("*", self._on_any)

    async def _on_state(self, data: dict[str, Any]) -> None:
        self.states.append(data)
        self.state_times.append(time.monotonic())

    async def _on_you(self, data: dict[str, Any]) -> None:
        self.you.append(data)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.events.append((event, args[0] if args else None))

    async def connect(self) -> Player:
        auth = self.auth or ({"token": self.token} if self.token else None)
        await self.sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=10)
        return self

    async def click(self, n: int | None = 1, timeout: float = 10) -> dict[str, Any]:
        payload = {} if n is None else {"n": n}
        result: dict[str, Any] = await self.sio.call("click", payload, timeout=timeout)
        return result

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()

    @property
    def last(self) -> dict[str, Any]:
        assert self.states, "no state received yet"
        return self.states[-1]


async def make_player(counter: Counter, display: str) -> TokenPlayer:
    """Join straight through the data model (no HTTP) and return who the token names."""
    canon = canonical(display)
    nonce = await counter.join(display, canon, "127.0.0.1", 10_000)
    return TokenPlayer(display=display, canon=canon, nonce=nonce)


async def join(client: httpx.AsyncClient, username: str) -> str:
    """Join and return the token, failing loudly on anything but 201."""
    response = await client.post("/api/join", json={"username": username})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token
