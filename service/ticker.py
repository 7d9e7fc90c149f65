"""Broadcast by tick: at most one `state` message per tick, and only when it changed.

Every instance reads the whole state from Redis once per tick and sends it to
its own clients only. A client is connected to one instance, so it can never
receive a tick twice, however many instances run; tick ids come from Redis's
clock made monotonic (state.lua: it never goes back, even when Redis's TIME
does), so they agree across instances and never repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from service import metrics
from service.counter import Counter, State

CPS_WINDOW_MS = 2000

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Announce = Callable[[int], Awaitable[None]]


class ClickRate:
    """Clicks per second over the last two seconds, from samples of the all-time click total."""

    def __init__(self) -> None:
        self._samples: deque[tuple[int, int]] = deque()

    def add(self, server_ms: int, clicks_total: int) -> float:
        samples = self._samples
        if samples and (clicks_total < samples[-1][1] or server_ms < samples[-1][0]):
            samples.clear()  # Redis lost its data or its clock jumped: start over
        samples.append((server_ms, clicks_total))
        while len(samples) > 2 and samples[1][0] <= server_ms - CPS_WINDOW_MS:
            samples.popleft()
        return self.current()

    def current(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return round((c1 - c0) * 1000 / (t1 - t0), 1) if t1 > t0 else 0.0


def state_body(state: State, cps: float, tick: int) -> dict[str, Any]:
    """The contract's state message (and GET /api/state body), plus the tick id and the
    all-time click total (which, unlike global, admin edits leave alone)."""
    return {
        "global": state.global_count,
        "clicks": state.clicks_total,
        "online": state.online,
        "cps": cps,
        "users": state.users,
        "top": [{"username": name, "count": count} for name, count in state.top],
        "tick": tick,
    }


class Ticker:
    """Reads the state once per tick and hands it to `emit` when it differs from the last."""

    def __init__(
        self, counter: Counter, interval_ms: int, emit: Emit, on_milestone: Announce | None = None
    ) -> None:
        self.counter = counter
        self.interval_ms = interval_ms
        self.emit = emit
        # On several shards, global milestones are judged here, on the summed global.
        self.on_milestone = on_milestone
        self.rate = ClickRate()
        self.last_body: dict[str, Any] | None = None
        self.last_tick = -1
        # The highest clock seen: Redis never hands out less, even if it lost the clock.
        self.clock_floor_ms = 0
        self.restored = True
        # (last tick when it started, the read) shared by clients connecting together
        self._welcome_read: tuple[int, asyncio.Future[State]] | None = None
        self._next_boundary = 0.0

    def tick_of(self, clock_ms: int) -> int:
        """The tick id of a clock reading. Rounded to the nearest boundary, not floored:
        reads happen just after a local boundary, and once Redis's clock has stepped back
        the monotonic clock sits on that boundary give or take the read's jitter."""
        return (clock_ms + self.interval_ms // 2) // self.interval_ms

    def describe(self, state: State) -> dict[str, Any]:
        """The state as GET /api/state shows it: the current cps and tick id."""
        return state_body(state, self.rate.current(), self.tick_of(state.clock_ms))

    async def welcome(self) -> dict[str, Any]:
        """A fresh state for a client that broadcasts skip until it has had this one.

        The caller sends it in the same step as it stops skipping the client. Its label
        is the last broadcast tick (which skipped this client), so every tick the client
        gets afterwards is higher: nobody sees a tick id twice. If a broadcast went out
        while we read, its body is at least as new as ours, so that one is sent.
        Clients connecting together share one read: a reconnect storm costs one
        Redis call per read, not one per client.
        """
        before = self.last_tick
        if self._welcome_read is None or self._welcome_read[0] != before:
            reading = self.counter.state(floor_ms=self.clock_floor_ms)
            self._welcome_read = (before, asyncio.ensure_future(reading))
        read = self._welcome_read[1]
        try:
            state = await asyncio.shield(read)
        finally:
            if self._welcome_read is not None and self._welcome_read[1] is read and read.done():
                self._welcome_read = None
        if self.last_tick != before and self.last_body is not None:
            return self.last_body
        label = before if before >= 0 else self.tick_of(state.clock_ms) - 1
        return state_body(state, self.rate.current(), label)

    async def step(self) -> None:
        """Sleep to the next tick boundary, then broadcast if anything changed."""
        interval = self.interval_ms / 1000
        now = time.time()
        # The boundary after the last one, even if it has passed (but not before the
        # current tick's): a loop that runs late, under overload, then reads at once
        # instead of waiting for the next boundary, and still sends every tick it can.
        if self._next_boundary:
            boundary = max(self._next_boundary, (now // interval) * interval)
        else:
            boundary = (now // interval + 1) * interval
        self._next_boundary = boundary + interval
        # uvloop may wake a little early; reading Redis then would still be the previous
        # tick, which is skipped, and the next broadcast would come a whole tick late.
        await asyncio.sleep(max(0.0, boundary - time.time()))
        if (early := boundary - time.time()) > 0:
            await asyncio.sleep(early + 0.0005)
        state = await self.counter.state(floor_ms=self.clock_floor_ms)
        self.clock_floor_ms = max(self.clock_floor_ms, state.clock_ms)
        self.restored = state.restored
        if self.on_milestone and (milestone := await self.counter.claim_global_milestone(state)):
            await self.on_milestone(milestone)
        cps = self.rate.add(state.server_ms, state.clicks_total)
        tick = self.tick_of(state.clock_ms)
        if tick <= self.last_tick:
            return  # a slow read spilled into the next tick; never send one twice
        body = state_body(state, cps, tick)
        if self.last_body is not None and _same(body, self.last_body):
            return
        self.last_tick, self.last_body = tick, body
        await self.emit(body)
        metrics.TICKS.inc()
        metrics.BROADCAST_LAG.observe(max(0.0, time.time() - boundary))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[key] == b[key] for key in a if key != "tick")
