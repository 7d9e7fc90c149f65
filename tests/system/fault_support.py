"""Load and outage helpers for the fault suite: clicking players and a switchable TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx

from tests.support import free_port


@dataclass
class Clicker:
    """One HTTP player clicking steadily, recording every acknowledged click."""

    base_url: str
    token: str
    name: str
    acked: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, n)
    refused: int = 0

    async def run(self, stop: asyncio.Event, per_second: float = 8) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            while not stop.is_set():
                try:
                    response = await client.post("/api/click", json={"n": 1}, headers=headers)
                except httpx.HTTPError:
                    self.refused += 1
                else:
                    if response.status_code == 200:
                        self.acked.append((time.monotonic(), 1))
                    else:
                        self.refused += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1 / per_second)

    def acked_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.acked if start <= t < end)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.acked)


class Proxy:
    """A TCP proxy we can cut and restore, to take a database "down" for one process only."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Refuse new connections and cut the open ones, as a dead server would."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.close()
