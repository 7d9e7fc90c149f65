"""Fan-out: one tick's `state` frame, encoded once, written straight to many websockets.

Below the public APIs. python-engineio gives every socket a queue and a writer task,
and each message then crosses the ASGI send path and uvicorn's websocket framing:
~60 us per delivered message. This module takes uvicorn's protocol object from the
ASGI `send` callable of each websocket (`send.__self__`) and, while the connection is
open, writes the state frame to its transport itself, in one synchronous pass: no
task, no queue, no await per socket. Connections that negotiated no extension get
the same frame bytes (server frames are not masked); permessage-deflate ones get the
frame from their own compressor (its context differs per connection). Everything
else (acks, pings, `you`, milestones, closing) still goes through python-engineio.

Written for, and pinned in pyproject.toml to, the versions in `WRITTEN_FOR`; it
reads these internals, which tests/test_fanout.py checks against the installed ones:
- uvicorn `WebSocketsSansIOProtocol` (`send` bound to it, `.transport`, `.conn`, a
  websockets `ServerProtocol` with `.state`, `.extensions`, `send_text`,
  `data_to_send`) and `WSProtocol` (`.transport`, `.conn`, a wsproto `WSConnection`
  with `.state` and `send`);
- python-engineio's Engine.IO session id as the key (the janitor reads it).
Any other websocket implementation keeps the ordinary python-engineio path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import struct
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from service import metrics

log = logging.getLogger(__name__)

# The versions this module was written and tested for (pyproject.toml pins the same).
WRITTEN_FOR = {
    "uvicorn": ((0, 54), (0, 55)),
    "websockets": ((17, 4), (18, 0)),
    "wsproto": ((1, 3), (1, 4)),
    "python-engineio": ((4, 15), (4, 16)),
}

SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"
WSPROTO = "uvicorn.protocols.websockets.wsproto_impl.WSProtocol"


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed websocket text frame (RFC 6455 5.2)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a connection that its peer has not acknowledged yet: asyncio's
    buffer plus the kernel's send queue (SIOCOUTQ; Linux, 0 where unavailable)."""
    buffered = int(transport.get_write_buffer_size())
    sock = transport.get_extra_info("socket")
    if sock is None:
        return buffered
    with contextlib.suppress(OSError, ValueError):
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return buffered + int(struct.unpack("i", raw)[0])
    return buffered


@dataclass(slots=True, eq=False)
class Receiver:
    """One websocket the fan-out writes to, and how far behind its reader is."""

    transport: Any
    conn: Any
    open_state: Any
    # How this connection's frame is made: shared bytes, or its own compressor/encoder.
    encode: Callable[[Any, bytes, str], bytes] | None
    written: int = 0
    written_at_check: int = 0
    caught_up_at: float = 0.0


def _sansio_encode(conn: Any, payload: bytes, text: str) -> bytes:
    conn.send_text(payload)  # compresses with this connection's deflate context
    return b"".join(conn.data_to_send())


def _wsproto_encode(conn: Any, payload: bytes, text: str) -> bytes:
    from wsproto.events import TextMessage

    return bytes(conn.send(TextMessage(data=text)))


def _receiver(protocol: Any) -> Receiver | None:
    """A Receiver for a uvicorn websocket protocol this module knows, else None."""
    kind = f"{type(protocol).__module__}.{type(protocol).__qualname__}"
    transport = getattr(protocol, "transport", None)
    conn = getattr(protocol, "conn", None)
    if transport is None or conn is None:
        return None
    if kind == SANSIO:
        from websockets.protocol import State

        encode = _sansio_encode if conn.extensions else None
        return Receiver(transport, conn, State.OPEN, encode, caught_up_at=time.monotonic())
    if kind == WSPROTO:
        from wsproto.connection import ConnectionState

        return Receiver(
            transport, conn, ConnectionState.OPEN, _wsproto_encode, caught_up_at=time.monotonic()
        )
    return None


class Fanout:
    """Writes state messages to the websockets of this instance, newest state only.

    A connection whose previous data still waits in asyncio's buffer (its kernel
    buffer is full) skips the state: it gets the next one once it drains, so nothing
    piles up and nothing older follows something newer. Once a second, connections
    are checked: one with more than `max_unsent` bytes unacknowledged, or that has
    not caught up with what was written more than `max_behind_s` ago, is cut.
    """

    def __init__(
        self,
        *,
        max_unsent: int = 1 << 20,
        max_behind_s: float = 5.0,
        check_every_s: float = 1.0,
    ) -> None:
        self.max_unsent = max_unsent
        self.max_behind_s = max_behind_s
        self.check_every_s = check_every_s
        self.receivers: dict[str, Receiver] = {}
        self._checked_at = time.monotonic()

    def attach(self, eio_sid: str, send: Callable[..., Any]) -> None:
        """Take over state messages for an Engine.IO session, given its ASGI send."""
        protocol = getattr(send, "__self__", None)
        receiver = _receiver(protocol) if protocol is not None else None
        if receiver is not None:
            self.receivers[eio_sid] = receiver

    def detach(self, eio_sid: str) -> None:
        """Forget a session (idempotent)."""
        self.receivers.pop(eio_sid, None)

    def send(self, packet: str, eio_sids: Iterable[str]) -> tuple[int, list[str]]:
        """Write one Engine.IO text packet to these sessions, in one synchronous pass.

        Returns (messages written, the sessions this module does not hold, which the
        caller sends through python-engineio).
        """
        payload = packet.encode()
        frame = text_frame(payload)
        receivers = self.receivers
        others: list[str] = []
        sent = skipped = 0
        for eio_sid in eio_sids:
            r = receivers.get(eio_sid)
            if r is None:
                others.append(eio_sid)
                continue
            transport = r.transport
            if r.conn.state is not r.open_state or transport.is_closing():
                continue
            if transport.get_write_buffer_size():
                skipped += 1
                continue
            if r.encode is None:
                data = frame
            else:
                try:
                    data = r.encode(r.conn, payload, packet)
                except Exception:  # the connection is closing: nothing to send
                    continue
            transport.write(data)
            r.written += len(data)
            sent += 1
        if skipped:
            metrics.STATES_SKIPPED.inc(skipped)
        now = time.monotonic()
        if now - self._checked_at >= self.check_every_s:
            self._checked_at = now
            self.drop_slow_readers(now)
        return sent, others

    def drop_slow_readers(self, now: float) -> int:
        """Cut every connection too far behind; returns how many were cut."""
        dropped = 0
        for eio_sid, r in list(self.receivers.items()):
            unsent = unsent_bytes(r.transport)
            # Caught up: nothing written before the previous check is still unsent.
            if unsent <= r.written - r.written_at_check:
                r.caught_up_at = now
            r.written_at_check = r.written
            if unsent > self.max_unsent or now - r.caught_up_at > self.max_behind_s:
                log.warning(
                    "dropping a slow reader: %d bytes unsent, %.1f s behind",
                    unsent,
                    now - r.caught_up_at,
                )
                # The protocol then tells the app (websocket.disconnect), which ends
                # the Engine.IO session as for any lost connection.
                r.transport.abort()
                self.detach(eio_sid)
                metrics.SLOW_READERS_DROPPED.inc()
                dropped += 1
        return dropped
