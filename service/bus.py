"""Cross-instance events over Redis pub/sub, with a listener that proves it is alive.

An event is delivered to this instance's clients first, then published; every
listener skips its own messages (the python-socketio pattern). Each instance
also publishes a ping and expects to hear it back: a listener that is
subscribed but deaf shows as down in /readyz and /metrics.

On a Redis Cluster the channel is classic pub/sub, which the cluster forwards to every
node: the bus needs one live node, not the channel's slot owner (the hub's primary).
Each instance subscribes, pings and publishes on one node, and moves to the next node
when that one fails, so losing any one node costs the events a reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from service import metrics
from service.junk import JUNK, Junk

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
        # On a cluster: the node the subscription is on (publish uses it too), and how
        # many nodes were tried, so a failed node is followed by the next one.
        self.node: ClusterNode | None = None
        self._tries = zlib.crc32(host_id.encode())  # instances start on different nodes

    @property
    def healthy(self) -> bool:
        """Subscribed, and our own ping came back recently."""
        fresh = time.monotonic() - self.last_echo < 3 * self.ping_interval_s
        return self.subscribed and fresh

    async def publish(self, event: str, data: Any, room: str | None = None) -> None:
        """Deliver locally, then to the other instances."""
        await self.deliver(event, data, room)
        message = encode_message(self.host_id, event, data, room)
        await self._publish(self.publisher, message)

    async def _publish(self, client: Redis, message: str) -> None:
        """PUBLISH on the subscription's node on a cluster, else as usual."""
        node = self.node
        if node is not None and isinstance(client, RedisCluster):
            target = client.get_node(host=node.host, port=node.port)
            if target is not None:
                await client.execute_command("PUBLISH", self.channel, message, target_nodes=target)
                return
        await client.publish(self.channel, message)

    def _next_node(self) -> ClusterNode | None:
        """On a cluster, the next node (primary or replica) to subscribe on, else None."""
        if not isinstance(self.redis, RedisCluster):
            return None
        nodes = sorted(self.redis.get_nodes(), key=lambda n: n.name)
        if not nodes:
            return None  # the slot map is not known yet: the channel's own node
        self._tries += 1
        return nodes[self._tries % len(nodes)]

    async def listen(self) -> None:
        """Subscribe and dispatch until the connection fails; the caller's Loop retries."""
        self.node = self._next_node()
        if self.node is not None:
            pubsub = self.redis.pubsub(node=self.node, ignore_subscribe_messages=True)
        else:
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
                    await self._publish(self.redis, json.dumps(ping))
                    next_ping = now + self.ping_interval_s
                message = await pubsub.get_message(timeout=self.ping_interval_s / 4)
                if message is not None:
                    await self._dispatch(message["data"])
                metrics.PUBSUB_UP.set(1 if self.healthy else 0)
        finally:
            self.subscribed = False
            self.node = None  # until the next node answers, publish as the client routes it
            metrics.PUBSUB_UP.set(0)
            # Bounded: a half-dead connection must not hold up a shutdown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), timeout=2)

    async def _dispatch(self, raw: Any) -> None:
        """Hand a valid event from another instance to `deliver`; drop junk, never raise."""
        try:
            message = parse(raw)
        except Junk as junk:
            JUNK.drop("pubsub", junk.reason, raw)
            return
        if message.host == self.host_id:
            if message.ping is not None:
                self.last_echo = time.monotonic()
            return
        if message.event is not None:
            try:
                await self.deliver(message.event, message.data, message.room)
            except Exception as exc:  # the events after this one must still arrive
                log.warning("could not deliver a %s event: %r", message.event, exc)


@dataclass(frozen=True)
class Message:
    """One message on the events channel: a ping, or an event for clients (one room or all)."""

    host: str
    ping: float | None = None
    event: str | None = None
    data: Any = None
    room: str | None = None


def _you(data: Any) -> bool:
    return data == {"deleted": True} or (
        isinstance(data, dict) and set(data) == {"count"} and _count(data["count"])
    )


def _milestone(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and set(data) == {"scope", "value", "username"}
        and data["scope"] in ("global", "personal")
        and _count(data["value"])
        and isinstance(data["username"], str)
    )


def _activity(data: Any) -> bool:
    # An admin feed entry (service/activity.py); its other fields depend on its kind.
    return (
        isinstance(data, dict)
        and isinstance(data.get("id"), str)
        and isinstance(data.get("kind"), str)
        and _count(data.get("at_ms"))
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The events instances publish, and what their data must look like: nothing else
# read from the channel reaches a browser.
EVENTS: dict[str, Callable[[Any], bool]] = {
    "you": _you,
    "milestone": _milestone,
    "activity": _activity,
}


def parse(raw: Any) -> Message:
    """Validate a message read from the channel; raise Junk saying why it is not one of ours."""
    if not isinstance(raw, bytes | str):
        raise Junk("not_text")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise Junk("not_json") from None
    if not isinstance(message, dict):
        raise Junk("not_an_object")
    host = message.get("host")
    if not isinstance(host, str) or not host:
        raise Junk("no_host")
    if "ping" in message:
        ping = message["ping"]
        if (
            not isinstance(ping, int | float)
            or isinstance(ping, bool)
            or set(message)
            != {
                "host",
                "ping",
            }
        ):
            raise Junk("bad_ping")
        return Message(host, ping=float(ping))
    event, data, room = message.get("event"), message.get("data"), message.get("room")
    if not isinstance(event, str) or event not in EVENTS:
        raise Junk("unknown_event")
    if room is not None and not isinstance(room, str):
        raise Junk("bad_room")
    if not EVENTS[event](data):
        raise Junk("bad_data")
    return Message(host, event=event, data=data, room=room)
