"""service/fanout.py against the real uvicorn, websockets and wsproto it reaches into."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import Frame, Opcode

from service import metrics
from service.fanout import WRITTEN_FOR, Fanout, text_frame
from tests.support import InProcessServer

ROOT = Path(__file__).resolve().parent.parent


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def test_the_installed_libraries_are_the_ones_it_was_written_for() -> None:
    """Fails when an upgrade moves uvicorn, websockets, wsproto or engineio out of range."""
    for name, (low, high) in WRITTEN_FOR.items():
        installed = _release(version(name))
        assert low <= installed < high, f"{name} {version(name)} is outside {low}..{high}"


def test_pyproject_pins_the_same_ranges() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, (low, high) in WRITTEN_FOR.items():
        (pin,) = [d for d in deps if re.match(rf"{re.escape(name)}(\[|>|<|=|$)", d)]
        bounds = dict(re.findall(r"(>=|<)\s*([\d.]+)", pin))
        assert _release(bounds[">="]) == low and _release(bounds["<"]) == high, (name, pin)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frame_matches_the_websockets_serializer(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


class Harness(InProcessServer):
    """A real uvicorn serving a bare websocket app that hands each connection to a Fanout."""

    def __init__(self, fanout: Fanout, ws: str) -> None:
        super().__init__(ws)
        self.fanout = fanout

    async def app(self, scope: dict[str, Any], receive: Callable[..., Any], send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        sid = scope["path"].strip("/")
        self.fanout.attach(sid, send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            self.fanout.detach(sid)

    def url(self, sid: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{sid}"

    async def attached(self, *sids: str) -> None:
        for _ in range(200):
            if all(sid in self.fanout.receivers for sid in sids):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the fan-out never took over {sids}")


@contextlib.asynccontextmanager
async def harness(fanout: Fanout, ws: str = "websockets-sansio") -> AsyncIterator[Harness]:
    running = await Harness(fanout, ws).start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_every_connection_gets_the_same_message(ws: str, compression: str | None) -> None:
    fanout = Fanout()
    async with harness(fanout, ws) as server:
        async with (
            connect(server.url("a"), compression=compression) as a,
            connect(server.url("b"), compression=compression) as b,
        ):
            await server.attached("a", "b")
            shared = ws == "websockets-sansio" and compression is None
            assert (fanout.receivers["a"].encode is None) is shared
            for packet in ['42["state",{"global":1}]', '42["state",' + '"é" ' * 40_000 + "]"]:
                sent, others = fanout.send(packet, ["a", "b", "gone"])
                assert (sent, others) == (2, ["gone"])
                for client in (a, b):
                    assert await asyncio.wait_for(client.recv(), 5) == packet


async def test_a_closed_connection_is_skipped_and_forgotten() -> None:
    fanout = Fanout()
    async with harness(fanout) as server:
        async with connect(server.url("a")) as a:
            await server.attached("a")
        await a.wait_closed()
        for _ in range(200):
            if "a" not in fanout.receivers:
                break
            await asyncio.sleep(0.01)
        assert fanout.send("4x", ["a"]) == (0, ["a"])


async def _stalled_reader(port: int, sid: str) -> socket.socket:
    """A websocket client that completes the handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its window closes fast
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET /{sid} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    reply = await loop.sock_recv(sock, 4096)
    assert b" 101 " in reply.split(b"\r\n")[0]
    return sock


async def _read_all(client: ClientConnection, arrivals: list[float]) -> None:
    with contextlib.suppress(Exception):
        async for _ in client:
            arrivals.append(time.monotonic())


async def test_a_stalled_reader_is_cut_and_the_others_are_not_delayed() -> None:
    fanout = Fanout(max_behind_s=1.0, check_every_s=0.1)
    dropped_before = metrics.SLOW_READERS_DROPPED._value.get()
    packet = "4" + "s" * 16_000
    async with harness(fanout) as server, connect(server.url("fast"), max_size=None) as fast:
        slow = await _stalled_reader(server.port, "slow")
        try:
            await server.attached("fast", "slow")
            arrivals: list[float] = []
            reader = asyncio.create_task(_read_all(fast, arrivals))
            sends: list[float] = []
            cut_at = None
            started = time.monotonic()
            while time.monotonic() - started < 8:
                sends.append(time.monotonic())
                fanout.send(packet, ["fast", "slow"])
                if cut_at is None and "slow" not in fanout.receivers:
                    cut_at = time.monotonic() - started
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            reader.cancel()
            assert cut_at is not None and cut_at < 4, f"the stalled reader was not cut: {cut_at}"
            assert metrics.SLOW_READERS_DROPPED._value.get() == dropped_before + 1
            # The fast reader got every message, each promptly.
            assert len(arrivals) == len(sends)
            worst = max(a - s for a, s in zip(arrivals, sends, strict=True))
            assert worst < 0.25, f"a message to the fast reader took {worst:.3f} s"
            # The stalled client's connection was closed by the server.
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            with contextlib.suppress(ConnectionError):
                while await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 5):
                    pass
        finally:
            slow.close()
