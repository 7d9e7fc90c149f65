"""Frame hygiene: every Socket.IO packet a client sends is checked here before any handler.

The contract uses text frames on the default namespace only: CONNECT, DISCONNECT and
EVENT packets whose payload is a JSON array starting with the event's name. Anything
else (a binary frame, an attachment packet, another namespace, an ACK we never asked
for, a packet that does not decode) ends that socket: the client gets a CONNECT_ERROR
whose `message` is `invalid_frame` and whose `data` is the contract's error body, then
the Engine.IO close. An EVENT that asked for an acknowledgement but whose payload
cannot be read (too deep, not JSON, not an array with a name) is answered with the
ack `{"error": "invalid_payload", ...}` instead; after `MAX_STRIKES` of those the
socket is closed too. Nothing is kept between frames but a strike count, so what one
socket holds is bounded by one frame (`MAX_BODY_BYTES`, Engine.IO's limit).

Every refusal counts in `clickky_frames_refused_total{reason}`; the log gets one line
per closed socket, none for acks.

Written for python-socketio 5.11-5.x and python-engineio 4.x (pinned in pyproject.toml):
it overrides AsyncServer._handle_eio_message and _handle_eio_disconnect and calls
_handle_connect/_handle_disconnect/_handle_event/_send_packet, none of them public.
tests/test_frames.py::test_the_socketio_internals_we_override_are_unchanged fails when
a new version changes them; re-read them before updating its fingerprints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import socketio
from socketio import packet as sio_packet
from starlette.types import Message, Receive, Send

from service import metrics

log = logging.getLogger(__name__)

# Acknowledged refusals a socket may collect before it is closed: a client that keeps
# sending what it was told is unreadable is not a browser running our page.
MAX_STRIKES = 20


class Packet(sio_packet.Packet):
    """python-socketio's packet, decoding that marks an unreadable payload instead of raising.

    The header (type, attachments, namespace, ack id) is parsed before the JSON payload,
    so a packet whose payload fails still says which ack id it wanted.
    """

    invalid: str | None = None

    def decode(self, encoded_packet: Any) -> int:
        self.packet_type = None  # stays None when not even the type can be read
        self.invalid = None
        try:
            return int(super().decode(encoded_packet) or 0)
        except RecursionError:
            self.invalid = "too_deep"
        except (ValueError, TypeError, IndexError):
            self.invalid = "malformed"
        return 0


@dataclass(frozen=True)
class Verdict:
    """What to do with one frame: pass `packet` on, or refuse for `reason`."""

    packet: Packet | None = None
    reason: str | None = None
    # Refuse with an error ack to this id (the socket stays open) instead of closing.
    ack_id: int | None = None
    # A refusal that asked no ack: drop the packet and keep the socket (False), or close.
    close: bool = True
    # The error ack's body, when not the invalid_payload one.
    ack_body: dict[str, str] | None = None


_DETAILS = {
    "binary": "Binary frames are not part of this API; send JSON text frames.",
    "attachment": "Packets with binary attachments are not part of this API.",
    "namespace": "Only the default namespace '/' exists.",
    "unexpected_ack": "This server never asks clients for acknowledgements.",
    "not_connected": "Connect to the namespace '/' before sending events.",
    "already_connected": "This socket is already connected to '/'.",
    "malformed": "This frame is not a Socket.IO packet this server understands.",
    "too_deep": "This frame's payload is nested too deeply to read.",
    "too_many_invalid": "Too many unreadable events on this socket.",
    "too_large": "This frame is larger than the server accepts (MAX_BODY_BYTES).",
}
# WebSocket close codes (RFC 6455, section 7.4.1): "Protocol Error", "Message Too Big".
_PROTOCOL_ERROR, _TOO_BIG = 1002, 1009
# Engine.IO packet types a client may send over a websocket: close, ping, pong, message,
# upgrade, noop (OPEN, "0", comes only from the server).
_CLIENT_ENGINEIO_TYPES = ("1", "2", "3", "4", "5", "6")
# Event names python-socketio keeps for its own handlers: a client's event by that name
# would call them with the wrong arguments.
RESERVED_EVENTS = ("connect", "disconnect")
_PAYLOAD_DETAIL = (
    "The event's payload could not be read: it must be a JSON array like"
    ' ["click", {"n": 1}], nested at most a few hundred levels.'
)


def _refusal_frame(reason: str) -> str:
    """The Engine.IO text frame of a CONNECT_ERROR on '/' that says why the socket ends."""
    body = {"error": "invalid_frame", "detail": _DETAILS.get(reason, _DETAILS["malformed"])}
    return "44" + json.dumps({"message": "invalid_frame", "data": body}, separators=(",", ":"))


def limit_frames(receive: Receive, send: Send, max_bytes: int) -> Receive:
    """Wrap a websocket's ASGI receive: end the socket, with a reason, on a frame that is
    over max_bytes (close code 1009) or is not an Engine.IO packet at all (1002).

    Engine.IO would drop such a connection without a word (and log the decoding error);
    here the client gets the refusal first, and Engine.IO sees a plain disconnect.
    """

    async def guarded() -> Message:
        message = await receive()
        if message["type"] != "websocket.receive":
            return message
        text = message.get("text")
        data = text if text is not None else message.get("bytes") or b""
        if len(data) > max_bytes:
            reason, code = "too_large", _TOO_BIG
        elif text is not None and text[:1] not in _CLIENT_ENGINEIO_TYPES:
            reason, code = "malformed", _PROTOCOL_ERROR
        else:
            return message
        metrics.FRAMES_REFUSED.labels(reason).inc()
        log.warning("closed a socket that sent a refused frame: %s", reason)
        await send({"type": "websocket.send", "text": _refusal_frame(reason)})
        await send({"type": "websocket.close", "code": code, "reason": reason})
        return {"type": "websocket.disconnect", "code": code}

    return guarded


def judge(data: Any, *, connected: bool) -> Verdict:
    """Decide on a client's Socket.IO packet (one Engine.IO message's payload); `connected`:
    the socket has joined '/' already."""
    if not isinstance(data, str):
        return Verdict(reason="binary")
    pkt = Packet(encoded_packet=data) if data else Packet(packet_type=None)
    kind = pkt.packet_type
    if kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        return Verdict(reason="attachment")
    if kind == sio_packet.ACK:
        return Verdict(reason="unexpected_ack")
    if kind not in (sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT):
        return Verdict(reason=pkt.invalid or "malformed")
    if pkt.namespace not in (None, "/"):
        return Verdict(reason="namespace")
    if kind == sio_packet.CONNECT:
        if connected:
            return Verdict(reason="already_connected")
        return Verdict(reason=pkt.invalid) if pkt.invalid else Verdict(packet=pkt)
    if kind == sio_packet.DISCONNECT:
        return Verdict(packet=pkt)
    if not connected:
        return Verdict(reason="not_connected")
    named = isinstance(pkt.data, list) and pkt.data and isinstance(pkt.data[0], str)
    if pkt.invalid or not named:
        reason = pkt.invalid or "malformed"
        if pkt.id is not None:
            return Verdict(reason=reason, ack_id=pkt.id)
        return Verdict(reason=reason)
    if pkt.data[0] in RESERVED_EVENTS:
        detail = f"There is no event named {pkt.data[0]!r} for clients; use click."
        body = {"error": "unknown_event", "detail": detail}
        return Verdict(reason="reserved_event", ack_id=pkt.id, close=False, ack_body=body)
    return Verdict(packet=pkt)


class FrameServer(socketio.AsyncServer):
    """An AsyncServer that judges every client packet before python-socketio acts on it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(serializer=Packet, **kwargs)
        self._strikes: dict[str, int] = {}

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closing or socket.closed:
            return  # frames still in flight after we closed it
        connected = self.manager.sid_from_eio_sid(eio_sid, "/") is not None
        verdict = judge(data, connected=connected)
        pkt = verdict.packet
        if pkt is not None:
            if pkt.packet_type == sio_packet.CONNECT:
                await self._handle_connect(eio_sid, "/", pkt.data)
            elif pkt.packet_type == sio_packet.DISCONNECT:
                await self._handle_disconnect(eio_sid, "/", self.reason.CLIENT_DISCONNECT)
            else:
                await self._handle_event(eio_sid, "/", pkt.id, pkt.data)
            return
        reason = verdict.reason or "malformed"
        if verdict.ack_id is not None or not verdict.close:
            strikes = self._strikes.get(eio_sid, 0) + 1
            self._strikes[eio_sid] = strikes
            if strikes <= MAX_STRIKES:
                metrics.FRAMES_REFUSED.labels(reason).inc()
                if verdict.ack_id is not None:
                    body = verdict.ack_body or {
                        "error": "invalid_payload",
                        "detail": _PAYLOAD_DETAIL,
                    }
                    ack = self.packet_class(
                        sio_packet.ACK, namespace="/", id=verdict.ack_id, data=[body]
                    )
                    await self._send_packet(eio_sid, ack)
                return
            reason = "too_many_invalid"
        await self._close(eio_sid, reason)

    async def _close(self, eio_sid: str, reason: str) -> None:
        """End a socket for a refused frame: say why, then close; one log line."""
        metrics.FRAMES_REFUSED.labels(reason).inc()
        log.warning("closed socket %s, which sent a refused frame: %s", eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        await self.eio.send(eio_sid, _refusal_frame(reason)[1:])
        await self.eio.disconnect(eio_sid)
        if socket is not None:
            # End the websocket itself (what Engine.IO does when its read loop ends), so a
            # client that ignores the CLOSE packet cannot keep the socket open.
            socket.queue.put_nowait(None)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        self._strikes.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)
