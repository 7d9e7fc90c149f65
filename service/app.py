"""Builds the ASGI application (`service.app:app`) and owns its lifespan."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import engineio
import socketio
from redis.exceptions import RedisError
from starlette.applications import Starlette

from service import api, events, footprint, metrics, openapi, pages
from service.activity import Feed
from service.admin import Admins
from service.admission import Admission, Arrival, ClickGate
from service.audit import AuditLog, Record
from service.bootstrap import mark_fresh_start, token_secret
from service.breakdown import Profile, warm_up
from service.bus import Bus
from service.connection import connect_redis
from service.counter import ClickResult, Counter
from service.errors import ApiError
from service.events import player_room
from service.fanout import Fanout
from service.frames import FrameServer
from service.janitor import SocketJanitor
from service.keys import Keys
from service.logs import configure_logging
from service.loops import Loop
from service.presence import Presence
from service.settings import Settings
from service.store import Store
from service.ticker import Ticker
from service.tokens import Player, TokenSigner

log = logging.getLogger("service")


class Runtime:
    """Everything one running instance holds. The lifespan fills it and empties it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
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
        except RedisError as exc:
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


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open Redis, load the secret, start the loops; undo it all in reverse on shutdown."""
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    configure_logging(settings.log_level, settings.log_format, instance=runtime.instance_id)
    warm_up()
    async with contextlib.AsyncExitStack() as stack:
        redis = connect_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        # The loops get connections of their own, so a flood of clicks waiting for the
        # main pool can never delay a tick, a heartbeat or the pub/sub listener.
        # Their commands are reads and absolute writes, safe to re-send on a lost reply.
        loops_redis = connect_redis(settings.redis_url, max_connections=6, retry=True)
        stack.push_async_callback(loops_redis.aclose)
        runtime.counter = counter = Counter(redis, runtime.keys, admission=runtime.admission)
        stack.push_async_callback(counter.drain)
        store = Store(settings.database_url)
        runtime.signer = TokenSigner(await token_secret(settings, counter, store))
        await mark_fresh_start(counter, store)

        background = Counter(loops_redis, runtime.keys)
        runtime.presence = Presence(background, runtime.instance_id, settings.presence_ttl_s)
        runtime.ticker = Ticker(background, settings.broadcast_interval_ms, runtime.broadcast_state)
        runtime.bus = Bus(
            loops_redis,
            runtime.keys.events,
            runtime.instance_id,
            runtime.deliver,
            publisher=redis,
        )
        runtime.audit = AuditLog(store)
        runtime.feed = Feed(redis, runtime.keys, runtime.instance_id, runtime.deliver)
        stack.push_async_callback(runtime.feed.drain)
        runtime.admins = Admins(
            redis,
            runtime.keys,
            admin_token=settings.admin_token,
            named=settings.admin_tokens,
            failures_per_min=settings.admin_failures_per_min,
            on_blocked=runtime.login_blocked,
        )
        # Capped at 10 s, not 60: an admin edit should reach players soon after Redis returns.
        listener = Loop("pubsub", runtime.bus.listen, first_backoff_s=0.5, max_backoff_s=10)
        runtime.bus.on_subscribed = listener.mark_ok
        runtime.loops = [
            Loop("lag", runtime.admission.probe.step),
            Loop("presence", runtime.presence.step, first_backoff_s=0.5, max_backoff_s=5),
            Loop("ticker", runtime.ticker.step, first_backoff_s=0.2, max_backoff_s=2),
            listener,
        ]
        for loop in runtime.loops:
            loop.start()
            stack.push_async_callback(loop.stop)
        stack.push_async_callback(_leave, runtime)
        log.info(
            "instance %s serving (tick %d ms, Redis %s)",
            runtime.instance_id,
            settings.broadcast_interval_ms,
            _redacted(settings.redis_url),
        )
        yield
        runtime.draining = True
        log.info("instance %s shutting down", runtime.instance_id)


async def _leave(runtime: Runtime) -> None:
    """Drop our presence at once instead of waiting for the heartbeat to expire."""
    with contextlib.suppress(Exception):
        await runtime.presence.leave()


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def create_app(settings: Settings | None = None) -> SocketJanitor:
    """The Socket.IO server at /socket.io, with the HTTP API and pages behind it."""
    settings = settings or Settings.load("clickky")
    runtime = Runtime(settings)
    http = Starlette(
        routes=[*api.routes(), *pages.routes(), *openapi.routes()],
        exception_handlers=api.exception_handlers(),
        lifespan=lifespan,
    )
    # A missing trailing slash is a 404 in the contract's shape, not a redirect.
    http.router.redirect_slashes = False
    http.state.runtime = runtime
    events.register(runtime)
    # No on_startup/on_shutdown here: only then does ASGIApp pass the lifespan to Starlette.
    asgi = socketio.ASGIApp(runtime.sio, other_asgi_app=http, socketio_path="socket.io")

    def opened(eio_sid: str, send: Any) -> None:
        runtime.fanout.attach(eio_sid, send)
        footprint.trim(runtime.sio, eio_sid, send)

    janitor = SocketJanitor(
        ClickGate(asgi, runtime.admission),
        runtime.sio,
        on_start=footprint.adopt,
        on_open=opened,
        on_close=runtime.fanout.detach,
    )
    janitor.runtime = runtime  # type: ignore[attr-defined]
    return janitor


app = create_app()
