"""Builds the ASGI application (`service.app:app`) and owns its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from starlette.applications import Starlette

from service import api, events, footprint, openapi, pages
from service.activity import Feed
from service.admin import Admins
from service.admission import ClickGate
from service.audit import AuditLog
from service.bootstrap import check_layout, mark_fresh_start, token_secret
from service.breakdown import warm_up
from service.bus import Bus
from service.connection import MAX_CONNECTIONS, connect_redis, ready
from service.counter import Counter
from service.janitor import SocketJanitor
from service.logs import configure_logging
from service.loops import Loop
from service.presence import Presence
from service.runtime import Runtime
from service.settings import Settings
from service.store import Store
from service.ticker import Ticker
from service.tokens import TokenSigner

log = logging.getLogger("service")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Open Redis, load the secret, start the loops; undo it all in reverse on shutdown."""
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    configure_logging(settings.log_level, settings.log_format, instance=runtime.instance_id)
    warm_up()
    async with contextlib.AsyncExitStack() as stack:
        # Each shard may have a click call in flight besides the reads: one more per shard.
        redis = connect_redis(
            settings.redis_url, max_connections=MAX_CONNECTIONS + runtime.shards.count
        )
        stack.push_async_callback(redis.aclose)
        # The loops get connections of their own, so a flood of clicks waiting for the
        # main pool can never delay a tick, a heartbeat or the pub/sub listener.
        # Their commands are reads and absolute writes, safe to re-send on a lost reply.
        loops_redis = connect_redis(settings.redis_url, max_connections=6, retry=True)
        stack.push_async_callback(loops_redis.aclose)
        await ready(loops_redis)
        await check_layout(runtime.shards, redis)
        runtime.counter = counter = Counter(redis, runtime.shards, admission=runtime.admission)
        stack.push_async_callback(counter.drain)
        store = Store(settings.database_url)
        runtime.signer = TokenSigner(await token_secret(settings, counter, store))
        await mark_fresh_start(counter, store)

        background = Counter(loops_redis, runtime.shards, peer=counter)
        runtime.presence = Presence(background, runtime.instance_id, settings.presence_ttl_s)
        runtime.ticker = Ticker(
            background,
            settings.broadcast_interval_ms,
            runtime.broadcast_state,
            on_milestone=runtime.announce_global_milestone,
        )
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

    def started(send: Any) -> None:
        footprint.adopt(send)
        runtime.shedder.attach(send)

    def opened(eio_sid: str, send: Any) -> None:
        runtime.fanout.attach(eio_sid, send)
        footprint.trim(runtime.sio, eio_sid, send)

    janitor = SocketJanitor(
        ClickGate(asgi, runtime.admission),
        runtime.sio,
        on_start=started,
        on_open=opened,
        on_close=runtime.fanout.detach,
    )
    janitor.runtime = runtime  # type: ignore[attr-defined]
    return janitor


app = create_app()
