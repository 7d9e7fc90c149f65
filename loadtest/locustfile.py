"""Locust users for Clickky: Socket.IO players, spectators, and HTTP players.

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 200 -r 20 -t 2m \\
        --host http://127.0.0.1:8000 --csv /tmp/clickky --clickky-out /tmp/clickky-acks
    .venv/bin/python loadtest/check.py --url http://127.0.0.1:8000 --acks /tmp/clickky-acks

Besides the HTTP requests locust records by itself, these custom events (type
"socketio") reach the statistics, the web UI and the CSV:

    connect           time to open the socket and be accepted (players and spectators)
    click ack         time from emitting `click` to its ack
    click rate_limited a click refused by the rate limit (a success: counted apart)
    click visible     time from emitting a click to this connection's first `state`
                      whose global includes it
    tick gap          time between two `state` messages on one spectator
    tick latency      time from the tick's boundary (tick id x tick ms, on Redis's
                      clock) to the spectator receiving it; needs agreeing clocks
    tick duplicate    a failure: a spectator got a tick id it had already seen

Every process with users writes what its players had acknowledged to
--clickky-out as acks-<host>-<pid>.json when the test stops; check.py merges them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import websocket
import wire
from gevent.event import AsyncResult
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.runners import MasterRunner

TYPE = "socketio"
ACK_TIMEOUT_S = 10.0
STOP_WAIT_S = 3.0


# -- options -------------------------------------------------------------------------------------
@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--clickky-hosts",
        default="",
        env_var="CLICKKY_HOSTS",
        help="comma-separated instance URLs to spread sockets over (default: --host)",
    )
    parser.add_argument(
        "--clickky-out",
        default="locust-acks",
        env_var="CLICKKY_OUT",
        help="directory for the acknowledged-clicks files that check.py reads",
    )
    parser.add_argument(
        "--clickky-tick-ms", type=int, default=100, help="the servers' BROADCAST_INTERVAL_MS"
    )


def _hosts(env: Environment) -> list[str]:
    options = env.parsed_options
    listed = getattr(options, "clickky_hosts", "") if options else ""
    hosts = [h.strip().rstrip("/") for h in listed.split(",") if h.strip()]
    return hosts or [(env.host or "http://127.0.0.1:8000").rstrip("/")]


_next_host = itertools.count()


def pick_host(env: Environment) -> str:
    hosts = _hosts(env)
    return hosts[next(_next_host) % len(hosts)]


def fire(env: Environment, name: str, ms: float, length: int = 0, exc: Any = None) -> None:
    env.events.request.fire(
        request_type=TYPE,
        name=name,
        response_time=ms,
        response_length=length,
        exception=exc,
        context={},
    )


# -- what the players had acknowledged ---------------------------------------------------------
class Ledger:
    """Per process: clicks acknowledged, refused, and in doubt, by username."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, dict[str, int]] = {}

    def open(self, username: str) -> dict[str, int]:
        with self.lock:
            return self.users.setdefault(
                username, {"acked": 0, "rate_limited": 0, "refused_other": 0, "in_doubt": 0}
            )

    def write(self, directory: str) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"acks-{socket.gethostname()}-{os.getpid()}.json"
        with self.lock:
            body = {"host": socket.gethostname(), "pid": os.getpid(), "users": self.users}
            text = json.dumps(body, ensure_ascii=False, sort_keys=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path


LEDGER = Ledger()


@events.test_stop.add_listener
def _write_ledger(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner) or not LEDGER.users:
        return
    LEDGER.write(getattr(environment.parsed_options, "clickky_out", "locust-acks"))


@events.quitting.add_listener
def _write_on_quit(environment: Environment, **_: Any) -> None:
    _write_ledger(environment)


# -- a Socket.IO connection on websocket-client (cooperative under gevent) ----------------------
class Refused(Exception):
    pass


class Connection:
    """One Socket.IO connection with a reader greenlet; acks and states go to callbacks."""

    def __init__(self, base_url: str, auth: dict[str, Any] | None, on_state: Any = None) -> None:
        self.on_state = on_state
        self.on_ack: Any = None
        self.pending: dict[int, Any] = {}
        self.ids = itertools.count()
        self.closing = False
        self.ws = websocket.create_connection(
            wire.socket_url(base_url), timeout=10, skip_utf8_validation=True
        )
        opened = self.ws.recv()
        if not opened.startswith("0"):
            raise Refused(f"expected the Engine.IO open packet, got {opened[:80]!r}")
        self.ws.send(wire.connect_packet(auth))
        while True:
            reply = self.ws.recv()
            if reply.startswith(("40", "44")):
                break
            if reply == wire.PING:
                self.ws.send(wire.PONG)
        accepted, body = wire.connect_reply(reply)
        if not accepted:
            self.ws.close(timeout=1)
            raise Refused(str(body))
        self.ws.settimeout(None)
        self.reader = gevent.spawn(self._read)

    def emit(self, event: str, data: Any, ack: Any = None) -> int:
        """Send an event; `ack(ack_id, body, now)` runs in the reader when the ack arrives."""
        ack_id = next(self.ids)
        if ack is not None:
            self.pending[ack_id] = ack
        self.ws.send(wire.event_packet(event, data, ack_id))
        return ack_id

    def _read(self) -> None:
        try:
            while True:
                text = self.ws.recv()
                now = time.perf_counter()
                if not text:
                    break
                if text.startswith("43"):
                    ack_id, body = wire.split_ack(text)
                    callback = self.pending.pop(ack_id, None)
                    if callback is not None:
                        callback(body, now, len(text))
                elif text.startswith(wire.STATE_PREFIX):
                    if self.on_state is not None:
                        self.on_state(json.loads(text[len(wire.STATE_PREFIX) : -1]), now, text)
                elif text == wire.PING:
                    self.ws.send(wire.PONG)
                elif text.startswith(("41", "1")):
                    break
        except (websocket.WebSocketException, OSError):
            pass

    def close(self) -> None:
        self.closing = True
        try:
            self.ws.send_close()
        except (websocket.WebSocketException, OSError):
            pass
        self.ws.abort()
        self.reader.join(timeout=2)
        self.ws.shutdown()


def _connect(env: Environment, url: str, auth: Any, on_state: Any) -> Connection:
    started = time.perf_counter()
    try:
        conn = Connection(url, auth, on_state)
    except Exception as exc:
        fire(env, "connect", (time.perf_counter() - started) * 1000, exc=exc)
        raise
    fire(env, "connect", (time.perf_counter() - started) * 1000)
    return conn


def _join(user: HttpUser, base: str) -> tuple[str, str]:
    """POST /api/join with a fresh name; (username, token)."""
    name = "L" + uuid.uuid4().hex[:14]
    with user.client.post(
        f"{base}/api/join", json={"username": name}, name="/api/join", catch_response=True
    ) as response:
        if response.status_code != 201:
            response.failure(f"join answered {response.status_code}: {response.text[:200]}")
            raise Refused(f"join failed: {response.status_code}")
        return name, response.json()["token"]


# -- users -----------------------------------------------------------------------------------------
class SocketIOPlayer(HttpUser):
    """Joins, connects with its token, and clicks like a person: single clicks and bursts."""

    weight = 6
    wait_time = between(0.15, 0.6)

    def on_start(self) -> None:
        self.base = pick_host(self.environment)
        self.name, token = _join(self, self.base)
        self.book = LEDGER.open(self.name)
        self.in_flight = 0
        self.visible: list[tuple[int, float]] = []
        self.conn = _connect(self.environment, self.base, {"token": token}, self._on_state)

    def _click(self, n: int) -> AsyncResult:
        """Emit one click batch; the reader books its ack. Returns a result set on the ack."""
        done = AsyncResult()
        sent = time.perf_counter()
        env, book = self.environment, self.book

        def ack(body: Any, now: float, length: int) -> None:
            self.in_flight -= n
            elapsed = (now - sent) * 1000
            if isinstance(body, dict) and "global" in body:
                book["acked"] += n
                fire(env, "click ack", elapsed, length)
                self.visible.append((int(body["global"]), sent))
            elif isinstance(body, dict) and body.get("error") == "rate_limited":
                book["rate_limited"] += n
                fire(env, "click rate_limited", elapsed, length)
            else:
                book["refused_other"] += n
                fire(env, "click ack", elapsed, length, exc=Refused(str(body)[:200]))
            done.set(body)

        self.in_flight += n
        self.conn.emit("click", {"n": n}, ack)
        return done

    def _on_state(self, body: dict[str, Any], now: float, text: str) -> None:
        count = int(body.get("global", 0))
        seen = [item for item in self.visible if item[0] <= count]
        if seen:
            self.visible = [item for item in self.visible if item[0] > count]
            for _, sent in seen:
                fire(self.environment, "click visible", (now - sent) * 1000)

    @task(8)
    def click_once(self) -> None:
        """One click, waiting for the ack as the page would before showing the count."""
        done = self._click(1)
        try:
            done.get(timeout=ACK_TIMEOUT_S)
        except gevent.Timeout:
            fire(self.environment, "click ack", ACK_TIMEOUT_S * 1000, exc=TimeoutError("no ack"))

    @task(1)
    def burst(self) -> None:
        """A burst: a second or so of fast clicking, batched per tick as the page does."""
        for _ in range(random.randint(5, 12)):
            self._click(random.randint(1, 2))
            gevent.sleep(0.1)

    def on_stop(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is None:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while conn.pending and time.monotonic() < deadline and not conn.reader.dead:
            gevent.sleep(0.05)
        self.book["in_doubt"] += self.in_flight
        self.in_flight = 0
        conn.close()


class Spectator(HttpUser):
    """Watches: counts ticks, measures the gaps between them and their delay."""

    weight = 2
    wait_time = between(1, 2)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.tick_s = getattr(options, "clickky_tick_ms", 100) / 1000
        self.last_tick = -1
        self.last_at: float | None = None
        self.ticks = 0
        self.conn = _connect(self.environment, pick_host(self.environment), None, self._on_state)

    def _on_state(self, body: dict[str, Any], now: float, text: str) -> None:
        env = self.environment
        tick = int(body.get("tick", -1))
        if tick <= self.last_tick:
            fire(env, "tick duplicate", 0, len(text), exc=Refused(f"tick {tick} seen again"))
            return
        self.ticks += 1
        if self.last_at is not None:
            fire(env, "tick gap", (now - self.last_at) * 1000, len(text))
        if self.last_tick >= 0:  # the first state is the welcome, sent at connect time
            fire(env, "tick latency", max(0.0, time.time() - tick * self.tick_s) * 1000, len(text))
        self.last_tick, self.last_at = tick, now

    @task
    def watch(self) -> None:
        """Spectators only listen; the reader greenlet does the work."""
        gevent.sleep(1)

    def on_stop(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


class HttpPlayer(HttpUser):
    """Joins and clicks over plain HTTP, with a small batch now and then."""

    weight = 2
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.base = pick_host(self.environment)
        self.name, token = _join(self, self.base)
        self.book = LEDGER.open(self.name)
        self.headers = {"Authorization": f"Bearer {token}"}

    @task
    def click(self) -> None:
        n = 1 if random.random() < 0.8 else random.randint(2, 5)
        self.book["in_doubt"] += n  # until an answer says what happened to it
        with self.client.post(
            f"{self.base}/api/click",
            json={"n": n},
            headers=self.headers,
            name="/api/click",
            catch_response=True,
        ) as response:
            self.book["in_doubt"] -= n
            if response.status_code == 200:
                self.book["acked"] += n
            elif response.status_code == 429:
                self.book["rate_limited"] += n
                response.success()  # the limit working is not a failure; counted apart
            elif response.status_code == 0:  # no answer: it may or may not have counted
                self.book["in_doubt"] += n
                response.failure(f"no response: {response.error}")
            else:
                self.book["refused_other"] += n
                response.failure(f"{response.status_code}: {response.text[:200]}")
