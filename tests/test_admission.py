"""Admission control: the controlled-delay algorithm, the lag probe, the limiter on the
click path (queued clicks refused without Redis, newest first under a standing queue),
and refusals over both transports that count nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.admission import (
    ARRIVAL_KEY,
    Admission,
    Arrival,
    ClickGate,
    ControlledDelay,
    LagProbe,
)
from service.connection import connect_redis
from service.counter import Counter
from service.errors import ApiError
from service.loops import Loop
from service.shards import Shards
from service.tokens import Player as TokenPlayer
from tests.support import Player, eventually, free_port, join, make_player

NO_LIMIT = 10_000


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allowed_wait_drops_only_after_a_standing_queue() -> None:
    now = 1000.0
    delay = ControlledDelay(0.5, interval_s=0.1, now=now)
    # A queue for less than an interval is a burst: the limit stays.
    assert delay.allowed_s(now + 0.09) == 0.5
    # Not empty for a whole interval: a standing queue; the door's limit drops to 1/40.
    assert delay.congested(now + 0.15)
    assert delay.allowed_s(now + 0.15) == pytest.approx(0.0125)
    # Once the queue is seen empty, back to the full limit.
    delay.empty(now + 0.2)
    assert delay.allowed_s(now + 0.25) == 0.5
    # A refusal keeps the short limit for an interval, queue empty or not.
    delay.refused(now + 0.3)
    delay.empty(now + 0.31)
    assert delay.allowed_s(now + 0.35) == pytest.approx(0.0125)
    delay.empty(now + 0.42)
    assert delay.allowed_s(now + 0.42) == 0.5


def test_under_a_standing_queue_the_door_lets_in_only_what_waited_a_fortieth() -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    assert admission.limit.door_s == pytest.approx(0.0125)
    # A burst: the door lets a click in up to MAX_WAIT_MS.
    assert admission.shed(clock.now - 0.4) == 0
    assert admission.shed(clock.now - 0.6) > 0
    # That refusal means a queue stands: now the door's limit is 12.5 ms.
    assert admission.congested()
    assert admission.shed(clock.now - 0.01) == 0
    assert admission.shed(clock.now - 0.015) == 500  # retry_after_ms: at least half a second
    assert admission.late(clock.now - 0.015) is not None
    # An HTTP click meets the door in its handler: refused beyond the door's limit too.
    admission.probe.previous_lag_s = admission.probe.last_lag_s = 0.015
    with pytest.raises(ApiError):
        admission.arrive()


def test_past_the_door_a_click_is_refused_only_beyond_max_wait() -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    admission.shed(clock.now - 1.0)  # congested: the door's limit is 12.5 ms
    assert admission.congested()
    # A websocket click that passed the door and then waited 0.3 s in the loop is served:
    # most of its cost is spent already.
    assert admission.arrive(Arrival(clock.now - 0.3)) == pytest.approx(clock.now - 0.3)
    assert not admission.expired(clock.now - 0.49)
    # Beyond MAX_WAIT_MS it is refused, in the handler and in the counter's queue.
    assert admission.expired(clock.now - 0.51)
    with pytest.raises(ApiError) as info:
        admission.arrive(Arrival(clock.now - 0.51))
    assert info.value.code == "overloaded"


def test_probe_ignores_one_stall_but_not_a_standing_lag() -> None:
    clock = Clock()
    probe = LagProbe(period_s=0.02, clock=clock)
    probe.previous_lag_s, probe.last_lag_s = 0.0, 2.0  # one stall (a paused process)
    assert probe.lag_s() == 0.0
    probe.previous_lag_s, probe.last_lag_s = 0.7, 0.9  # lagging, measure after measure
    assert probe.lag_s() == pytest.approx(0.7)
    probe._due_s = clock.now - 0.8  # the probe itself is overdue right now
    probe.previous_lag_s, probe.last_lag_s = 1.0, 0.1
    assert probe.lag_s() == pytest.approx(0.8)


async def test_probe_measures_a_busy_loop() -> None:
    probe = LagProbe(period_s=0.01)
    loop = Loop("lag-test", probe.step)
    loop.start()
    try:
        await asyncio.sleep(0.05)
        assert probe.lag_s() < 0.1
        async with _hogged_loop(0.1):  # every turn of the loop holds it for 0.1 s
            await asyncio.sleep(0.5)
            assert probe.lag_s() > 0.05
        await eventually(lambda: probe.lag_s() < 0.05, timeout=3)
    finally:
        await loop.stop()


def test_arrival_is_refused_when_the_lag_exceeds_the_allowed_wait() -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    admission.probe.previous_lag_s = admission.probe.last_lag_s = 0.2
    assert admission.arrive() == pytest.approx(clock.now - 0.2)
    admission.probe.previous_lag_s = admission.probe.last_lag_s = 0.6
    with pytest.raises(ApiError) as info:
        admission.arrive()
    body = info.value.body()
    assert info.value.status == 503 and body["error"] == "overloaded"
    assert 500 <= body["retry_after_ms"] <= 5000
    assert info.value.headers()["Retry-After"].isdigit()


async def test_a_click_that_waited_too_long_is_refused_without_redis(keys) -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    # A Redis nobody listens on: any call would fail with a connection error.
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    counter = Counter(dead, Shards(keys.prefix), admission=admission)
    player = TokenPlayer(display="Nobody", canon="nobody", nonce="0" * 16)
    try:
        with pytest.raises(ApiError) as info:
            await counter.click(player, 1, NO_LIMIT, arrived=clock.now - 0.6)
        assert info.value.code == "overloaded"
    finally:
        await dead.aclose()


async def test_a_standing_queue_is_served_newest_first(counter, redis, keys) -> None:
    clock = Clock()
    admission = Admission(10.0, clock=clock, probe=LagProbe(clock=clock))
    lifo = Counter(redis, Shards(keys.prefix), max_batch=1, admission=admission)
    players = [await make_player(counter, f"q{i}") for i in range(3)]
    clock.now += 1.0  # a whole interval without a short wait: congested
    assert admission.congested()
    clicks = [
        asyncio.create_task(lifo.click(p, 1, NO_LIMIT, arrived=clock.now - 0.2)) for p in players
    ]
    results = await asyncio.gather(*clicks)
    # Each call carried one click; the newest went first, so it saw global == 1.
    assert [r.global_count for r in results] == [3, 2, 1]


async def test_queue_refusals_leave_the_counts_alone(counter, redis, keys) -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    limited = Counter(redis, Shards(keys.prefix), admission=admission)
    fresh, stale = await make_player(counter, "fresh"), await make_player(counter, "stale")
    ok, refused = await asyncio.gather(
        limited.click(fresh, 2, NO_LIMIT, arrived=clock.now),
        limited.click(stale, 3, NO_LIMIT, arrived=clock.now - 0.6),
        return_exceptions=True,
    )
    assert not isinstance(ok, BaseException) and ok.global_count == 2
    assert isinstance(refused, ApiError) and refused.code == "overloaded"
    assert int(await redis.get(keys.global_count)) == 2
    assert await redis.zscore(keys.board, "stale") == 0


@contextlib.asynccontextmanager
async def _hogged_loop(block_s: float) -> AsyncIterator[None]:
    """Make this event loop lag: a task that blocks it for block_s, over and over."""

    async def hog() -> None:
        while True:
            time.sleep(block_s)  # noqa: ASYNC251 -- blocking the loop is the point
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_overloaded_instance_refuses_at_once_over_both_transports(serve, counter) -> None:
    server = await serve(max_wait_ms=40)
    async with server.client() as http:
        token = await join(http, "Busy")
        player = await Player(server.url, token).connect()
        try:
            async with _hogged_loop(0.06):
                await asyncio.sleep(0.3)  # the probe sees lag measure after measure
                response = await http.post("/api/click", headers=_bearer(token), json={"n": 2})
                ack = await player.click(3)
                ready = await http.get("/readyz")
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "overloaded"
            assert int(response.headers["Retry-After"]) >= 1
            assert ack["error"] == "overloaded" and ack["retry_after_ms"] >= 500
            assert set(ack) == {"error", "detail", "retry_after_ms"}
            assert ready.status_code == 503 and "overloaded" in ready.json()["detail"]
            state = (await http.get("/api/state")).json()
            assert state["global"] == 0, "a refused click was counted"
            # The loop is on time again (on a busy machine that may take a moment): clicks count.
            await eventually(lambda: not server.runtime.admission.overloaded(), timeout=5)
            ack = await player.click(1)
            for _ in range(20):
                if ack.get("error") != "overloaded":
                    break
                await asyncio.sleep(0.1)
                ack = await player.click(1)
            assert ack == {"user": 1, "global": 1, "rank": 1}
        finally:
            await player.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_gate_refuses_a_click_that_sat_in_the_buffers() -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    seen: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []
    scope: dict[str, Any] = {"type": "websocket"}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (message := await receive())["type"] != "websocket.disconnect":
            seen.append(message)
            if len(seen) == 1:
                clock.now += 0.6  # the first frame keeps the server busy; the rest queue up

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    def frame(text: str) -> dict[str, Any]:
        return {"type": "websocket.receive", "text": text}

    gate = asyncio.create_task(ClickGate(app, admission)(scope, frames.get, send))
    await asyncio.sleep(0)  # the app waits for its first frame: the queue was empty
    clock.now += 0.1
    arrived = clock.now
    for text in ('420["click",{"n":1}]', '421["click",{"n":1,"id":"a"}]', '42["nope"]'):
        frames.put_nowait(frame(text))
    frames.put_nowait({"type": "websocket.disconnect"})
    await gate
    assert scope[ARRIVAL_KEY].at == arrived  # the queued frames kept the first one's stamp
    assert [m["text"] for m in seen] == ['420["click",{"n":1}]', '42["nope"]']
    assert len(sent) == 1 and sent[0]["text"].startswith('431[{"error":"overloaded"')
    assert json.loads(sent[0]["text"][3:])[0]["retry_after_ms"] >= 500
