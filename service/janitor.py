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
from typing import Any

import socketio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.frames import limit_frames

log = logging.getLogger(__name__)


class SocketJanitor:
    """ASGI wrapper around the Socket.IO app; plain HTTP passes straight through."""

    def __init__(self, app: ASGIApp, sio: socketio.AsyncServer) -> None:
        self.app = app
        self.sio = sio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        session: dict[str, Any] = {}

        async def noting_send(message: Message) -> None:
            text = message.get("text")
            if "sid" not in session and isinstance(text, str) and text.startswith("0{"):
                session["sid"] = json.loads(text[1:]).get("sid")  # Engine.IO's OPEN packet
            await send(message)

        try:
            receive = limit_frames(receive, send, self.sio.eio.max_http_buffer_size)
            await self.app(scope, receive, noting_send)
        except Exception as exc:
            log.warning("a websocket ended on a frame the server could not read: %r", exc)
        finally:
            sid = session.get("sid")
            socket = self.sio.eio.sockets.get(sid) if sid else None
            if socket is not None and not socket.closed:
                await self.sio.eio.disconnect(sid)
