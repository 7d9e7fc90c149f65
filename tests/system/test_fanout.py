"""Fan-out on real processes: a crowd on one instance, and the same state for every client kind."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import WebSocket, async_playwright
from websockets.asyncio.client import connect

from tests.checks import bearer
from tests.support import Player, Stack
from tests.system.browser_support import chromium_path, launch

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
STATE = '42["state",'


def test_one_instance_holds_1000_spectators_at_ten_states_a_second(redis_url: str) -> None:
    """loadtest/fanout.py's run for N=1000: every spectator at ~10 Hz, promptly, in order."""
    run = subprocess.run(
        [
            *(sys.executable, str(ROOT / "loadtest" / "fanout.py"), "--n", "1000"),
            *("--procs", "2", "--duration", "5", "--warmup", "1", "--redis-url", redis_url),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    line = json.loads(run.stdout.splitlines()[-1])
    assert line["opened"] == 1000, line
    assert line["states_per_s"] >= 9.0, line
    assert line["states_per_s_min"] >= 8.0, line  # nobody starves
    assert line["delay_ms_p99"] <= 250, line
    assert line["stale_states"] == 0 and line["dropped"] == 0, line


async def _raw_engineio_states(url: str, into: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """A bare Engine.IO v4 websocket client speaking the Socket.IO packets by hand."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with connect(ws_url, compression=None) as ws:
        assert str(await ws.recv()).startswith("0{")
        await ws.send("40")
        assert str(await ws.recv()).startswith("40{")
        while not stop.is_set():
            try:
                text = str(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                continue
            if text == "2":
                await ws.send("3")
            elif text.startswith(STATE):
                into.append(json.loads(text[len(STATE) : -1]))


def _page_frames(ws: WebSocket, into: list[dict[str, Any]]) -> None:
    def on_frame(payload: str | bytes) -> None:
        if isinstance(payload, str) and payload.startswith(STATE):
            into.append(json.loads(payload[len(STATE) : -1]))

    ws.on("framereceived", on_frame)


async def test_page_python_socketio_and_raw_engineio_get_the_same_state_bodies(
    stack: Stack,
) -> None:
    chromium_path()
    instance = stack.instance()
    page_states: list[dict[str, Any]] = []
    raw_states: list[dict[str, Any]] = []
    stop = asyncio.Event()
    python = await Player(instance.url).connect()
    raw = asyncio.create_task(_raw_engineio_states(instance.url, raw_states, stop))
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            page = await browser.new_page(base_url=instance.url)
            page.on("websocket", lambda ws: _page_frames(ws, page_states))
            await page.goto("/")
            async with httpx.AsyncClient(base_url=instance.url, timeout=5) as http:
                joined = await http.post("/api/join", json={"username": "Fan Out"})
                token = joined.json()["token"]
                for _ in range(8):
                    response = await http.post("/api/click", json={"n": 2}, headers=bearer(token))
                    assert response.status_code == 200, response.text
                    await asyncio.sleep(0.25)
            await asyncio.sleep(0.5)
        finally:
            await browser.close()
            stop.set()
            await raw
            await python.close()
    # Each client's first state is its welcome: read when it connected, labelled with the
    # tick broadcast before it (Ticker.welcome), so it may be newer than that broadcast.
    by_tick = [
        {s["tick"]: s for s in states[1:]} for states in (page_states, python.states, raw_states)
    ]
    common = set(by_tick[0]) & set(by_tick[1]) & set(by_tick[2])
    assert len(common) >= 5, [sorted(t) for t in by_tick]
    for tick in common:
        assert by_tick[0][tick] == by_tick[1][tick] == by_tick[2][tick]
    assert max(by_tick[1][t]["global"] for t in common) == 16


async def _watch_states(url: str, arrivals: list[float], stop: asyncio.Event) -> None:
    """A spectator that reads everything and notes when each state arrived."""
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with connect(ws_url, compression=None) as ws:
        await ws.recv()
        await ws.send("40")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                text = str(await asyncio.wait_for(ws.recv(), 0.2))
                if text == "2":
                    await ws.send("3")
                elif text.startswith(STATE):
                    arrivals.append(time.monotonic())


async def test_a_spectator_that_stops_reading_is_cut_and_nobody_else_waits(
    stack: Stack,
) -> None:
    instance = stack.instance()
    url = instance.url
    # The stalled client: a small receive buffer, and a websockets client that stops
    # reading its socket once one message waits unread (max_queue=1).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", instance.port))
    ws_url = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    stalled = await connect(ws_url, sock=sock, compression=None, max_queue=1)
    await stalled.recv()
    await stalled.send("40")
    arrivals: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_states(url, arrivals, stop))
    cut_after = None
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        token = (await http.post("/api/join", json={"username": "Mover"})).json()["token"]
        while time.monotonic() - started < 25:
            await http.post("/api/click", json={"n": 1}, headers=bearer(token))
            metrics = (await http.get("/metrics")).text
            if "clickky_slow_readers_dropped_total 1.0" in metrics:
                cut_after = time.monotonic() - started
                break
            await asyncio.sleep(0.05)
        for _ in range(10):  # the others still get states after the cut
            await http.post("/api/click", json={"n": 1}, headers=bearer(token))
            await asyncio.sleep(0.1)
    stop.set()
    await watcher
    await stalled.close()
    assert cut_after is not None, "the stalled spectator was never cut"
    # Clicks come every ~0.1 s, so a state every tick or two; never a long wait.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 5 * cut_after, (len(arrivals), cut_after)
    assert max(gaps) < 1.0, f"the reading spectator waited {max(gaps):.2f} s for a state"
