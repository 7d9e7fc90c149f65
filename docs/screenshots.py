"""Regenerate the README screenshots of the play page and the dashboard.

Starts its own instance on Redis (REDIS_URL, default the local one) under a throwaway
key prefix and SQLite file, fills it with a believable room of players, and photographs
both pages in headless Chromium at desktop (1280x800) and phone (390x844) widths:

    .venv/bin/python docs/screenshots.py        # writes docs/{play,dashboard}-{desktop,phone}.png

The web pages must be built first (`make web`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
import socketio
from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.keys import Keys  # noqa: E402
from tests.system.browser_support import DESKTOP, PHONE, launch  # noqa: E402

DOCS = ROOT / "docs"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "screenshots-admin-0123456789abcdef"
ME = "Sam"
SETTLE_S = 30

# (name, count, country, user agent): a small international room.
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36"
)
MAC_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Safari/605.1.15"
)
WIN_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
LINUX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
PLAYERS = [
    ("Mariko", 4812, "JP", PHONE_UA),
    ("jonas_b", 3977, "DE", WIN_UA),
    ("Priya", 3550, "IN", ANDROID_UA),
    ("Lukas.K", 2890, "DE", LINUX_UA),
    ("Amara", 2311, "NG", ANDROID_UA),
    ("Chen Wei", 1987, "CN", WIN_UA),
    ("sofia-r", 1630, "BR", PHONE_UA),
    ("Tomás", 1402, "AR", MAC_UA),
    ("Noor", 1180, "AE", PHONE_UA),
    ("Ola", 954, "NO", MAC_UA),
    ("Kwame", 811, "GH", ANDROID_UA),
    ("Elif", 640, "TR", WIN_UA),
    ("Dmitri", 512, "RU", LINUX_UA),
    ("Aiyana", 377, "US", PHONE_UA),
    ("Marta", 245, "PL", WIN_UA),
    ("Oliver", 130, "GB", MAC_UA),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def instance(prefix: str) -> Iterator[str]:
    """One real instance on a free port; stopped (and its keys removed) afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "REDIS_URL": REDIS_URL,
            "KEY_PREFIX": prefix,
            "DATABASE_URL": f"sqlite:///{tmp}/shots.db",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "RATE_LIMIT_CPS": "100000",  # the seeding clicks fast; people never see this
            "JOIN_RATE_PER_MIN": "100000",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "text",
        }
        args = [sys.executable, "-m", "uvicorn", "service.app:app", "--port", str(port)]
        args += ["--no-access-log", "--log-level", "warning"]
        proc = subprocess.Popen(args, env=env, cwd=ROOT)
        # A worker too, so the dashboard's snapshot card has something to say.
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"], env={**env, "SNAPSHOT_INTERVAL_S": "5"}, cwd=ROOT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the instance did not become ready")
                time.sleep(0.2)
            yield url
        finally:
            for child in (worker, proc):
                child.terminate()
                child.wait(15)
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


async def seed(url: str, prefix: str) -> dict[str, str]:
    """Players with real clicks (for the breakdowns) and their final counts; returns tokens."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tokens: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for name, count, country, agent in [*PLAYERS, (ME, 1245, "FR", WIN_UA)]:
            joined = await http.post("/api/join", json={"username": name})
            joined.raise_for_status()
            tokens[name] = joined.json()["token"]
            headers = {
                "Authorization": f"Bearer {tokens[name]}",
                "User-Agent": agent,
                "X-Country": country,
            }
            for _ in range(max(1, count // 200)):
                clicked = await http.post("/api/click", json={"n": 50}, headers=headers)
                clicked.raise_for_status()
            edited = await http.put(
                f"/api/admin/users/{name}", json={"count": count}, headers=admin
            )
            edited.raise_for_status()
    # The chart's history: a day-and-night curve of clicks per minute over the last week.
    now = int(time.time()) // 60 * 60
    minutes: dict[Any, Any] = {}  # redis-py's mapping type is stricter than it needs
    # From this minute back (the seeding's own clicks are replaced): a week of minutes.
    for back in range(7 * 24 * 60):
        minute = now - back * 60
        hour = (minute // 3600) % 24
        daylight = 0.55 + 0.45 * math.sin((hour - 9) / 24 * 2 * math.pi)
        minutes[str(minute)] = int(max(0, random.gauss(160 * daylight, 18)))
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(Keys(prefix).minutes, mapping=minutes)
    client.close()
    return tokens


async def background_clicks(url: str, tokens: dict[str, str], stop: asyncio.Event) -> None:
    """A few players keep clicking, so the room looks alive (clicks/s, the sparkline)."""
    names = ["Mariko", "jonas_b", "Priya", "Amara"]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while not stop.is_set():
            name = random.choice(names)
            await http.post(
                "/api/click",
                json={"n": random.randint(1, 3)},
                headers={"Authorization": f"Bearer {tokens[name]}", "User-Agent": PHONE_UA},
            )
            await asyncio.sleep(random.uniform(0.2, 0.8))  # about 3 clicks a second


@contextlib.asynccontextmanager
async def alive(url: str, tokens: dict[str, str]) -> AsyncIterator[None]:
    """Background clicking, and a few people watching (online)."""
    stop = asyncio.Event()
    task = asyncio.create_task(background_clicks(url, tokens, stop))
    watchers = [socketio.AsyncClient(reconnection=False) for _ in range(6)]
    for watcher in watchers:
        await watcher.connect(url, transports=["websocket"])
    try:
        yield
    finally:
        stop.set()
        await task
        for watcher in watchers:
            await watcher.disconnect()


async def play_page(page: Page, url: str, token: str) -> None:
    """Open the play page as an existing player, and click a little."""
    await page.goto(url + "/")
    await page.evaluate(
        "([username, token]) =>"
        " localStorage.setItem('clickky.player', JSON.stringify({username, token}))",
        [ME, token],
    )
    await page.reload()
    await page.get_by_role("button", name="Click!").wait_for()
    await page.locator("#status[data-state='live']").wait_for()
    for _ in range(6):
        await page.get_by_role("button", name="Click!").click()
        await page.wait_for_timeout(120)
    await page.mouse.move(0, 0)


async def dashboard(page: Page, url: str) -> None:
    await page.goto(url + "/dashboard")
    await page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#chart canvas").wait_for()
    await page.locator("#users-body tr").first.wait_for()
    await page.wait_for_timeout(1500)
    await page.mouse.move(0, 0)


async def main() -> None:
    prefix = f"shots-{uuid.uuid4().hex[:8]}:"
    with instance(prefix) as url:
        tokens = await seed(url, prefix)
        async with async_playwright() as playwright, alive(url, tokens):
            browser = await launch(playwright)
            pages: dict[str, Page] = {}
            for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                phone = label == "phone"
                context = await browser.new_context(
                    viewport=viewport,
                    device_scale_factor=2 if phone else 1,
                    is_mobile=phone,
                    has_touch=phone,
                    user_agent=PHONE_UA if phone else WIN_UA,
                    locale="en-US",
                    reduced_motion="reduce",  # no half-finished animations in a still
                )
                pages[label] = await context.new_page()
            await asyncio.gather(*(play_page(page, url, tokens[ME]) for page in pages.values()))
            await asyncio.sleep(SETTLE_S)  # let the clicks/s sparkline fill up
            for label, page in pages.items():
                await page.screenshot(path=DOCS / f"play-{label}.png", full_page=label == "phone")
                await dashboard(page, url)
                await page.screenshot(path=DOCS / f"dashboard-{label}.png", full_page=True)
                print(f"wrote docs/play-{label}.png and docs/dashboard-{label}.png")
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
