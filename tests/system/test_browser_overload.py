"""The play page under overload: it waits, keeps its clicks, says so, and sends every batch
again under the same id, so no click is lost or counted twice.

The page's websocket goes through Playwright: the first two click batches are answered
`overloaded` (as an overloaded instance answers, without reaching it), and the ack of the
third is swallowed after the real instance counted it (a time-out the page cannot tell
from a lost batch). Everything else passes through to a real instance.
"""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.async_api import WebSocketRoute, expect

from tests.support import Stack, eventually
from tests.system import test_browser
from tests.system.test_browser import Chrome, button, count_of, join, status, wait_counted

chrome = test_browser.chrome  # the fixture: one watched headless Chromium per test

_EVENT = re.compile(r"42(\d+)(\[.*)", re.DOTALL)
_ACK = re.compile(r"43(\d+)\[")
OVERLOADED = {
    "error": "overloaded",
    "detail": "This instance is too busy to count your click in time; it was not counted.",
    "retry_after_ms": 1500,
}


RESTORING = {
    "error": "restoring",
    "detail": "Counts are being restored from the last snapshot; try again in a moment.",
}


class OverloadedLink:
    """Does to the page's click batches, in turn, what `plan` says: "refuse" (answers
    `refusal` without reaching the instance), "swallow" (the instance counts it, the ack
    is lost); every later batch passes."""

    def __init__(self, plan: list[str], refusal: dict[str, Any] = OVERLOADED) -> None:
        self.plan = plan
        self.refusal = refusal
        self.clicks: list[dict[str, Any]] = []
        self.swallowed: set[str] = set()

    async def route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            event = _EVENT.fullmatch(message) if isinstance(message, str) else None
            if event and json.loads(event.group(2))[0] == "click":
                self.clicks.append(json.loads(event.group(2))[1])
                ack_id = event.group(1)
                step = self.plan[len(self.clicks) - 1] if len(self.clicks) <= len(self.plan) else ""
                if step == "refuse":
                    ws.send(f"43{ack_id}{json.dumps([self.refusal])}")
                    return
                if step == "swallow":
                    self.swallowed.add(ack_id)
            server.send(message)

        def from_server(message: str | bytes) -> None:
            ack = _ACK.match(message) if isinstance(message, str) else None
            if ack and ack.group(1) in self.swallowed:
                return
            ws.send(message)

        ws.on_message(from_page)
        server.on_message(from_server)


async def test_the_page_rides_out_overload_without_losing_or_doubling(
    stack: Stack, chrome: Chrome
) -> None:
    instance = stack.instance()
    page = await chrome.page(instance)
    link = OverloadedLink(["refuse", "refuse", "swallow"])
    await page.context.route_web_socket(re.compile(r".*/socket\.io/.*"), link.route)
    await join(page, "Patient")

    for _ in range(5):
        await button(page).click()
    await expect(status(page)).to_contain_text("busy, your clicks are saved")
    await expect(count_of(page)).to_have_text("5")  # kept, shown, not lost
    # Refused twice, then counted with its ack lost, then sent once more: counted once.
    await wait_counted(instance, "Patient", 5, timeout=15)
    await expect(status(page)).to_have_text("Live", timeout=15_000)
    for _ in range(3):
        await button(page).click()
    await wait_counted(instance, "Patient", 8)
    await expect(count_of(page)).to_have_text("8")

    batches = link.clicks
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", b["id"]) for b in batches), batches
    first = batches[0]
    # The refused batch and the one whose ack was lost went again with the same id and n.
    assert batches[1] == first and batches[2] == first and batches[3] == first, batches
    assert sum(b["n"] for b in batches[3:] if b["id"] != first["id"]) + first["n"] == 8
    assert len({b["id"] for b in batches}) == len(batches) - 3


async def test_a_batch_whose_ack_was_lost_keeps_its_id_through_a_restore(
    stack: Stack, chrome: Chrome
) -> None:
    """Counted, its ack lost (Redis went away, say), then answered `restoring`: the page
    sends the same batch under the same id once the restore is done, and it counts once
    (the restore puts the batch ids of the snapshot back; tests/test_restore.py)."""
    instance = stack.instance()
    page = await chrome.page(instance)
    link = OverloadedLink(["swallow", "refuse"], refusal=RESTORING)
    await page.context.route_web_socket(re.compile(r".*/socket\.io/.*"), link.route)
    await join(page, "Steady")
    for _ in range(4):
        await button(page).click()
    await wait_counted(instance, "Steady", 4, timeout=15)
    await expect(count_of(page)).to_have_text("4")
    await eventually(lambda: len(link.clicks) > 2, timeout=15)
    first = link.clicks[0]
    assert link.clicks[1] == first and link.clicks[2] == first, link.clicks
    await wait_counted(instance, "Steady", 4)
