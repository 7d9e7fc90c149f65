"""Page details a newcomer tripped on, each in real Chromium: long names on the dashboard,
the play page across a server restart, stale figures while reconnecting, wording, badges."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from tests.support import Instance, Stack
from tests.system.browser_support import DESKTOP, PHONE
from tests.system.test_browser import ADMIN_TOKEN, Chrome, chrome, http_player, status

pytestmark = pytest.mark.system
__all__ = ["chrome"]  # the fixture, shared with test_browser.py

# Wide letters, spaces and punctuation: as wide as 32 characters get in the page's font.
LONG_NAMES = ["W" * 32, "Mmmmmmmmmm Wwwwwwwwww Mmmmmmmmmm", "WWide_and-dotted.names_are_longW"]


async def clicks_from(instance: Instance, country: str | None, name: str, n: int) -> None:
    """A player who joins and clicks n times over HTTP from a country (X-Country)."""
    headers = {"X-Country": country} if country else {}
    async with httpx.AsyncClient(base_url=instance.url, timeout=5, headers=headers) as http:
        joined = await http.post("/api/join", json={"username": name})
        assert joined.status_code == 201, joined.text
        auth = {"Authorization": f"Bearer {joined.json()['token']}"}
        clicked = await http.post("/api/click", json={"n": n}, headers=auth)
        assert clicked.status_code == 200, clicked.text


OVERFLOW = """() => {
    const card = document.querySelector(".users-card").getBoundingClientRect();
    const wrap = document.querySelector(".table-wrap");
    const rows = [...document.querySelectorAll("#users-body tr")];
    return {
        rows: rows.length,
        scrolls: wrap.scrollWidth > wrap.clientWidth + 1,
        outside: rows.flatMap((row) => [...row.querySelectorAll("button")].filter((b) => {
            const r = b.getBoundingClientRect();
            return r.right > card.right + 0.5 || r.left < card.left - 0.5;
        }).map((b) => b.getAttribute("aria-label"))),
    };
}"""


@pytest.mark.parametrize("viewport", [DESKTOP, {"width": 1000, "height": 800}, PHONE])
async def test_dashboard_buttons_stay_in_the_card_with_32_character_names(
    stack: Stack, chrome: Chrome, viewport: Any
) -> None:
    instance = stack.instance()
    for i, name in enumerate(LONG_NAMES):
        assert len(name) == 32
        await http_player(instance, name, i + 1)
    page = await chrome.page(instance, phone=viewport is PHONE)
    await page.set_viewport_size(viewport)
    await page.goto("/dashboard")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#users-body tr")).to_have_count(3)
    layout = await page.evaluate(OVERFLOW)
    assert layout["rows"] == 3
    assert not layout["outside"], f"buttons outside the card at {viewport}: {layout['outside']}"
    assert not layout["scrolls"], f"the table scrolls sideways at {viewport}"
    # The whole name is still there for a pointer and a screen reader.
    name = page.locator("#users-body td.name").first
    assert len(await name.text_content() or "") == 32


async def test_top_countries_survive_a_restart_and_unknown_has_no_badge(
    stack: Stack, chrome: Chrome
) -> None:
    instance, other = stack.instance(), stack.instance()
    await clicks_from(instance, "DE", "Berliner", 3)
    await clicks_from(instance, None, "Nowhere", 2)
    page = await chrome.page(instance)
    await page.goto("/")
    board = page.locator("#countries")
    await expect(board).to_be_visible()
    await expect(board.locator(".row")).to_have_count(2)
    await expect(board.locator(".row").first).to_contain_text("Germany")
    unknown = board.locator(".row", has_text="Unknown")
    await expect(unknown).to_have_count(1)
    await expect(unknown.locator(".cc")).to_have_count(0)
    assert "··" not in (await board.text_content() or "")

    instance.proc.kill()
    await expect(status(page)).to_contain_text("Reconnecting")
    await clicks_from(other, "FR", "Parisienne", 5)  # counted while this page is cut off
    await asyncio.sleep(1)
    await expect(board).to_be_visible()  # the last board stays up meanwhile

    await asyncio.to_thread(stack.instance, port=instance.port)
    await expect(status(page)).to_have_text("Live", timeout=20_000)
    # At once on reconnect, not at the next 15-second poll.
    await expect(board.locator(".row").first).to_contain_text("France", timeout=3_000)


class FakeServer:
    """The page's Socket.IO link, answered by the test (Engine.IO v4 / Socket.IO v5 text)."""

    def __init__(self) -> None:
        self.sockets: list[WebSocketRoute] = []
        self.tick = 0

    async def attach(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"/socket\.io/"), self._connected)

    def _connected(self, ws: WebSocketRoute) -> None:
        handshake = {"sid": "e", "upgrades": [], "pingInterval": 25000, "pingTimeout": 60000}
        ws.send("0" + json.dumps({**handshake, "maxPayload": 100000}))
        ws.on_message(lambda message: self._message(ws, message))

    def _message(self, ws: WebSocketRoute, message: str | bytes) -> None:
        if message == "40" or (isinstance(message, str) and message.startswith("40{")):
            ws.send('40{"sid":"s"}')
            self.sockets.append(ws)
            self.state(online=2, cps=4.8)

    def state(self, *, online: int, cps: float) -> None:
        self.tick += 1
        body = {"global": 10, "clicks": 10, "online": online, "cps": cps, "users": 1, "top": []}
        for ws in self.sockets:
            ws.send("42" + json.dumps(["state", {**body, "tick": self.tick}]))

    async def drop(self) -> None:
        sockets, self.sockets = self.sockets, []
        for ws in sockets:
            await ws.close(code=1012)


async def test_clicks_per_second_wording_and_stale_figures_while_reconnecting(
    stack: Stack, chrome: Chrome
) -> None:
    instance = stack.instance()
    page = await chrome.page(instance)
    server = FakeServer()
    await server.attach(page)
    await page.goto("/")
    pulse = page.locator("#pulse")
    await expect(status(page)).to_have_text("Live")
    await expect(pulse).to_contain_text("4.8 clicks/s")
    await expect(pulse).not_to_have_class(re.compile("stale"))
    live_dot = await page.locator(".live-dot").evaluate(
        "(d) => getComputedStyle(d).backgroundColor"
    )

    for cps, text in [
        (1.0, "1 click/s"),
        (0.0, "0 clicks/s"),
        (2.0, "2 clicks/s"),
        (1.04, "1 click/s"),
    ]:
        server.state(online=2, cps=cps)
        await expect(page.locator(".pulse-cps")).to_have_text(re.compile(rf"^\s*{text}\s*$"))

    await server.drop()  # the server goes away; socket.io reconnects (to the fake again)
    await expect(status(page)).to_contain_text("Reconnecting")
    await expect(pulse).to_have_class(re.compile("stale"))
    await expect(pulse).to_have_attribute("aria-label", "Last known, reconnecting")
    stale_dot = await page.locator(".live-dot").evaluate(
        "(d) => getComputedStyle(d).backgroundColor"
    )
    assert stale_dot != live_dot, "the dot stays green while reconnecting"
    await expect(status(page)).to_have_text("Live", timeout=10_000)
    await expect(pulse).not_to_have_class(re.compile("stale"))
