"""Headless Chromium for the browser tests and the screenshot script: launch it, watch pages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.async_api import Browser as PlaywrightBrowser
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    WebSocket,
)

# Debian's chromium: Playwright's own browser downloads are not used (or reachable) here.
CHROMIUM = Path(os.environ.get("CLICKKY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}


def chromium_path() -> Path:
    """The Chromium binary, or a clear reason why the browser tests cannot run."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        raise RuntimeError(
            f"The browser tests drive Chromium at {CHROMIUM}, and it is not there. "
            "Install it with `apt-get install chromium` (or point CLICKKY_CHROMIUM at one)."
        )
    return CHROMIUM


async def launch(playwright: Playwright) -> PlaywrightBrowser:
    return await playwright.chromium.launch(
        executable_path=str(chromium_path()), args=CHROMIUM_ARGS, headless=True
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@dataclass
class Watch:
    """Everything pages did that they must not: requests to other hosts, errors, CSP refusals."""

    allowed: set[str]
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0

    def allow(self, base_url: str) -> None:
        self.allowed.add(_origin(base_url))

    def context(self, context: BrowserContext) -> BrowserContext:
        """Watch every page of a context, including its websockets."""
        context.on("request", lambda request: self._request(request.url))
        context.on("page", self.page)
        return context

    def page(self, page: Page) -> None:
        page.on("websocket", lambda ws: self._websocket(ws))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _request(self, url: str) -> None:
        self.requests += 1
        if url.startswith(("data:", "blob:", "about:")):
            return
        if _origin(url) not in self.allowed:
            self.foreign.append(url)

    def _websocket(self, ws: WebSocket) -> None:
        self._request(ws.url)

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.errors.append(f"CSP: {text}")

    def assert_clean(self) -> None:
        assert self.requests > 0, "the watch saw no request at all: it is not attached"
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        assert not self.errors, f"page errors: {self.errors}"
