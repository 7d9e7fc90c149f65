"""A lean asyncio Socket.IO client on a raw websocket, so the load generator stays cheap.

python-socketio's AsyncClient costs several times the server's own work per
event; this speaks the few packets Clickky uses (see wire.py) straight over an
asyncio.Protocol. It counts the bytes it receives two ways: `payload_in`, the
websocket message payloads (the Engine.IO packet text, as the server wrote it;
we never offer permessage-deflate, so nothing is compressed), and `wire_in`,
every TCP byte including websocket frame headers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import wire

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Refused(Exception):
    """The server refused the Socket.IO connection (44 packet) or the websocket upgrade."""

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.body = body  # the 44 packet's {"message", "data"}, when there was one


def _frame(opcode: int, data: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3 requires clients to mask)."""
    size = len(data)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = random.getrandbits(32)
    mask = key.to_bytes(4, "little")
    if size:
        # XOR the payload with the key repeated, as one big integer: no per-byte loop.
        repeated = int.from_bytes(mask * (size // 4 + 1), "little") & ((1 << (8 * size)) - 1)
        data = (int.from_bytes(data, "little") ^ repeated).to_bytes(size, "little")
    return head + mask + data


class SocketIO(asyncio.Protocol):
    """One Socket.IO connection. Subclass hooks: `on_ack`, `on_event`."""

    def __init__(self, auth: dict[str, Any] | None, host: str, deflate: bool = False) -> None:
        self.auth = auth
        self.host = host
        # Offer permessage-deflate as browsers do; then `wire_in` is the compressed size.
        self.deflate = deflate
        self.inflater: Any = None
        self.reset_inflater = False
        self.compressed = False
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.connected: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.upgraded = False
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.wire_in = 0
        self.payload_in = 0
        self.next_ack = 0
        self.key = base64.b64encode(os.urandom(16)).decode()

    # -- hooks -----------------------------------------------------------------
    def on_ack(self, ack_id: int, text: str, now: float) -> None:
        """An ack packet `43<id>[...]` arrived at monotonic time `now`."""

    def on_event(self, text: str, now: float) -> None:
        """An event packet `42[...]` arrived at monotonic time `now`."""

    def on_closed(self) -> None:
        """The connection is gone."""

    # -- API -------------------------------------------------------------------
    @classmethod
    async def open(
        cls, base_url: str, auth: dict[str, Any] | None = None, timeout: float = 15, **kw: Any
    ) -> Any:
        """Connect (websocket upgrade, Engine.IO open, Socket.IO connect) and return the client."""
        parts = urlsplit(wire.socket_url(base_url))
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: cls(auth, parts.netloc, **kw), host, port),
            timeout,
        )
        proto.path = f"{parts.path}?{parts.query}"
        proto.send_upgrade()
        try:
            await asyncio.wait_for(proto.connected, timeout)
        except BaseException:
            proto.close()
            raise
        return proto

    def emit(self, event: str, data: Any, ack: bool = True) -> int:
        """Send an event; returns the ack id (-1 when no ack was asked for)."""
        ack_id = -1
        if ack:
            ack_id = self.next_ack
            self.next_ack += 1
        self.send_text(wire.event_packet(event, data, ack_id if ack else None))
        return ack_id

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(OP_TEXT, text.encode()))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self.transport.close()
        self.closed = True

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send_upgrade(self) -> None:
        assert self.transport is not None
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                if self.deflate
                else ""
            )
            + "\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_exception(Refused(f"connection lost: {exc}"))
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.wire_in += len(data)
        buf = self.buffer
        buf += data
        pos = 0
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(Refused(f"websocket upgrade refused: {status.decode(errors='replace')}"))
                return
            self.upgraded = True
            headers = bytes(buf[:end]).decode("latin-1").lower()
            if "permessage-deflate" in headers:
                self.inflater = zlib.decompressobj(-15)
                self.reset_inflater = "server_no_context_takeover" in headers
            pos = end + 4
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4  # servers do not mask; tolerate it anyway below
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            if b1 & 0x80:
                key = buf[pos + head - 4 : pos + head]
                payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
            pos += head + length
            self._frame_in(b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), payload, now)
        if pos:
            del buf[:pos]

    # -- internals -------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
        self.close()

    def _frame_in(self, opcode: int, fin: bool, rsv1: bool, payload: bytes, now: float) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            self.compressed = rsv1  # RSV1 on a message's first frame: it is deflated
        if opcode == OP_CONT:
            self.fragments.append(payload)
            if not fin:
                return
            payload, self.fragments = b"".join(self.fragments), []
            opcode = OP_TEXT
        elif opcode in (OP_TEXT, OP_BINARY) and not fin:
            self.fragments = [payload]
            return
        if opcode == OP_TEXT and self.compressed:
            payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
            if self.reset_inflater:
                self.inflater = zlib.decompressobj(-15)
        if opcode == OP_TEXT:
            self.payload_in += len(payload)
            self._packet(payload.decode(), now)
        elif opcode == OP_PING:
            if self.transport is not None and not self.closed:
                self.transport.write(_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self.close()

    def _packet(self, text: str, now: float) -> None:
        kind = text[:2]
        if kind == "42":
            self.on_event(text, now)
        elif kind == "43":
            ack_id = int(text[2 : text.index("[", 2)])
            self.on_ack(ack_id, text, now)
        elif text == wire.PING:
            self.send_text(wire.PONG)
        elif text[0] == "0":
            self.send_text(wire.connect_packet(self.auth))
        elif kind in ("40", "44"):
            accepted, body = wire.connect_reply(text)
            if self.connected.done():
                return
            if accepted:
                self.connected.set_result(body)
            else:
                self._fail(Refused(str(body), body))
        elif kind == "41" or text[0] == "1":
            self.close()
