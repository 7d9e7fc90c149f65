"""Hostile input (issue 2): every case gets the contract's error, never a 500 or a trace,
and leaves the counts exactly as they were."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import socketio
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from service.tokens import TokenSigner
from tests.checks import (
    ADMIN,
    Counts,
    assert_error,
    assert_error_body,
    assert_no_trace,
    bearer,
    read_counts,
)
from tests.conftest import Server
from tests.shared import shared_loop, shared_server, unique
from tests.support import Player, eventually, join


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(redis_url: str, tmp_path_factory) -> AsyncIterator[Server]:
    async with shared_server(redis_url, tmp_path_factory.mktemp("hostile")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(shared: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with shared.client() as client:
        yield client


@dataclass
class Seeded:
    """Two players with clicks already counted, and the counts before the attack."""

    ann_name: str
    bob_name: str
    ann: str
    bob: str
    before: Counts


async def seed(client: httpx.AsyncClient) -> Seeded:
    names = unique("ann"), unique("bob")
    tokens = [await join(client, name) for name in names]
    for token, n in zip(tokens, (3, 2), strict=True):
        assert (await client.post("/api/click", json={"n": n}, headers=bearer(token))).is_success
    before = await read_counts(client)
    assert before.board[names[0]] == 3 and before.board[names[1]] == 2
    return Seeded(names[0], names[1], tokens[0], tokens[1], before)


@pytest_asyncio.fixture(loop_scope="module")
async def seeded(http: httpx.AsyncClient) -> Seeded:
    """Fresh players on the shared instance."""
    return await seed(http)


@pytest.fixture
async def own(server: Server, client: httpx.AsyncClient) -> Seeded:
    """Fresh players on an instance of this test's own."""
    return await seed(client)


async def assert_unchanged(client: httpx.AsyncClient, seeded: Seeded) -> None:
    assert await read_counts(client) == seeded.before


def _with(seeded: Seeded, body: bytes) -> bytes:
    return body.replace(b"{ANN}", seeded.ann_name.upper().encode())


# -- HTTP bodies -----------------------------------------------------------------------

JOIN_CASES = [
    (b"{", 422, "invalid_json"),
    (b"{'username': 'Eve'}", 422, "invalid_json"),
    (b'{"username": "Eve",}', 422, "invalid_json"),
    (b"nul", 422, "invalid_json"),
    (b"", 422, "invalid_json"),
    (b"   \n", 422, "invalid_json"),
    (b"\x00\x01\x02", 422, "invalid_json"),
    (b'{"username": "\xff\xfe"}', 422, "invalid_json"),
    (b'{"username": "Ev\xc3"}', 422, "invalid_json"),
    (b"\xff" * 64, 422, "invalid_json"),
    (b"[]", 422, "invalid_body"),
    (b'["Eve"]', 422, "invalid_body"),
    (b'"Eve"', 422, "invalid_body"),
    (b"42", 422, "invalid_body"),
    (b"null", 422, "invalid_body"),
    (b"true", 422, "invalid_body"),
    (b"{}", 422, "invalid_username"),
    (b'{"name": "Eve"}', 422, "invalid_username"),
    (b'{"username": 5}', 422, "invalid_username"),
    (b'{"username": null}', 422, "invalid_username"),
    (b'{"username": NaN}', 422, "invalid_username"),
    (b'{"username": ["Eve"]}', 422, "invalid_username"),
    (b'{"username": {"first": "Eve"}}', 422, "invalid_username"),
    (b'{"username": "Eve\\u0000"}', 422, "invalid_username"),
    (b'{"username": "\\ud800"}', 422, "invalid_username"),  # a lone surrogate
    (b'{"username": "' + b"e" * 5000 + b'"}', 422, "invalid_username"),
    # Duplicate keys: the last one wins, and that name is taken.
    (b'{"username": "Eve", "username": "{ANN}"}', 409, "name_taken"),
    (b'{"username": "a", "pad": "' + b"x" * 20_000 + b'"}', 413, "payload_too_large"),
    (b"[" * 10_000 + b"]" * 10_000, 413, "payload_too_large"),
]


@shared_loop
@pytest.mark.parametrize(("body", "status", "code"), JOIN_CASES, ids=range(len(JOIN_CASES)))
async def test_hostile_join_body(http, seeded: Seeded, body: bytes, status, code) -> None:
    response = await http.post(
        "/api/join", content=_with(seeded, body), headers={"Content-Type": "application/json"}
    )
    assert_error(response, status, code)
    await assert_unchanged(http, seeded)


CLICK_CASES = [
    (b"{", 422, "invalid_json"),
    (b'{"n": }', 422, "invalid_json"),
    (b'{"n": 1', 422, "invalid_json"),
    (b"\x00", 422, "invalid_json"),
    (b'{"n": "\xff"}', 422, "invalid_json"),
    (b"\xfe\xff" * 50, 422, "invalid_json"),
    (b'{"n": "1"}', 422, "invalid_n"),
    (b'{"n": 1e3}', 422, "invalid_n"),
    (b'{"n": 1e400}', 422, "invalid_n"),
    (b'{"n": NaN}', 422, "invalid_n"),
    (b'{"n": -Infinity}', 422, "invalid_n"),
    (b'{"n": 100000000000000000000000000000000}', 422, "invalid_n"),
    (b'{"n": -5}', 422, "invalid_n"),
    (b'{"n": 0}', 422, "invalid_n"),
    (b'{"n": null}', 422, "invalid_n"),
    (b'{"n": true}', 422, "invalid_n"),
    (b'{"n": [1]}', 422, "invalid_n"),
    (b'{"n": {"n": 1}}', 422, "invalid_n"),
    (b'{"n": 1, "n": 99}', 422, "invalid_n"),
    (b"[1]", 422, "invalid_n"),
    (b'"n"', 422, "invalid_n"),
    (b"1", 422, "invalid_n"),
    (b"true", 422, "invalid_n"),
    (b'{"n": 1, "pad": "' + b"x" * 20_000 + b'"}', 413, "payload_too_large"),
    (b'{"n": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 413, "payload_too_large"),
]


@shared_loop
@pytest.mark.parametrize(("body", "status", "code"), CLICK_CASES, ids=range(len(CLICK_CASES)))
async def test_hostile_click_body(http, seeded: Seeded, body: bytes, status, code) -> None:
    response = await http.post("/api/click", content=body, headers=bearer(seeded.ann))
    assert_error(response, status, code)
    await assert_unchanged(http, seeded)


ADMIN_CASES = [
    (b"{", 422, "invalid_json"),
    (b"", 422, "invalid_json"),
    (b'{"count": "\xff"}', 422, "invalid_json"),
    (b'{"count": 9007199254740993}', 422, "invalid_count"),  # beyond exact doubles
    (b'{"count": 1e309}', 422, "invalid_count"),
    (b'{"count": -0.0}', 422, "invalid_count"),
    (b'{"count": [[[[1]]]]}', 422, "invalid_count"),
    (b'{"count": 1, "pad": "' + b"x" * 20_000 + b'"}', 413, "payload_too_large"),
]


@shared_loop
@pytest.mark.parametrize(("body", "status", "code"), ADMIN_CASES, ids=range(len(ADMIN_CASES)))
async def test_hostile_admin_body(http, seeded: Seeded, body: bytes, status, code) -> None:
    path = f"/api/admin/users/{seeded.ann_name}"
    assert_error(await http.put(path, content=body, headers=ADMIN), status, code)
    await assert_unchanged(http, seeded)


@shared_loop
@pytest.mark.parametrize("path", ["/api/join", "/api/click"])
async def test_oversized_chunked_body_without_content_length(
    http, seeded: Seeded, path: str
) -> None:
    async def chunks():
        yield b'{"n": 1, "username": "Eve", "pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    response = await http.post(path, content=chunks(), headers=bearer(seeded.ann))
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "payload_too_large")
    await assert_unchanged(http, seeded)


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/api/click", b'{"n": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "invalid_json"),
        ("/api/click", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "invalid_json"),
        ("/api/join", b'{"username": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "invalid_json"),
        ("/api/join", b"[" * 10_000, "invalid_json"),
    ],
)
async def test_json_nested_ten_thousand_deep(serve, counter, path: str, body: bytes, code) -> None:
    """With a body limit big enough to let it through, deep nesting is a 422, not a crash."""
    server = await serve(max_body_bytes=100_000)
    async with server.client() as client:
        token = await join(client, "Ann")
        response = await client.post(path, content=body, headers=bearer(token))
        assert_error(response, 422, code)
        counts = await read_counts(client)
        assert counts.board == {"Ann": 0}
        assert (await client.get("/healthz")).status_code == 200


# -- HTTP tokens -------------------------------------------------------------------------


def _tokens(secret: str, real: str) -> list[tuple[str, str]]:
    """Tokens that must not let anyone click: mangled, forged, or of the wrong shape."""
    mine = TokenSigner(secret)
    payload, _, signature = real.rpartition(".")
    return [
        ("nonsense", "invalid_token"),
        ("a.b", "invalid_token"),
        (".", "invalid_token"),
        ("x" * 100_000, "invalid_token"),
        (real + "x", "invalid_token"),
        (payload + ".", "invalid_token"),
        (payload, "invalid_token"),
        ("." + signature, "invalid_token"),
        (TokenSigner("other-secret").issue("Ann", "feedfacefeedface"), "invalid_token"),
        (mine.issue("Ghost", "feedfacefeedface"), "invalid_token"),
        (mine.issue("😀", "feedfacefeedface"), "invalid_token"),
        (mine.issue("", ""), "invalid_token"),
        # Genuine signatures over payloads of the wrong shape.
        (mine._serializer.dumps(["Ann"]), "invalid_token"),
        (mine._serializer.dumps(["Ann", "n", "extra"]), "invalid_token"),
        (mine._serializer.dumps("Ann"), "invalid_token"),
        (mine._serializer.dumps({"display": "Ann"}), "invalid_token"),
        (mine._serializer.dumps([1, 2]), "invalid_token"),
        (mine._serializer.dumps(None), "invalid_token"),
    ]


@shared_loop
async def test_bad_tokens_on_http(shared, http, seeded: Seeded) -> None:
    for token, code in _tokens(shared.settings.secret_key, seeded.ann):
        response = await http.post("/api/click", json={"n": 5}, headers=bearer(token))
        assert_error(response, 401, code)
    await assert_unchanged(http, seeded)


@shared_loop
async def test_deleted_users_token_is_dead_on_http(http, seeded: Seeded) -> None:
    bob = seeded.bob_name
    assert (await http.delete(f"/api/admin/users/{bob}", headers=ADMIN)).status_code == 200
    after_delete = await read_counts(http)
    assert bob not in after_delete.board
    assert after_delete.global_count == seeded.before.global_count - 2
    click = {"json": {"n": 1}, "headers": bearer(seeded.bob)}
    assert_error(await http.post("/api/click", **click), 401, "invalid_token")
    # Someone else takes the name: the old token must not click for them.
    new_bob = await join(http, bob.upper())
    assert_error(await http.post("/api/click", **click), 401, "invalid_token")
    assert (await http.post("/api/click", headers=bearer(new_bob))).json()["user"] == 1
    counts = await read_counts(http)
    assert counts.board[bob.upper()] == 1
    assert counts.global_count == after_delete.global_count + 1


# -- raw HTTP: what a client library would not send ---------------------------------------


async def raw_http(port: int, request: bytes, timeout: float = 10) -> tuple[int, str, bytes]:
    """Send bytes as they are; return (status, raw headers, body) of the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, _, headers = head.decode("latin-1").partition("\r\n")
    return int(status_line.split()[1]), headers.lower(), body


def _request(method: str, path: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    return (
        method.encode()
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        + headers
        + b"\r\n"
        + body
    )


RAW_CASES = [
    # A declared length far beyond the limit is refused before the body is read.
    (
        _request("POST", b"/api/join", b"Content-Length: 999999999\r\n", b"{}"),
        413,
        "payload_too_large",
    ),
    (
        _request(
            "POST",
            b"/api/join",
            b"Transfer-Encoding: chunked\r\n",
            b"5000\r\n" + b"a" * 0x5000 + b"\r\n0\r\n\r\n",
        ),
        413,
        "payload_too_large",
    ),
    (_request("GET", b"/api/users/%FF%FE"), 404, "not_found"),
    (_request("GET", b"/api/leaderboard?limit=%FF"), 422, "invalid_paging"),
    (_request("GET", b"/api/leaderboard?offset=99999999999999999999"), 422, "invalid_paging"),
    (_request("GET", b"/api/stats?window=%00"), 422, "invalid_window"),
    (
        _request("POST", b"/api/click", b"Authorization: Bearer \xff\xfe\xfd\r\n"),
        401,
        "invalid_token",
    ),
    (
        _request("POST", b"/api/click", b"Authorization: Bearer " + b"A" * 200_000 + b"\r\n"),
        401,
        "invalid_token",
    ),
]


@shared_loop
@pytest.mark.parametrize(("request_bytes", "status", "code"), RAW_CASES, ids=range(len(RAW_CASES)))
async def test_raw_http(shared, http, seeded: Seeded, request_bytes, status, code) -> None:
    got, headers, body = await raw_http(shared.port, request_bytes)
    assert got == status, body
    assert "content-type: application/json" in headers
    assert_no_trace(body.decode("utf-8", "replace"))
    assert_error_body(json.loads(body), code)
    await assert_unchanged(http, seeded)


@pytest.mark.parametrize(
    "request_bytes",
    [
        _request("GET", b"/api/state", b"X-Big: " + b"a" * 100_000 + b"\r\n"),
        _request("GET", b"/api/state", b"".join(b"X-H%d: v\r\n" % i for i in range(500))),
        _request("GET", b"/api/users?q=%FF%FE"),
        _request("GET", b"/api/users?q=%5B"),
        _request("GET", b"/api/users?q=-"),
        _request("GET", b"/api/users?q=%2B"),
        _request("GET", b"/api/users?q=%5C%00"),
        _request("GET", b"/api/users/..%2F..%2Fetc%2Fpasswd"),
        _request("POST", b"/api/join", b"Content-Length: abc\r\n", b"{}"),
        _request("POST", b"/api/join", b"Content-Length: -1\r\n", b"{}"),
        _request("BREW", b"/api/click"),
        _request("GET", b"/api/users/\xff\xfe"),
        _request("GET", b"/api/leaderboard?limit=\xd9\xa3"),
    ],
    ids=range(13),
)
@shared_loop
async def test_raw_http_never_500(shared, http, seeded: Seeded, request_bytes: bytes) -> None:
    """Odd but survivable requests: any answer below 500, without a trace, and nothing counted."""
    got, _, body = await raw_http(shared.port, request_bytes)
    assert 200 <= got < 500, body
    assert_no_trace(body.decode("utf-8", "replace"))
    await assert_unchanged(http, seeded)


# -- Socket.IO ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ([1],),
        ("n",),
        (5,),
        (True,),
        ({"n": "1"},),
        ({"n": [1]},),
        ({"n": {"n": {"n": 1}}},),
        ({"n": 1.0},),
        ({"n": 10**30},),
        ({"n": None},),
        ({"n": -1},),
        ({"n": 51},),
        ({"n": 1}, {"n": 2}),
        ({"n": 1}, 2, 3, 4, 5),
        (json.loads("[" * 200 + "]" * 200),),
    ],
    ids=range(15),
)
@shared_loop
async def test_socket_click_with_wrong_payload(shared, http, seeded: Seeded, args) -> None:
    player = await Player(shared.url, seeded.ann).connect()
    try:
        reply = await player.sio.call("click", args if len(args) > 1 else args[0], timeout=5)
        assert_error_body(reply, "invalid_n")
        assert player.sio.connected
        # The connection still works for a proper click afterwards.
        assert (await player.click(1))["user"] == 4
    finally:
        await player.close()
    counts = await read_counts(http)
    assert counts.board[seeded.ann_name] == 4
    assert counts.global_count == seeded.before.global_count + 1


@shared_loop
@pytest.mark.parametrize("event", ["explode", "", "Click", "click ", "state", "you", "x" * 1000])
async def test_unknown_socket_events(shared, http, seeded: Seeded, event: str) -> None:
    player = await Player(shared.url, seeded.ann).connect()
    try:
        reply = await player.sio.call(event, {"n": 5}, timeout=5)
        body = assert_error_body(reply, "unknown_event")
        assert len(body["detail"]) < 200, "the detail must not echo a huge name back"
    finally:
        await player.close()
    await assert_unchanged(http, seeded)


@pytest.mark.parametrize("event", ["connect", "disconnect"])
async def test_reserved_event_names_from_a_client_change_nothing(
    server, client, own: Seeded, event: str
) -> None:
    """A client that emits "connect" or "disconnect" must not fake its presence or identity."""
    player = await Player(server.url, own.ann).connect()
    watcher = await Player(server.url).connect()
    late: Player | None = None
    try:
        await eventually(lambda: watcher.states and watcher.last["online"] == 2, timeout=5)
        for _ in range(3):
            await player.sio.emit(event, {})
        reply = await player.click(1)
        # One more real connection: once online shows it, every earlier change is in.
        late = await Player(server.url).connect()
        await wait_online(client, 3)
        assert reply.get("user") == 4, reply
        assert (await read_counts(client)).board == {own.ann_name: 4, own.bob_name: 2}
    finally:
        for p in (player, watcher, late):
            if p is not None:
                await p.close()


@shared_loop
async def test_oversized_socket_message_is_refused(shared, http, seeded: Seeded) -> None:
    limit = shared.settings.max_body_bytes
    player = await Player(shared.url, seeded.ann).connect()
    gone = asyncio.Event()
    reasons: list[Any] = []
    player.sio.on("disconnect", lambda *_: gone.set())
    # The refusal says why (service/frames.py), which ends the namespace without a
    # "disconnect" event on this client.
    player.sio.on("connect_error", lambda data: (reasons.append(data), gone.set()))
    acks: list[Any] = []
    try:
        await player.sio.emit(
            "click", {"n": 1, "pad": "x" * (limit + 1)}, callback=lambda *a: acks.append(a)
        )
        await asyncio.wait_for(gone.wait(), timeout=5)
    finally:
        await player.close()
    # The server closes the connection; an ack, had there been one, must be a refusal.
    assert all("error" in ack[0] for ack in acks), acks
    assert reasons and all("invalid_frame" in repr(reason) for reason in reasons), reasons
    await assert_unchanged(http, seeded)
    # The instance is fine: a new connection plays normally.
    again = await Player(shared.url, seeded.ann).connect()
    try:
        assert (await again.click(1))["user"] == 4
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        ({"token": "nonsense"}, "invalid_token"),
        ({"token": "x" * 5000}, "invalid_token"),
        ({"token": 123}, "invalid_token"),
        ({"token": ["a", "b"]}, "invalid_token"),
        ({"token": None}, "invalid_auth"),
        ({"token": ""}, "invalid_auth"),
        ("just-a-string", "invalid_auth"),
        ([1, 2], "invalid_auth"),
    ],
    ids=range(8),
)
@shared_loop
async def test_bad_auth_is_refused_at_connect(shared, http, seeded: Seeded, auth, code) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sio.connect(shared.url, auth=auth, transports=["websocket"], wait_timeout=5)
    finally:
        await sio.disconnect()
    assert errors, "no connect_error"
    assert errors[0]["message"] == code
    assert_error_body(errors[0]["data"], code)
    await assert_unchanged(http, seeded)


@shared_loop
async def test_bad_tokens_on_socket(shared, http, seeded: Seeded) -> None:
    path = f"/api/admin/users/{seeded.bob_name}"
    assert (await http.delete(path, headers=ADMIN)).status_code == 200
    after_delete = await read_counts(http)
    # (Tokens longer than a Socket.IO message may be are a different case: the connection closes.)
    tokens = [t for t, _ in _tokens(shared.settings.secret_key, seeded.ann) if len(t) < 5000]
    tokens.append(seeded.bob)  # deleted
    for token in tokens:
        sio = socketio.AsyncClient(reconnection=False)
        errors: list[Any] = []
        sio.on("connect_error", errors.append)
        try:
            with pytest.raises(socketio.exceptions.ConnectionError):
                await sio.connect(
                    shared.url, auth={"token": token}, transports=["websocket"], wait_timeout=5
                )
        finally:
            await sio.disconnect()
        assert errors and errors[0]["message"] == "invalid_token", (token[:40], errors)
        assert_error_body(errors[0]["data"], "invalid_token")
    assert await read_counts(http) == after_delete


@shared_loop
async def test_deleted_player_connection_cannot_click_for_the_new_owner(
    shared, http, seeded: Seeded
) -> None:
    bob = seeded.bob_name
    old = await Player(shared.url, seeded.bob).connect()
    try:
        path = f"/api/admin/users/{bob.upper()}"
        assert (await http.delete(path, headers=ADMIN)).status_code == 200
        new_bob = await join(http, bob)
        for _ in range(3):
            assert_error_body(await old.click(1), "invalid_token")
        assert (await http.post("/api/click", headers=bearer(new_bob))).json()["user"] == 1
    finally:
        await old.close()
    counts = await read_counts(http)
    assert counts.board[bob] == 1
    assert counts.global_count == seeded.before.global_count - 2 + 1


# -- raw Socket.IO frames ------------------------------------------------------------------

RAW_FRAMES = [
    '421["click",' + "[" * 5000 + "]" * 5000 + "]",
    '421["click",{"n":',
    "42",
    "421",
    '421{"n":1}',
    '421"click"',
    "421[]",
    "421[1,2]",
    "9",
    '451-["click",{"_placeholder":true,"num":0}]',
    "\xff",
]


async def _raw_socket(port: int, token: str, frames: list[str]) -> list[str]:
    """Speak Engine.IO/Socket.IO by hand; return every text frame the server sent back."""
    received: list[str] = []
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    async with ws_connect(url, open_timeout=5, close_timeout=1) as ws:
        received.append(str(await ws.recv()))
        await ws.send("40" + json.dumps({"token": token}))
        received.append(str(await ws.recv()))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            for frame in frames:
                await ws.send(frame)
            # A proper click afterwards: its ack shows whether the connection still works.
            await ws.send('4277["click",{"n":1}]')
            async with asyncio.timeout(2):
                while not received[-1].startswith("4377"):
                    received.append(str(await ws.recv()))
    return received


@shared_loop
@pytest.mark.parametrize("frame", RAW_FRAMES, ids=range(len(RAW_FRAMES)))
async def test_malformed_socket_frames(shared, http, seeded: Seeded, frame: str) -> None:
    received = await _raw_socket(shared.port, seeded.ann, [frame])
    for message in received:
        assert_no_trace(message)
    acked = [m for m in received if m.startswith("4377")]
    counts = await read_counts(http)
    # Either the connection survived and only the proper click counted, or it was closed
    # before that click: never anything else.
    assert counts.board[seeded.ann_name] == 3 + len(acked)
    assert counts.global_count == seeded.before.global_count + len(acked)
    assert (await http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    "frame", ["\xff", "9", "421[]", '42["click",{"pad":"' + "x" * 20_000 + '"}]'], ids=range(4)
)
async def test_malformed_frame_does_not_leak_presence(server, client, own, frame) -> None:
    """Once a connection that sent garbage is gone, it no longer counts as online."""
    watcher = await Player(server.url).connect()
    try:
        await eventually(lambda: watcher.states and watcher.last["online"] == 1, timeout=5)
        await _raw_socket(server.port, own.ann, [frame])
        await wait_online(client, 1)
    finally:
        await watcher.close()


async def wait_online(client: httpx.AsyncClient, expected: int, timeout: float = 5) -> None:
    """Poll /api/state until online is `expected`; say what it was if it never gets there."""
    seen: list[int] = []

    async def check() -> bool:
        seen.append((await client.get("/api/state")).json()["online"])
        return seen[-1] == expected

    try:
        await eventually(check, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"online never became {expected}; it was {seen[-1]}") from None


# -- floods ----------------------------------------------------------------------------------


def _limit_bound(limit: int, elapsed_s: float) -> int:
    """A sliding one-second window lets at most `limit` through per started second."""
    return limit * (math.floor(elapsed_s) + 1)


async def test_http_click_burst_on_one_player(serve, counter) -> None:
    server = await serve(rate_limit_cps=10)
    async with server.client() as client:
        token = await join(client, "Ann")
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.post("/api/click", json={"n": 1}, headers=bearer(token)) for _ in range(80))
        )
        elapsed = time.monotonic() - started
        accepted = [r for r in responses if r.status_code == 200]
        for refused in (r for r in responses if r.status_code != 200):
            body = assert_error(refused, 429, "rate_limited")
            assert refused.headers["Retry-After"] == "1"
            assert 0 < body["retry_after_ms"] <= 1000
        assert 10 <= len(accepted) <= _limit_bound(10, elapsed), (len(accepted), elapsed)
        counts = await read_counts(client)
        assert counts.board == {"Ann": len(accepted)}
        assert max(r.json()["user"] for r in accepted) == len(accepted)


@shared_loop
async def test_socket_click_flood_is_refused_without_counting(shared, http, seeded) -> None:
    limit = shared.settings.rate_limit_cps
    name = unique("flood")
    player = await Player(shared.url, await join(http, name)).connect()
    try:
        started = time.monotonic()
        replies = await asyncio.gather(*(player.click(1, timeout=20) for _ in range(300)))
        elapsed = time.monotonic() - started
        assert player.sio.connected
    finally:
        await player.close()
    accepted = [r for r in replies if "user" in r]
    refused = [r for r in replies if "error" in r]
    assert len(accepted) + len(refused) == 300
    for reply in refused:
        assert_error_body(reply, "rate_limited")
    assert limit <= len(accepted) <= _limit_bound(limit, elapsed), (len(accepted), elapsed)
    counts = await read_counts(http)
    assert counts.board[name] == len(accepted)
    assert counts.global_count == seeded.before.global_count + len(accepted)


@shared_loop
async def test_unknown_event_flood_keeps_the_instance_serving(shared, http, seeded) -> None:
    player = await Player(shared.url, seeded.ann).connect()
    try:
        replies = await asyncio.gather(
            *(player.sio.call("spam", {"n": 50}, timeout=20) for _ in range(300))
        )
        for reply in replies:
            assert reply["error"] in ("unknown_event", "rate_limited"), reply
        assert (await http.get("/healthz")).status_code == 200
    finally:
        await player.close()
    await assert_unchanged(http, seeded)


async def test_join_flood_from_one_address(serve, counter) -> None:
    server = await serve(join_rate_per_min=5)
    async with server.client() as client:
        statuses = []
        for i in range(5):
            response = await client.post("/api/join", json={"username": f"p{i}"})
            statuses.append(response.status_code)
        assert statuses == [201] * 5
        for i in range(5, 9):
            response = await client.post("/api/join", json={"username": f"p{i}"})
            body = assert_error(response, 429, "rate_limited")
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert 0 < body["retry_after_ms"] <= 60_000
        counts = await read_counts(client)
        assert counts.users == 5
        assert set(counts.board) == {f"p{i}" for i in range(5)}
