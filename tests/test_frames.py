"""Frame hygiene: hostile Socket.IO frames against a real instance, over a raw websocket."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from service import frames
from service.frames import judge
from tests.rawsocket import RawSocket
from tests.support import join

DEEP = '421["click",' + "[" * 7000 + "]" * 7000 + "]"


@pytest.fixture
async def token(client: httpx.AsyncClient) -> str:
    return await join(client, "Ann")


@pytest.fixture
async def sock(server: Any, token: str) -> AsyncIterator[RawSocket]:
    raw = await RawSocket(server.url).open(token)
    yield raw
    await raw.close()


async def global_count(client: httpx.AsyncClient) -> int:
    count: int = (await client.get("/api/state")).json()["global"]
    return count


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert "Traceback" not in caplog.text


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("clickky_frames_refused_total", {"reason": reason}) or 0.0


# -- the inputs --------------------------------------------------------------------


async def test_the_text_frame_45_closes_the_socket_with_a_reason(
    sock: RawSocket, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = refused("attachment")
    await sock.send("45")
    for _ in range(200):
        if not await sock.send('421["click",{"n":1}]'):
            break
    reason = await sock.refusal(timeout=2)
    assert reason["message"] == "invalid_frame"
    assert reason["data"]["error"] == "invalid_frame"
    assert "attachments" in reason["data"]["detail"]
    assert refused("attachment") == before + 1
    assert await global_count(client) == 0
    no_tracebacks(caplog)
    lines = [r for r in caplog.records if r.name.startswith(("service", "socketio", "engineio"))]
    assert len(lines) <= 1, [r.getMessage() for r in lines]


@pytest.mark.parametrize(
    "first",
    ['451-7["click",{"_placeholder":true,"num":"splice"}]', '4599999999-["click"]', "461-0[]"],
)
async def test_attachment_packets_close_the_socket_before_any_attachment(
    sock: RawSocket, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, first: str
) -> None:
    await sock.send(first)
    for _ in range(50):
        if not await sock.send(b"\x00" * 16384):
            break
    reason = await sock.refusal(timeout=2)
    assert reason["data"]["error"] == "invalid_frame"
    assert await global_count(client) == 0
    no_tracebacks(caplog)


async def test_a_binary_frame_closes_the_socket(
    sock: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    await sock.send(b"\x04hello")
    reason = await sock.refusal(timeout=2)
    assert "Binary frames" in reason["data"]["detail"]
    no_tracebacks(caplog)


async def test_deep_json_gets_an_invalid_payload_ack_and_the_socket_goes_on(
    sock: RawSocket, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(DEEP) < 16384  # within MAX_BODY_BYTES: this is about depth, not size
    await sock.send(DEEP)
    ack = await sock.ack(1, timeout=2)
    assert ack["error"] == "invalid_payload" and ack["detail"]
    await sock.send('422["click",{"n":2}]')
    assert (await sock.ack(2))["user"] == 2
    assert await global_count(client) == 2
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('421["click",{"n":"x"}]', "invalid_n"),
        ('421["click","x"]', "invalid_n"),
        ('421["click",{"n":1},{"n":1}]', "invalid_n"),
        ('421["click",{"n":1e999}]', "invalid_n"),
        ('421["click",{"n":' + "9" * 5000 + "}]", "invalid_payload"),
        ('421["click",{"n":1]', "invalid_payload"),
        ("421{}", "invalid_payload"),
        ("421[]", "invalid_payload"),
        ("421", "invalid_payload"),
        ('421[["click"]]', "invalid_payload"),
        ("421[{}]", "invalid_payload"),
        ('421["nope"]', "unknown_event"),
        ('421["connect"]', "unknown_event"),
        ('421["disconnect",{}]', "unknown_event"),
    ],
)
async def test_every_click_gets_an_ack_whatever_its_payload(
    sock: RawSocket,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    frame: str,
    code: str,
) -> None:
    await sock.send(frame)
    assert (await sock.ack(1, timeout=2))["error"] == code
    assert await global_count(client) == 0
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('42/admin,1["click"]', "namespace"),
        ("40/admin,", "namespace"),
        ("431[]", "unexpected_ack"),
        ('44{"message":"x"}', "malformed"),
        ("4x", "malformed"),
        ("49", "malformed"),
        ('42["click",{"n":1]', "malformed"),
        ("42", "malformed"),
        ("40", "already_connected"),
    ],
)
async def test_frames_outside_the_contract_close_the_socket(
    sock: RawSocket,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    frame: str,
    reason: str,
) -> None:
    before = refused(reason)
    await sock.send(frame)
    body = await sock.refusal(timeout=2)
    assert body["data"]["error"] == "invalid_frame"
    assert refused(reason) == before + 1
    assert await global_count(client) == 0
    no_tracebacks(caplog)


@pytest.mark.parametrize("frame", ["4" + "x" * 16385, b"\x00" * 16385])
async def test_a_frame_over_max_body_bytes_closes_with_1009_and_a_reason(
    sock: RawSocket, caplog: pytest.LogCaptureFixture, frame: str | bytes
) -> None:
    before = refused("too_large")
    await sock.send(frame)
    assert "larger than" in (await sock.refusal(timeout=2))["data"]["detail"]
    assert sock.ws is not None and sock.ws.close_code == 1009
    assert refused("too_large") == before + 1
    no_tracebacks(caplog)


@pytest.mark.parametrize("frame", ["x", "", "0", "9", "{}", "\u00e9"])
async def test_a_frame_that_is_not_engineio_closes_with_1002_and_a_reason(
    sock: RawSocket, caplog: pytest.LogCaptureFixture, frame: str
) -> None:
    before = refused("malformed")
    await sock.send(frame)
    assert (await sock.refusal(timeout=2))["data"]["error"] == "invalid_frame"
    assert sock.ws is not None and sock.ws.close_code == 1002
    assert refused("malformed") == before + 1
    no_tracebacks(caplog)


async def test_events_before_connecting_close_the_socket(server: Any) -> None:
    raw = await RawSocket(server.url).open(join=False)
    try:
        await raw.send('421["click",{"n":1}]')
        assert "Connect" in (await raw.refusal(timeout=2))["data"]["detail"]
    finally:
        await raw.close()


async def test_a_socket_that_keeps_sending_unreadable_events_is_closed(sock: RawSocket) -> None:
    for i in range(frames.MAX_STRIKES):
        await sock.send(f"42{i}[1]")
        assert (await sock.ack(i))["error"] == "invalid_payload"
    await sock.send("42999[1]")
    assert (await sock.refusal(timeout=2))["data"]["error"] == "invalid_frame"


# -- the judge, without a server -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "connected", "reason", "ack_id"),
    [
        (b"\x00", True, "binary", None),
        ("5", True, "attachment", None),
        ('51-["click"]', True, "attachment", None),
        ("4", True, "malformed", None),
        ("2", True, "malformed", None),
        ("", True, "malformed", None),
        ("0", True, "already_connected", None),
        ("0", False, None, None),
        ('0{"token":"t"}', False, None, None),
        ("1", True, None, None),
        ('27["click"]', True, None, None),
        ('27["click"]', False, "not_connected", None),
        ("27" + "[" * 5000, True, "too_deep", 7),
        ("2/x,7[]", True, "namespace", None),
        ('27["connect"]', True, "reserved_event", 7),
        ('2["disconnect"]', True, "reserved_event", None),
    ],
)
def test_judge(data: Any, connected: bool, reason: str | None, ack_id: int | None) -> None:
    verdict = judge(data, connected=connected)
    assert (verdict.reason, verdict.ack_id) == (reason, ack_id)
    assert (verdict.packet is None) == (reason is not None)


# -- the python-socketio internals service/frames.py relies on -----------------------------

# Fingerprints of the code FrameServer overrides or calls, as of the versions below.
# When this test fails after an upgrade, read the new code: FrameServer must still see
# every packet before the handlers, and call the handlers the way python-socketio does.
FINGERPRINTS = {
    "socketio.AsyncServer._handle_eio_message": "bef50fc0e163",
    "socketio.AsyncServer._handle_eio_disconnect": "9344593148b6",
    "socketio.AsyncServer._handle_connect": "c97c480cf777",
    "socketio.AsyncServer._handle_disconnect": "c0b32ada5b37",
    "socketio.AsyncServer._handle_event": "65178105ef8b",
    "socketio.AsyncServer._send_packet": "a00022b42c1c",
    "socketio.packet.Packet.decode": "61ad7904b539",
    "socketio.packet.Packet.__init__": "5fe2fa797e08",
    # _close ends the websocket by queueing None, as the read loop's end does.
    "engineio.async_socket.AsyncSocket._websocket_handler": "27f120df4d71",
    "engineio.async_socket.AsyncSocket.close": "faa2e9390254",
}


def _fingerprint(dotted: str) -> str:
    parts = dotted.split(".")
    target: Any = importlib.import_module(parts[0])
    for part in parts[1:]:
        target = getattr(target, part)
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:12]


def test_the_socketio_internals_we_override_are_unchanged() -> None:
    versions = (metadata.version("python-socketio"), metadata.version("python-engineio"))
    assert versions[0].startswith("5.") and versions[1].startswith("4."), versions
    found = {name: _fingerprint(name) for name in FINGERPRINTS}
    assert found == FINGERPRINTS, json.dumps(found, indent=1)
