"""Ends the Engine.IO session of every websocket that ends, however it ended.

python-engineio 4.x decodes each frame outside its error handling: a frame it
cannot decode ends the websocket without ending the session, which then lingers
(counted online, holding a player) until the ping timeout, and the exception
reaches the server as a traceback. This wrapper notes the session id from the
server's first frame and closes the session when the websocket is over.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import socketio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.frames import limit_frames

log = logging.getLogger(__name__)


class SocketJanitor:
    """ASGI wrapper around the Socket.IO app; plain HTTP passes straight through."""

    def __init__(
        self,
        app: ASGIApp,
        sio: socketio.AsyncServer,
        *,
        on_start: Callable[[Send], None] | None = None,
        on_open: Callable[[str, Send], None] | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.sio = sio
        # Told of each websocket before the app sees it, then of its session id with the
        # server's own ASGI send, and when it ends.
        self.on_start = on_start
        self.on_open = on_open
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        session: dict[str, Any] = {}
        if self.on_start is not None:
            self.on_start(send)

        async def noting_send(message: Message) -> None:
            text = message.get("text")
            if "sid" not in session and isinstance(text, str) and text.startswith("0{"):
                session["sid"] = json.loads(text[1:]).get("sid")  # Engine.IO's OPEN packet
                if self.on_open is not None and isinstance(session["sid"], str):
                    self.on_open(session["sid"], send)
            await send(message)

        try:
            receive = limit_frames(receive, send, self.sio.eio.max_http_buffer_size)
            await self.app(scope, receive, noting_send)
        except Exception as exc:
            log.warning("a websocket ended on a frame the server could not read: %r", exc)
        finally:
            sid = session.get("sid")
            if self.on_close is not None and isinstance(sid, str):
                self.on_close(sid)
            socket = self.sio.eio.sockets.get(sid) if sid else None
            if socket is not None and not socket.closed:
                await self.sio.eio.disconnect(sid)
