"""gunicorn with 2 uvicorn workers (deploy/gunicorn.conf.py): one port, two processes, one truth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Player, Proc, Stack, eventually, join, wait_ready, wait_until
from tests.system.ops_support import (
    children,
    established_by_pid,
    metric,
    pinned_clients,
    samples,
    start_gunicorn,
)

pytestmark = pytest.mark.system


@pytest.fixture
def gunicorn(stack: Stack) -> Iterator[Callable[..., tuple[Proc, str]]]:
    """Start gunicorn; afterwards stop it, then SIGKILL whatever is left in its group.

    A worker whose shutdown hangs must not outlive the test, even if its master is gone.
    """
    started: list[Proc] = []

    def factory(**extra: Any) -> tuple[Proc, str]:
        proc, url = start_gunicorn(stack, **extra)
        started.append(proc)
        return proc, url

    yield factory
    for proc in started:
        proc.stop(timeout=20)
        assert proc.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)


def metrics_dir(log: str) -> Path:
    found = re.search(r"Prometheus multiprocess directory: (\S+)", log)
    assert found, f"gunicorn did not log its metrics directory:\n{log[-2000:]}"
    return Path(found.group(1))


async def test_counts_ticks_presence_and_metrics_across_workers(
    gunicorn: Callable[..., tuple[Proc, str]],
) -> None:
    proc, url = gunicorn(workers=2, PRESENCE_TTL_S="2")
    wait_ready(url, proc)
    assert proc.popen is not None
    master = proc.popen.pid
    port = int(url.rsplit(":", 1)[1])
    wait_until(lambda: len(children(master)) == 2, timeout=30)
    workers = children(master)
    directory = metrics_dir(proc.log())
    assert directory.is_dir()
    assert any(directory.glob("*.db")), "the workers write no multiprocess files"

    async with pinned_clients(url, count=2) as pinned:
        assert set(pinned) == set(workers)
        a, b = (pinned[pid] for pid in workers)
        tokens = {name: await join(a if i % 2 else b, name) for i, name in enumerate("pqrs")}

        # Sockets: keep connecting until both workers hold some (the kernel picks).
        sockets: list[Player] = []
        try:
            names = list(tokens)
            for i in range(40):
                token = tokens[names[i]] if i < len(names) else None
                sockets.append(await Player(url, token).connect())
                # Each pinned HTTP client holds one connection on its worker too.
                held = established_by_pid(port, workers)
                if i >= len(names) and all(count >= 2 for count in held.values()):
                    break
            held = {pid: count - 1 for pid, count in established_by_pid(port, workers).items()}
            assert all(held.values()), f"sockets did not reach both workers: {held}"
            assert sum(held.values()) == len(sockets)
            players, spectators = sockets[: len(names)], sockets[len(names) :]

            # Clicks through both workers: HTTP on each pinned connection, and sockets.
            http_clicks = 0
            for client, name, n in ((a, "p", 2), (b, "q", 5), (a, "r", 1), (b, "p", 3)):
                response = await client.post(
                    "/api/click", json={"n": n}, headers={"Authorization": f"Bearer {tokens[name]}"}
                )
                assert response.status_code == 200, response.text
                http_clicks += n
            socket_clicks = 0
            for player in players:
                for _ in range(3):
                    ack = await player.click(2)
                    assert "error" not in ack, ack
                    socket_clicks += 2
            total = http_clicks + socket_clicks

            # Ticks: every spectator, on whichever worker, sees every click, once per tick.
            for spectator in spectators:
                await eventually(lambda s=spectator: s.states and s.last["global"] == total)
                ticks = [state["tick"] for state in spectator.states[1:]]
                assert ticks == sorted(set(ticks)), "duplicate or out-of-order tick"

            # Presence and counts agree whichever worker answers.
            for client in (a, b):
                state = (await client.get("/api/state")).json()
                assert state["global"] == total
                assert state["online"] == len(sockets)
                board = (await client.get("/api/leaderboard")).json()
                assert sum(e["count"] for e in board["entries"]) == total

            # /metrics sums the workers: the same totals from each of them.
            for client in (a, b):
                text = (await client.get("/metrics")).text
                assert metric(text, "clickky_clicks_total", transport="http") == http_clicks
                assert metric(text, "clickky_clicks_total", transport="socket") == socket_clicks
                assert metric(text, "clickky_connections") == len(sockets)
                assert metric(text, "clickky_global_clicks") == total

            # SIGKILL one worker: gunicorn replaces it, child_exit drops its live gauges,
            # presence expires, and the counters it had counted are kept.
            victim, survivor = workers
            os.kill(victim, signal.SIGKILL)
            client = pinned[survivor]
            await eventually(lambda: set(children(master)) - {victim, survivor}, timeout=30)
            expected = held[survivor]
            await eventually(lambda: connections_are(client, expected), timeout=15)
            await eventually(lambda: online_is(client, expected), timeout=15)
            text = (await client.get("/metrics")).text
            assert metric(text, "clickky_clicks_total", transport="http") == http_clicks
            assert metric(text, "clickky_clicks_total", transport="socket") == socket_clicks
            assert (await client.get("/api/state")).json()["global"] == total
        finally:
            await asyncio.gather(*(s.close() for s in sockets))

    # A graceful stop removes the temporary metrics directory the config created.
    assert proc.stop(timeout=30) == 0, proc.log()[-3000:]
    assert not directory.exists()


async def connections_are(client: httpx.AsyncClient, expected: int) -> bool:
    text = (await client.get("/metrics")).text
    return metric(text, "clickky_connections") == expected


async def online_is(client: httpx.AsyncClient, expected: int) -> bool:
    return bool((await client.get("/api/state")).json()["online"] == expected)


async def test_cluster_gauges_are_reported_once(
    gunicorn: Callable[..., tuple[Proc, str]],
) -> None:
    proc, url = gunicorn(workers=2)
    wait_ready(url, proc)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for _ in range(3):
            text = (await http.get("/metrics")).text
    types = re.findall(r"^# TYPE (\S+)", text, flags=re.MULTILINE)
    assert sorted(types) == sorted(set(types)), "a metric family appears twice"
    assert [labels for labels, _ in samples(text, "clickky_global_clicks")] == [{}]
