"""What one instance owns: its clients, loops and per-connection state (`Runtime`)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any

import engineio
import socketio

from service import footprint, metrics
from service.activity import Feed
from service.admin import Admins
from service.admission import Admission, Arrival
from service.audit import AuditLog, Record
from service.breakdown import Profile
from service.bus import Bus
from service.connection import REDIS_ERRORS
from service.counter import ClickResult, Counter
from service.errors import ApiError
from service.events import player_room
from service.fanout import Fanout
from service.frames import FrameServer
from service.loops import Loop
from service.presence import Presence
from service.settings import Settings
from service.shedder import Shedder
from service.ticker import Ticker
from service.tokens import Player, TokenSigner

log = logging.getLogger("service")


class Runtime:
    """Everything one running instance holds. The lifespan fills it and empties it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The key layout (service/shards.py); `keys` are the hub's: events, feed, admins.
        self.shards = settings.shards
        self.keys = self.shards.hub
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        origins: Any = list(settings.allowed_origins) or None
        # Judges every client packet before the handlers see it (service/frames.py).
        self.sio = FrameServer(
            async_mode="asgi",
            # Websocket only: any instance can serve any connection, so the load
            # balancer needs no sticky sessions (polling would need them).
            transports=["websocket"],
            max_http_buffer_size=settings.max_body_bytes,
            cors_allowed_origins=origins,
            logger=False,
            engineio_logger=False,
        )
        footprint.slim(self.sio)
        self.players: dict[str, Player] = {}
        self.profiles: dict[str, Profile] = {}
        # Connections this instance has counted (a client can send an event named
        # "connect" or "disconnect"; only the real ones may move presence).
        self.connected: set[str] = set()
        # Connections whose first state is on its way; broadcasts skip them until then.
        self.welcoming: set[str] = set()
        self.draining = False
        self.fanout = Fanout()
        self.admission = Admission(settings.max_wait_ms / 1000)
        self.arrivals: dict[str, Arrival] = {}  # per connection, stamped by the ClickGate
        # Answers late clicks from their raw websocket frames, before the ClickGate.
        self.shedder = Shedder(self.admission)
        # Set by the lifespan:
        self.counter: Counter
        self.signer: TokenSigner
        self.presence: Presence
        self.ticker: Ticker
        self.bus: Bus
        self.admins: Admins
        self.audit: AuditLog
        self.feed: Feed
        self.loops: list[Loop] = []

    async def deliver(self, event: str, data: Any, room: str | None) -> None:
        """Send an event to this instance's clients (all of them, or one room)."""
        await self.sio.emit(event, data, to=room)

    async def broadcast_state(self, body: dict[str, Any]) -> None:
        """Send one tick to every local client but those still waiting for their welcome."""
        started = time.perf_counter()
        await self.send_state(
            body,
            (
                eio_sid
                for sid, eio_sid in self.sio.manager.get_participants("/", None)
                if sid not in self.welcoming
            ),
        )
        took = time.perf_counter() - started
        metrics.FANOUT_SECONDS.observe(took)
        if took * 1000 > self.settings.broadcast_interval_ms:
            metrics.FANOUT_OVERRUNS.inc()

    async def send_state(self, body: dict[str, Any], eio_sids: Iterable[str]) -> None:
        """Send a state message to these sockets, in order and without yielding first.

        The packet is encoded once. service/fanout.py writes it straight to the sockets
        it holds (all of them under uvicorn's websocket protocols) whose Engine.IO queue
        is empty; any other goes through that queue, behind what waits there (a welcome
        behind the Socket.IO CONNECT packet). python-socketio's emit would start one
        task per recipient, and those tasks could queue a welcome after a newer tick.
        """
        encoded = self.sio.packet_class(
            socketio.packet.EVENT, namespace="/", data=["state", body]
        ).encode()
        message = engineio.packet.Packet(engineio.packet.MESSAGE, encoded)
        sockets = self.sio.eio.sockets
        direct: list[str] = []
        queued: list[str] = []
        for eio_sid in eio_sids:
            session = sockets.get(eio_sid)
            (direct if session is not None and not session.queue.qsize() else queued).append(
                eio_sid
            )
        sent, others = self.fanout.send(message.encode(), direct)
        others += queued
        for eio_sid in others:
            with contextlib.suppress(engineio.exceptions.SocketIsClosedError):
                await self.sio.eio.send_packet(eio_sid, message)
                sent += 1
        metrics.STATE_BYTES.inc(len(encoded) * sent)

    def forget(self, sid: str) -> None:
        """Drop everything this instance holds for a connection; idempotent."""
        if sid in self.connected:
            self.connected.discard(sid)
            self.presence.disconnected()
        self.players.pop(sid, None)
        self.profiles.pop(sid, None)
        self.arrivals.pop(sid, None)
        self.welcoming.discard(sid)

    async def click(
        self,
        player: Player,
        n: int,
        profile: Profile,
        transport: str,
        click_id: str = "",
        arrival: Arrival | None = None,
    ) -> dict[str, int]:
        """Count a click batch from either transport; the ack body, or an ApiError."""
        try:
            arrived = self.admission.arrive(arrival)
            result = await self.counter.click(
                player,
                n,
                self.settings.rate_limit_cps,
                profile,
                click_id=click_id,
                arrived=arrived,
            )
        except ApiError as exc:
            metrics.REFUSED.labels(exc.code).inc()
            raise
        if result.repeated:
            metrics.REPEATED.labels(transport).inc()
        else:
            metrics.CLICKS.labels(transport).inc(n)
        await self.announce_milestones(player, result)
        if self.shards.sharded:
            # A rank across shards costs a read on every shard; GET /api/users/{name} has it.
            return {"user": result.user, "global": result.global_count}
        return {"user": result.user, "global": result.global_count, "rank": result.rank}

    async def announce_milestones(self, player: Player, result: ClickResult) -> None:
        """Tell everyone (global) or the player (personal); the Lua script fired it once."""
        try:
            if result.global_milestone:
                data = {
                    "scope": "global",
                    "value": result.global_milestone,
                    "username": player.display,
                }
                await self.bus.publish("milestone", data)
                self.feed.post("milestone", value=data["value"], username=player.display)
            if result.personal_milestone:
                data = {
                    "scope": "personal",
                    "value": result.personal_milestone,
                    "username": player.display,
                }
                await self.bus.publish(
                    "milestone", data, room=player_room(player.canon, player.nonce)
                )
        except REDIS_ERRORS as exc:
            log.warning("could not announce a milestone: %s", exc)

    async def announce_global_milestone(self, value: int) -> None:
        """Tell everyone a global milestone the ticker claimed (several shards only: the
        sum crossed it, so no single player's click did)."""
        try:
            data = {"scope": "global", "value": value, "username": ""}  # no one click did it
            await self.bus.publish("milestone", data)
            self.feed.post("milestone", value=value, username="")
        except REDIS_ERRORS as exc:
            log.warning("could not announce a milestone: %s", exc)

    async def tell_admins(self, record: Record) -> None:
        """Put an audited admin action on the admins' live feed."""
        kind = "login_blocked" if record.action == "login_blocked" else "admin"
        body = {k: v for k, v in record.as_json().items() if k not in ("id", "at_ms")}
        await self.feed.add(kind, **body)

    async def login_blocked(self, address: str) -> None:
        """An address reached the failed-login limit: audit it once per window."""
        record = Record(admin="-", action="login_blocked", address=address)
        await self.tell_admins(await self.audit.record(record) or record)
