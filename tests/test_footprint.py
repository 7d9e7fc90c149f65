"""service/footprint.py: the Mailbox, and what an open websocket no longer keeps."""

from __future__ import annotations

import asyncio

import pytest

from service.footprint import Mailbox
from tests.support import Player, eventually


async def test_mailbox_is_a_fifo_whose_get_waits() -> None:
    box = Mailbox()
    assert box.empty()
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()
    waiting = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    await box.put("a")
    box.put_nowait("b")
    assert await asyncio.wait_for(waiting, 1) == "a"
    assert box.get_nowait() == "b"
    assert box.qsize() == 0


async def test_mailbox_join_waits_until_every_item_is_done() -> None:
    box = Mailbox()
    box.put_nowait(1)
    box.put_nowait(2)
    joined = asyncio.create_task(box.join())
    box.get_nowait()
    box.task_done()
    await asyncio.sleep(0.01)
    assert not joined.done()
    box.get_nowait()
    box.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        box.task_done()
    await asyncio.wait_for(box.join(), 1)  # nothing pending: returns at once


async def test_a_cancelled_get_leaves_the_mailbox_usable() -> None:
    box = Mailbox()
    waiting = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    box.put_nowait("x")
    assert await asyncio.wait_for(box.get(), 1) == "x"


async def test_an_open_websocket_keeps_no_handshake_leftovers(server) -> None:
    """Fails when python-engineio or uvicorn change what footprint.py swaps or trims."""
    spectator = await Player(server.url).connect()
    try:
        await eventually(lambda: spectator.states, timeout=2)
        sio = server.runtime.sio
        ((eio_sid, socket),) = sio.eio.sockets.items()
        assert isinstance(socket.queue, Mailbox)
        assert "wsgi.input" not in sio.environ[eio_sid]
        receiver = server.runtime.fanout.receivers[eio_sid]
        protocol = receiver.transport.get_protocol()
        assert protocol.request is None and protocol.response is None
        assert isinstance(protocol.queue, Mailbox)
        # The session still works both ways afterwards.
        assert await spectator.click(1) == {
            "error": "not_a_player",
            "detail": "Spectators cannot click; connect with a token to play.",
        }
    finally:
        await spectator.close()
