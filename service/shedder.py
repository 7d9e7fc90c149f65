"""Load shedding at the websocket layer: a late click is answered `overloaded` from its raw
frame, before uvicorn, Engine.IO or Socket.IO decode it.

Below the public APIs. Refusing in `admission.ClickGate` still cost a third of serving a
click: the bytes went through the websockets parser, uvicorn's queue (with a pause and a
resume of reading), a wake-up of the connection's task, the ASGI wrappers and the whole
send path back. Here each websocket's `ServerProtocol.receive_data` (the websockets
sans-I/O object uvicorn feeds every byte it reads) is shadowed on the instance: the
chunk is cut at frame boundaries, and an unfragmented, uncompressed, short text frame
that holds a Socket.IO `click` event with an ack id, read while the admission says a
click cannot wait, is answered at once with a pre-formatted ack frame written straight
to the transport (as service/fanout.py writes ticks) and dropped. Every other byte
reaches websockets unchanged and in order, so its parser, its checks and everything
above it see the stream as before, less the refused frames.

A click read here arrived about now, less the loop's lag: uvicorn reads a connection
only while the app has taken everything read before (it pauses reading after each
message), so what waited longer waited in the kernel's buffers, which the lag probe
measures for the whole loop. A frame that is not refused here goes on to the ClickGate,
the handler and the counter's queue, which judge it again later.

Written for, and pinned in pyproject.toml to, the versions in `fanout.WRITTEN_FOR`; it
reads these internals, which tests/test_shedder.py checks against the installed ones:
uvicorn `WebSocketsSansIOProtocol` (`send` bound to it, `.transport`, `.conn`,
`.close_sent`, `.writable`, and its `data_received` calling `self.conn.receive_data`),
websockets `ServerProtocol` (`.state`, `.current_size`, `.reader.buffer`, `receive_data`)
and `websockets.frames.apply_mask`. Connections
under any other websocket implementation keep the ClickGate path alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from websockets.frames import apply_mask
from websockets.protocol import State

from service.admission import CLICK_DETAIL, Admission
from service.fanout import SANSIO, text_frame

# A Socket.IO EVENT on the default namespace named "click" and asking for an ack.
_CLICK = re.compile(rb'42(\d{1,12})\["click"')
# Frames longer than this are not looked at: a click is ~20-100 bytes; this also keeps to
# the 7-bit length form of the header (RFC 6455 5.2), so the mask key is at offset 2.
SHORT = 125
# The first byte of an unfragmented text frame without extension bits (FIN, opcode 1).
_TEXT_FIN = 0x81
_MASKED = 0x80
# A whole short client frame: 2-byte head, 4-byte mask key, payload. One cut across reads
# is kept until it is all there, so that it can be judged.
_SHORT_FRAME = 6 + SHORT


def frame_end(data: bytes, start: int) -> int:
    """Where the frame starting at `start` ends (RFC 6455 5.2); -1 if its header is cut."""
    size = len(data)
    if start + 2 > size:
        return -1
    second = data[start + 1]
    length = second & 0x7F
    head = start + 2
    if length == 126:
        if head + 2 > size:
            return -1
        length = int.from_bytes(data[head : head + 2], "big")
        head += 2
    elif length == 127:
        if head + 8 > size:
            return -1
        length = int.from_bytes(data[head : head + 8], "big")
        head += 8
    if second & _MASKED:
        head += 4
    if head > size:
        return -1
    return head + length


class Shedder:
    """Answers late click frames on the websockets it is attached to."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def attach(self, send: Callable[..., Any]) -> bool:
        """Take over the reads of a websocket, given its ASGI send; False when its protocol
        is not one this module knows (it then keeps the ordinary path)."""
        protocol = getattr(send, "__self__", None)
        kind = type(protocol)
        conn = getattr(protocol, "conn", None)
        if f"{kind.__module__}.{kind.__qualname__}" != SANSIO or conn is None:
            return False
        if conn.reader.buffer:  # bytes after the handshake already fed: boundaries unknown
            return False
        reader = _Reader(self.admission, protocol, conn.receive_data)
        reader.fragmented = conn.current_size is not None
        conn.receive_data = reader.receive_data
        return True


def ack_frame(ack_id: bytes, retry_ms: int) -> bytes:
    """The websocket frame of the `overloaded` ack to one click event (as ApiError.body())."""
    return text_frame(b"43" + ack_id + _ACK_BODY + str(retry_ms).encode() + b"}]")


_ACK_BODY = (
    b'[{"error":"overloaded","detail":%s,"retry_after_ms":' % json.dumps(CLICK_DETAIL).encode()
)


class _Reader:
    """One connection's incoming bytes, cut at frame boundaries before websockets sees them."""

    __slots__ = ("admission", "done", "forward", "fragmented", "owed", "pending", "protocol")

    def __init__(
        self, admission: Admission, protocol: Any, forward: Callable[[bytes | bytearray], None]
    ) -> None:
        self.admission = admission
        self.protocol = protocol
        self.forward = forward  # the websockets parser's own receive_data
        self.pending = b""  # the start of a frame cut by the read (at most a short frame)
        self.owed = 0  # bytes still to come of a frame already partly forwarded
        self.fragmented = False  # inside a message sent in several frames
        self.done = False  # the connection is closing: pass everything on

    def receive_data(self, data: bytes | bytearray) -> None:
        protocol = self.protocol
        conn = protocol.conn
        if self.done or conn.state is not State.OPEN or protocol.close_sent:
            self.done = True
            self.forward(self.pending + data if self.pending else data)
            self.pending = b""
            return
        data = self.pending + data if self.pending else bytes(data)
        self.pending = b""
        size = len(data)
        pos = 0
        if self.owed:
            if self.owed >= size:
                self.owed -= size
                self.forward(data)
                return
            pos, self.owed = self.owed, 0
        # A peer that does not read its answers keeps the ordinary path, which waits for it.
        may_shed = protocol.writable.is_set() and not protocol.transport.is_closing()
        arrived = -1.0  # frames read together arrived together: about now, less the lag
        sent = 0  # everything before this was forwarded or answered
        while pos < size:
            end = frame_end(data, pos)
            if end < 0 or size < end <= pos + _SHORT_FRAME:  # keep it for the next read
                break
            first = data[pos]
            if end > size:  # a long frame still coming: forward it as it comes
                self.owed = end - size
                self._track(first)
                pos = size
                break
            if (
                first == _TEXT_FIN
                and may_shed
                and not self.fragmented
                and data[pos + 1] & _MASKED
                and data[pos + 1] & 0x7F <= SHORT  # the mask key follows the 2-byte head
            ):
                payload = apply_mask(data[pos + 6 : end], data[pos + 2 : pos + 6])
                click = _CLICK.match(payload)
                if click is not None and _utf8(payload):
                    if sent < pos:  # websockets sees what came first: a close, say
                        self.forward(data[sent:pos])
                        sent = pos
                        may_shed = conn.state is State.OPEN
                    admission = self.admission
                    if arrived < 0:
                        arrived = admission.clock() - admission.probe.lag_s()
                    retry_ms = admission.shed(arrived) if may_shed else 0
                    if retry_ms:
                        protocol.transport.write(ack_frame(click.group(1), retry_ms))
                        sent = end
            else:
                self._track(first)
            pos = end
        if sent < pos:
            self.forward(data[sent:pos] if sent or pos < size else data)
        if pos < size:
            self.pending = data[pos:]

    def _track(self, first: int) -> None:
        """Follow fragmented messages: websockets refuses a new message inside one."""
        opcode = first & 0x0F
        if opcode < 8:  # a data frame (control frames may come between fragments)
            self.fragmented = not first & 0x80


def _utf8(payload: bytes) -> bool:
    """websockets would close the connection (1007) on a text frame that is not UTF-8."""
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True
