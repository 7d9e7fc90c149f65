"""service/shedder.py against the real uvicorn and websockets whose reads it takes over:
late clicks answered from their raw frames, every other byte passed on in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from service import metrics
from service.admission import Admission, LagProbe, overloaded
from service.shedder import Shedder, ack_frame, frame_end
from tests.support import InProcessServer
from tests.test_admission import Clock


def _lagging(admission: Admission, lag_s: float) -> None:
    """Make the probe report a standing lag of lag_s."""
    admission.probe.last_lag_s = admission.probe.previous_lag_s = lag_s


class Harness(InProcessServer):
    """A real uvicorn serving a websocket app that attaches each connection to a Shedder
    and records every text message that reaches it."""

    def __init__(self, ws: str) -> None:
        super().__init__(ws)
        self.clock = Clock()
        self.admission = Admission(0.5, clock=self.clock, probe=LagProbe(clock=self.clock))
        self.shedder = Shedder(self.admission)
        self.seen: list[str] = []
        self.attached: list[bool] = []
        self.before_accept: Callable[[Any], None] | None = None

    async def app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        assert scope["type"] == "websocket"
        self.attached.append(self.shedder.attach(send))
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if self.before_accept is not None:
            self.before_accept(send.__self__)
        while (message := await receive())["type"] != "websocket.disconnect":
            self.seen.append(message.get("text") or message.get("bytes"))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def saw(self, count: int) -> list[str]:
        for _ in range(500):
            if len(self.seen) >= count:
                return self.seen
            await asyncio.sleep(0.01)
        raise AssertionError(f"the app saw {self.seen!r}, not {count} messages")


@contextlib.asynccontextmanager
async def harness(ws: str = "websockets-sansio") -> AsyncIterator[Harness]:
    running = await Harness(ws).start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
@pytest.mark.parametrize("mask", [True, False])
def test_frame_end_reads_every_header_form(size: int, mask: bool) -> None:
    frame = Frame(Opcode.TEXT, b"x" * size).serialize(mask=mask)
    data = b"junk" + frame + b"\x81"
    assert frame_end(data, 4) == 4 + len(frame)
    head = len(frame) - size
    for cut in range(head):  # a header that is not all there yet
        assert frame_end(data[: 4 + cut], 4) == -1


@pytest.mark.parametrize("wait_s", [0.6, 1.0, 1.2345, 7.0])
def test_the_ack_frame_is_the_refusal_the_click_handler_would_send(wait_s: float) -> None:
    clock = Clock()
    admission = Admission(0.5, clock=clock, probe=LagProbe(clock=clock))
    arrived = clock.now - wait_s
    retry_ms = admission.shed(arrived)
    frame = ack_frame(b"17", retry_ms)
    assert frame == Frame(Opcode.TEXT, frame[4:]).serialize(mask=False)
    text = frame[4:].decode()
    assert text.startswith("4317[")
    assert json.loads(text[4:]) == [overloaded("backlog", clock.now - arrived).body()]


CLICK = '421["click",{"n":1}]'


async def test_a_late_click_is_answered_from_its_raw_frame() -> None:
    refused = metrics.OVERLOAD_REFUSED.labels("backlog")
    before = refused._value.get()
    async with harness() as server, connect(server.url, compression=None) as client:
        _lagging(server.admission, 1.0)
        for text in (CLICK, '42["other"]', '422["click",{"n":2,"id":"x"}]', "3"):
            await client.send(text)
        acks = [await asyncio.wait_for(client.recv(), 5) for _ in range(2)]
        assert await server.saw(2) == ['42["other"]', "3"]
    assert server.attached == [True]
    body = json.dumps([overloaded("backlog", 1.0).body()], separators=(",", ":"))
    assert acks == [f"431{body}", f"432{body}"]
    assert refused._value.get() == before + 2


async def test_clicks_that_may_wait_pass_untouched() -> None:
    async with harness() as server, connect(server.url, compression=None) as client:
        _lagging(server.admission, 0.01)
        texts = [CLICK, '42["other"]', '422["click",{"n":2,"id":"é"}]']
        for text in texts:
            await client.send(text)
        assert await server.saw(3) == texts
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.recv(), 0.2)  # nobody answered for the app


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client at the byte level: handshake done, then anything goes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head.split(b"\r\n")[0]
    return reader, writer


async def _server_frames(reader: asyncio.StreamReader, count: int) -> list[tuple[int, str]]:
    """The next `count` frames (under 64 KB) the server sent: (opcode, text)."""
    frames = []
    for _ in range(count):
        first, second = await asyncio.wait_for(reader.readexactly(2), 5)
        assert first & 0x80 and second <= 126  # final, unmasked, short
        if second == 126:
            second = int.from_bytes(await reader.readexactly(2), "big")
        frames.append((first & 0x0F, (await reader.readexactly(second)).decode()))
    return frames


async def _server_texts(reader: asyncio.StreamReader, count: int) -> list[str]:
    frames = await _server_frames(reader, count)
    assert {opcode for opcode, _ in frames} == {Opcode.TEXT.value}
    return [text for _, text in frames]


def _client_frame(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True)


async def test_frames_cut_anywhere_keep_their_boundaries() -> None:
    """Refused clicks, long frames, fragmented messages (one that reads like a click) and
    control frames, written a few bytes at a time: the app sees every message not refused,
    whole and in order, and the client gets an ack for each refused click."""
    stream = [
        (_client_frame(Opcode.TEXT, b'420["click",{"n":1}]'), None),
        (_client_frame(Opcode.TEXT, b"4" + b"y" * 300), "4" + "y" * 300),
        (_client_frame(Opcode.TEXT, b'425["cl', fin=False), None),
        (_client_frame(Opcode.PING, b"p"), None),
        (_client_frame(Opcode.CONT, b'ick",{"n":1}]'), '425["click",{"n":1}]'),
        (_client_frame(Opcode.TEXT, b'421["click",{"n":1}]'), None),
        (_client_frame(Opcode.TEXT, b'42["click",{"n":1}]'), '42["click",{"n":1}]'),  # no ack id
        (_client_frame(Opcode.TEXT, b"4" + b"z" * 70_000), "4" + "z" * 70_000),
        (_client_frame(Opcode.TEXT, b'422["click",{"n":2}]'), None),
    ]
    wire = b"".join(frame for frame, _ in stream)
    expected = [text for _, text in stream if text is not None]
    async with harness() as server:
        _lagging(server.admission, 1.0)
        reader, writer = await _raw_client(server.port)
        try:
            pos, step = 0, 1
            while pos < len(wire):
                piece = wire[pos : pos + step] if pos < 2000 else wire[pos : pos + 9000]
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.002)  # separate reads on the server
                pos += len(piece)
                step = step % 7 + 1
            assert await server.saw(len(expected)) == expected
            replies = await _server_frames(reader, 4)
            # The ping was answered (uvicorn does that after the read, so it may come after
            # acks written during the same read); the acks came in the order of the clicks.
            assert (Opcode.PONG.value, "p") in replies
            acks = [text for opcode, text in replies if opcode == Opcode.TEXT.value]
            assert [ack[:4] for ack in acks] == ["430[", "431[", "432["]
        finally:
            writer.close()


async def test_everything_passes_in_one_write_too() -> None:
    frames = [_client_frame(Opcode.TEXT, f'42{i}["click",{{"n":1}}]'.encode()) for i in range(50)]
    frames.insert(25, _client_frame(Opcode.TEXT, b'42["other"]'))
    async with harness() as server:
        _lagging(server.admission, 1.0)
        reader, writer = await _raw_client(server.port)
        try:
            writer.write(b"".join(frames))
            acks = await _server_texts(reader, 50)
            assert [int(ack[2 : ack.index("[")]) for ack in acks] == list(range(50))
            assert await server.saw(1) == ['42["other"]']
        finally:
            writer.close()


async def test_nothing_is_answered_after_the_client_closed_in_the_same_read() -> None:
    refused = metrics.OVERLOAD_REFUSED.labels("backlog")
    before = refused._value.get()
    close = Frame(Opcode.CLOSE, (1000).to_bytes(2, "big")).serialize(mask=True)
    click = _client_frame(Opcode.TEXT, b'427["click",{"n":1}]')
    async with harness() as server:
        _lagging(server.admission, 1.0)
        reader, writer = await _raw_client(server.port)
        try:
            writer.write(close + click)
            rest = await asyncio.wait_for(reader.read(), 5)  # until the server hangs up
            assert rest[0] == 0x88  # its close frame, and no ack before or after it
            assert b"overloaded" not in rest
        finally:
            writer.close()
    assert refused._value.get() == before


async def test_a_compressed_connection_keeps_the_ordinary_path() -> None:
    async with harness() as server, connect(server.url, compression="deflate") as client:
        _lagging(server.admission, 1.0)
        await client.send(CLICK)
        assert await server.saw(1) == [CLICK]


async def test_a_peer_that_does_not_read_keeps_the_ordinary_path() -> None:
    async with harness() as server:
        server.before_accept = lambda protocol: protocol.pause_writing()  # its buffer is full
        async with connect(server.url, compression=None) as client:
            _lagging(server.admission, 1.0)
            await client.send(CLICK)
            assert await server.saw(1) == [CLICK]


async def test_only_the_sansio_protocol_is_taken_over() -> None:
    async with harness("wsproto") as server, connect(server.url, compression=None) as client:
        _lagging(server.admission, 1.0)
        await client.send(CLICK)
        assert await server.saw(1) == [CLICK]
    assert server.attached == [False]


def test_uvicorn_still_feeds_every_byte_through_conn_receive_data() -> None:
    """Fails when uvicorn stops handing its reads to `self.conn.receive_data`."""
    import inspect

    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    source = inspect.getsource(WebSocketsSansIOProtocol.data_received)
    assert "self.conn.receive_data(data)" in source
    assert os.path.basename(inspect.getfile(WebSocketsSansIOProtocol)) == (
        "websockets_sansio_impl.py"
    )
