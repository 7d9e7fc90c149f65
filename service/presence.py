"""Presence: each instance publishes its connection count under a heartbeat that expires.

Online is the sum over instances with a live heartbeat, so an instance killed
with SIGKILL stops counting after the TTL instead of leaking its connections.
"""

from __future__ import annotations

import asyncio
import contextlib

from service import metrics
from service.counter import Counter


class Presence:
    """Counts this instance's connections and keeps its heartbeat in Redis fresh."""

    def __init__(self, counter: Counter, instance_id: str, ttl_s: float) -> None:
        self.counter = counter
        self.instance_id = instance_id
        self.ttl_ms = int(ttl_s * 1000)
        # Beat several times per TTL so one slow beat does not make us vanish.
        self.beat_s = ttl_s / 5
        self.connections = 0
        self._changed = asyncio.Event()

    def connected(self) -> None:
        self.connections += 1
        metrics.CONNECTIONS.set(self.connections)
        self._changed.set()

    def disconnected(self) -> None:
        self.connections = max(0, self.connections - 1)
        metrics.CONNECTIONS.set(self.connections)
        self._changed.set()

    async def step(self) -> None:
        """Write the heartbeat, then wait for a change or the next beat."""
        self._changed.clear()
        await self.counter.heartbeat(self.instance_id, self.connections, self.ttl_ms)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=self.beat_s)

    async def leave(self) -> None:
        """Stop counting this instance at once (graceful shutdown)."""
        await self.counter.leave(self.instance_id)
