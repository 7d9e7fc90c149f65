"""A Socket.IO client at the frame level: sends any text or binary frame, reads raw replies.

The python-socketio client cannot send malformed packets, so tests of frame hygiene speak
Engine.IO v4 over a plain websocket.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class RawSocket:
    """One websocket to /socket.io, connected to '/' (as a player when given a token)."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws: ClientConnection | None = None
        self.frames: list[str | bytes] = []  # everything the server sent, in order
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def open(self, token: str | None = None, *, join: bool = True) -> RawSocket:
        self.ws = await connect(self.url, max_size=None, open_timeout=10)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda f: f.startswith("0{"))
        if join:
            await self.send("40" + (json.dumps({"token": token}) if token else ""))
            await self.wait_for(lambda f: f.startswith("40{"))
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                if frame == "2":  # Engine.IO ping
                    await self.ws.send("3")
                    continue
                self.frames.append(frame)
                self._arrived.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._arrived.set()

    async def send(self, frame: str | bytes) -> bool:
        """Send one frame; False when the socket was already closed."""
        assert self.ws is not None
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            return False
        return True

    async def wait_for(self, match: Any, timeout: float = 5.0) -> str:
        """The first text frame (from the start) that `match` accepts."""
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames:
                    if isinstance(frame, str) and match(frame):
                        return frame
                if self.closed.is_set():
                    raise ConnectionError(f"closed; the server sent {self.frames[-5:]!r}")
                self._arrived.clear()
                await self._arrived.wait()

    async def ack(self, ack_id: int, timeout: float = 5.0) -> Any:
        """The first value of the server's acknowledgement to `ack_id` (None for `[]`)."""
        head = f"43{ack_id}["
        frame = await self.wait_for(lambda f: f.startswith(head), timeout)
        values = json.loads(frame[len(head) - 1 :])
        return values[0] if values else None

    async def refusal(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the server closes the socket; return the reason it sent first."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        errors = [f for f in self.frames if isinstance(f, str) and f.startswith("44")]
        assert errors, f"closed without a reason; the server sent {self.frames[-5:]!r}"
        body: dict[str, Any] = json.loads(errors[-1][2:])
        return body

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader
