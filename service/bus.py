"""Cross-instance events over Redis pub/sub, with a listener that proves it is alive.

An event is delivered to this instance's clients first, then published; every
listener skips its own messages (the python-socketio pattern). Each instance
also publishes a ping and expects to hear it back: a listener that is
subscribed but deaf shows as down in /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from service import metrics

log = logging.getLogger(__name__)

Deliver = Callable[[str, Any, str | None], Awaitable[None]]


def encode_message(host_id: str, event: str, data: Any, room: str | None) -> str:
    """The wire form of an event on the channel; listeners skip their own host's."""
    message = {"host": host_id, "event": event, "data": data, "room": room}
    return json.dumps(message, separators=(",", ":"))


class Bus:
    """Publish an event to every instance; hand the ones from other instances to `deliver`."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        host_id: str,
        deliver: Deliver,
        *,
        ping_interval_s: float = 2.0,
        publisher: Redis | None = None,
    ) -> None:
        self.redis = redis
        # Events go out on a client that never re-sends (a lost reply must not make an
        # event arrive twice); listening and pings may use one that does.
        self.publisher = publisher or redis
        self.channel = channel
        self.host_id = host_id
        self.deliver = deliver
        self.ping_interval_s = ping_interval_s
        self.subscribed = False
        self.last_echo = 0.0
        # Called on every (re)subscription; the Loop running listen() marks itself healthy.
        self.on_subscribed: Callable[[], None] = lambda: None

    @property
    def healthy(self) -> bool:
        """Subscribed, and our own ping came back recently."""
        fresh = time.monotonic() - self.last_echo < 3 * self.ping_interval_s
        return self.subscribed and fresh

    async def publish(self, event: str, data: Any, room: str | None = None) -> None:
        """Deliver locally, then to the other instances."""
        await self.deliver(event, data, room)
        message = encode_message(self.host_id, event, data, room)
        await self.publisher.publish(self.channel, message)

    async def listen(self) -> None:
        """Subscribe and dispatch until the connection fails; the caller's Loop retries."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self.subscribed = True
            self.on_subscribed()
            metrics.PUBSUB_RECONNECTS.inc()
            log.info("subscribed to %s", self.channel)
            next_ping = 0.0
            while True:
                now = time.monotonic()
                if now >= next_ping:
                    ping = {"host": self.host_id, "ping": now}
                    await self.redis.publish(self.channel, json.dumps(ping))
                    next_ping = now + self.ping_interval_s
                message = await pubsub.get_message(timeout=self.ping_interval_s / 4)
                if message is not None:
                    await self._dispatch(message["data"])
                metrics.PUBSUB_UP.set(1 if self.healthy else 0)
        finally:
            self.subscribed = False
            metrics.PUBSUB_UP.set(0)
            # Bounded: a half-dead connection must not hold up a shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), timeout=2)

    async def _dispatch(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("ignored a malformed message on %s", self.channel)
            return
        if message.get("host") == self.host_id:
            if "ping" in message:
                self.last_echo = time.monotonic()
            return
        if "event" in message:
            await self.deliver(message["event"], message.get("data"), message.get("room"))
