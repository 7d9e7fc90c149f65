"""The Socket.IO v5 / Engine.IO v4 text packets Clickky uses, as plain strings.

Shared by the benchmark (asyncio, raw websocket) and the locustfile (gevent,
websocket-client). Only the websocket transport and the default namespace:

    server: 0{"sid":..,"pingInterval":..}   Engine.IO open
    client: 40{"token":..}  or  40          Socket.IO connect (auth optional)
    server: 40{"sid":..}  or  44{..}        connected, or refused
    server: 2   client: 3                   Engine.IO ping / pong
    client: 42<id>["click",{"n":3}]         an event asking for an ack
    server: 43<id>[{"user":..,"global":..}] the ack
    server: 42["state",{..}]                an event
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

PING = "2"
PONG = "3"
STATE_PREFIX = '42["state",'

_COMPACT = (",", ":")


def socket_url(base: str) -> str:
    """The websocket URL of the Engine.IO endpoint behind an http(s) base URL."""
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return f"{scheme}://{parts.netloc}/socket.io/?EIO=4&transport=websocket"


def connect_packet(auth: dict[str, Any] | None = None) -> str:
    return "40" + (json.dumps(auth, separators=_COMPACT) if auth is not None else "")


def event_packet(event: str, data: Any, ack_id: int | None = None) -> str:
    head = "42" if ack_id is None else f"42{ack_id}"
    return head + json.dumps([event, data], separators=_COMPACT)


def split_ack(text: str) -> tuple[int, Any]:
    """(ack id, first argument) of a `43<id>[...]` packet."""
    end = text.index("[", 2)
    args = json.loads(text[end:])
    return int(text[2:end]), args[0] if args else None


def split_event(text: str) -> tuple[str, Any]:
    """(event name, first argument) of a `42[...]` packet without an ack id."""
    args = json.loads(text[2:])
    return str(args[0]), args[1] if len(args) > 1 else None


def connect_reply(text: str) -> tuple[bool, Any]:
    """(accepted, body) for the server's answer to our connect packet."""
    body = json.loads(text[2:]) if len(text) > 2 else None
    return text.startswith("40"), body
