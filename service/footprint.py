"""Footprint: the memory an idle websocket holds, trimmed where the libraries over-keep.

An idle spectator cost ~41 KB of this process (tracemalloc and RSS agree). Three
things it kept were never used again on a websocket-only server:
- python-engineio's per-socket `asyncio.Queue`: four deques of ~760 bytes each, for
  a queue that holds a packet or two. `Mailbox` does the same job in ~150 bytes, and
  goes in through engineio's own `create_queue` hook.
- python-engineio's ASGI environ keeps `wsgi.input`, an instance of a class created
  anew for every request (~3 KB with the class); only long-polling POSTs read it.
- uvicorn's websocket protocols keep the handshake request and response, and give
  each connection an `asyncio.Queue` of received events; `adopt` swaps it for a
  Mailbox before the app first reads from it.

Like service/fanout.py, it reaches below those libraries' public APIs, is written for
the versions pinned there (`fanout.WRITTEN_FOR`), and tests/test_footprint.py checks it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import socketio

from service.fanout import SANSIO, WSPROTO


class Mailbox:
    """An unbounded FIFO with the part of asyncio.Queue's interface engineio uses.

    One consumer (the socket's writer task) waits in `get`; `join` waits until every
    item taken was marked done.
    """

    __slots__ = ("_getter", "_idle", "_items", "_unfinished")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._getter: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._unfinished = 0

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._unfinished += 1
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    async def get(self) -> Any:
        while not self._items:
            if self._getter is not None:
                raise RuntimeError("Mailbox has one consumer")
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self._items.pop(0)

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if not self._unfinished and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def join(self) -> None:
        while self._unfinished:
            if self._idle is None or self._idle.done():
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)


def slim(sio: socketio.AsyncServer) -> None:
    """Give every Engine.IO socket of this server a Mailbox instead of an asyncio.Queue."""
    sio.eio.create_queue = lambda *args, **kwargs: Mailbox()


def adopt(send: Callable[..., Any]) -> None:
    """Give a new websocket's uvicorn protocol a Mailbox for its received events.

    Called before the app first awaits `receive`, so nobody waits on the old queue;
    what it holds (the `websocket.connect` event) moves over in order.
    """
    protocol: Any = getattr(send, "__self__", None)
    kind = type(protocol)
    if f"{kind.__module__}.{kind.__qualname__}" not in (SANSIO, WSPROTO):
        return
    queue: Any = protocol.queue
    if not isinstance(queue, asyncio.Queue) or getattr(queue, "_getters", None):  # a waiter
        return
    box = Mailbox()
    while not queue.empty():
        box.put_nowait(queue.get_nowait())
    protocol.queue = box


def trim(sio: socketio.AsyncServer, eio_sid: str, send: Callable[..., Any]) -> None:
    """Drop what an open websocket's session keeps from its handshake."""
    environ = sio.environ.get(eio_sid)
    if environ is not None:
        environ.pop("wsgi.input", None)
    protocol = getattr(send, "__self__", None)
    kind = type(protocol)
    if protocol is not None and f"{kind.__module__}.{kind.__qualname__}" == SANSIO:
        if protocol.handshake_complete:  # read again only before the accept
            protocol.request = protocol.response = None
