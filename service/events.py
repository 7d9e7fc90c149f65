"""The Socket.IO handlers: connect (player or spectator), click, disconnect, and the rest."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import socketio

from service import metrics
from service.admin import ADMIN_ROOM
from service.admission import ARRIVAL_KEY
from service.breakdown import Profile, classify, country_of
from service.connection import REDIS_ERRORS
from service.counter import ANONYMOUS
from service.errors import ApiError, invalid_token, unavailable
from service.tokens import Player
from service.validation import click_body

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger(__name__)


def player_room(canon: str, nonce: str) -> str:
    """A room per token: events for a user reach only the connections of that join."""
    return f"player:{canon}:{nonce}"


class FloodGuard:
    """Refuses a connection's events beyond a local per-second budget, before Redis sees them."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._windows: dict[str, tuple[int, int]] = {}

    def allow(self, sid: str) -> bool:
        second = int(time.monotonic())
        start, used = self._windows.get(sid, (second, 0))
        if start != second:
            start, used = second, 0
        self._windows[sid] = (start, used + 1)
        return used < self.per_second

    def forget(self, sid: str) -> None:
        self._windows.pop(sid, None)


Handler = Callable[..., Awaitable[Any]]


def _acknowledged(handler: Handler) -> Handler:
    """Turn every refusal into the contract's {"error", "detail"} ack; nothing escapes."""

    @functools.wraps(handler)
    async def wrapper(*args: Any) -> Any:
        try:
            return await handler(*args)
        except ApiError as exc:
            return exc.body()
        except REDIS_ERRORS as exc:
            metrics.REDIS_ERRORS.labels("socket").inc()
            log.warning("Redis error in a socket event: %s", exc)
            return unavailable().body()
        except Exception:
            log.exception("unexpected error in a socket event")
            return {"error": "internal", "detail": "Something went wrong on our side."}

    return wrapper


def register(rt: Runtime) -> None:
    """Attach the handlers to the runtime's Socket.IO server."""
    sio = rt.sio
    pending: set[asyncio.Task[None]] = set()
    # Generous enough for a human with batching, small enough that a flood costs us nothing.
    guard = FloodGuard(per_second=max(2 * rt.settings.rate_limit_cps, 40))

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # Events a client names "connect" or "disconnect" never get here: service/frames.py
        # answers them unknown_event. python-socketio already lists a connecting client as
        # a broadcast recipient while this handler runs; skip it until its own first state
        # is queued.
        rt.welcoming.add(sid)
        try:
            player = await _authenticate(rt, auth)
            admin = await _admin(rt, auth, environ)
        except BaseException:
            rt.welcoming.discard(sid)
            raise
        if admin is not None:
            await sio.enter_room(sid, ADMIN_ROOM)  # the activity feed goes to this room only
        arrival = environ.get("asgi.scope", {}).get(ARRIVAL_KEY)
        if arrival is not None:
            rt.arrivals[sid] = arrival
        if player is not None:
            rt.players[sid] = player
            rt.profiles[sid] = _profile(environ)
            await sio.enter_room(sid, player_room(player.canon, player.nonce))
        rt.connected.add(sid)
        rt.presence.connected()
        welcome = asyncio.create_task(_welcome(rt, sid))
        pending.add(welcome)
        welcome.add_done_callback(pending.discard)

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        rt.forget(sid)
        guard.forget(sid)

    @sio.on("click")
    @_acknowledged
    async def click(sid: str, *args: Any) -> dict[str, Any]:
        if not guard.allow(sid):
            metrics.REFUSED.labels("flood").inc()
            raise ApiError(429, "rate_limited", "Too many events; slow down.", retry_after_s=1)
        player = rt.players.get(sid)
        if player is None:
            metrics.REFUSED.labels("spectator").inc()
            raise ApiError(
                401, "not_a_player", "Spectators cannot click; connect with a token to play."
            )
        if len(args) > 1:
            raise ApiError(422, "invalid_n", 'click takes one argument like {"n": 1}.')
        n, click_id = click_body(args[0] if args else None, rt.settings.rate_limit_cps)
        profile = rt.profiles.get(sid, ANONYMOUS)
        return await rt.click(player, n, profile, "socket", click_id, rt.arrivals.get(sid))

    @sio.on("*")
    @_acknowledged
    async def unknown(event: Any, sid: str, *args: Any) -> dict[str, Any]:
        guard.allow(sid)
        name = str(event)[:40]
        raise ApiError(404, "unknown_event", f"There is no event named {name!r}; use click.")


async def _authenticate(rt: Runtime, auth: Any) -> Player | None:
    """The player a connection's auth names, None for a spectator; refuses bad auth."""
    if rt.draining:
        _refuse(ApiError(503, "shutting_down", "This instance is stopping; reconnect."))
    try:
        rt.admission.check("connect")
    except ApiError as exc:
        _refuse(exc)
    if auth is None:
        return None
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or ("token" in auth and not token):
        _refuse(ApiError(401, "invalid_auth", 'auth must be {"token": "<token>"} or absent.'))
    if token is None:
        return None
    player = rt.signer.read(token)
    if player is None:
        _refuse(invalid_token())
    assert player is not None
    try:
        live = await rt.counter.nonce_is_live(player)
    except REDIS_ERRORS:
        metrics.REDIS_ERRORS.labels("connect").inc()
        _refuse(unavailable())
    if not live:
        _refuse(invalid_token())
    return player


async def _admin(rt: Runtime, auth: Any, environ: dict[str, Any]) -> str | None:
    """The admin named by auth {"admin": token}, None without one; refuses a bad one."""
    if not isinstance(auth, dict) or "admin" not in auth:
        return None
    token = auth["admin"]
    client = environ.get("asgi.scope", {}).get("client") or ("unknown", 0)
    try:
        return await rt.admins.authenticate(token if isinstance(token, str) else "", client[0])
    except ApiError as exc:
        _refuse(exc)
    except REDIS_ERRORS:
        metrics.REDIS_ERRORS.labels("connect").inc()
        _refuse(unavailable())


async def _welcome(rt: Runtime, sid: str) -> None:
    """Send the state at once, after the connection joined the broadcast set."""
    try:
        for _ in range(200):
            if rt.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.005)
        else:
            return  # the client left (or was refused) before its connection completed
        try:
            body = await rt.ticker.welcome()
        except REDIS_ERRORS:
            metrics.REDIS_ERRORS.labels("connect").inc()
            return  # the first tick after Redis returns brings the state
        # Nothing may run between these two: broadcasts stop skipping the client exactly
        # when its welcome is queued on the socket, so every later tick comes after it.
        rt.welcoming.discard(sid)
        eio_sid = rt.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            await rt.send_state(body, [eio_sid])
    finally:
        rt.welcoming.discard(sid)


def _profile(environ: dict[str, Any]) -> Profile:
    """Classify a connection once, from its handshake's headers."""
    headers = {
        "x-country": environ.get("HTTP_X_COUNTRY", ""),
        "cf-ipcountry": environ.get("HTTP_CF_IPCOUNTRY", ""),
    }
    return classify(str(environ.get("HTTP_USER_AGENT", "")), country_of(headers))


def _refuse(error: ApiError) -> NoReturn:
    """Refuse a connection; the client's connect_error carries the contract's error body."""
    raise socketio.exceptions.ConnectionRefusedError(error.code, error.body())
