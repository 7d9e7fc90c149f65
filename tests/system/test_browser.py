"""The play page and the dashboard in real headless Chromium, against real instances."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from tests.support import Instance, Stack, eventually
from tests.system.browser_support import DESKTOP, PHONE, Watch, chromium_path, launch

pytestmark = pytest.mark.system

ADMIN_TOKEN = "admin-test-token-0123456789abcdef"  # the stack fixture's


class Chrome:
    """One headless Chromium per test; every context it opens is watched."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.watch = Watch(set())

    async def page(self, instance: Instance, *, phone: bool = False) -> Page:
        """A fresh browser profile (own storage) on one instance."""
        self.watch.allow(instance.url)
        context = await self.browser.new_context(
            viewport=PHONE if phone else DESKTOP,
            is_mobile=phone,
            has_touch=phone,
            locale="en-US",
            base_url=instance.url,
        )
        context.set_default_timeout(10_000)
        self.watch.context(context)
        return await context.new_page()


@pytest.fixture
async def chrome() -> AsyncIterator[Chrome]:
    try:
        chromium_path()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        chrome = Chrome(browser)
        try:
            yield chrome
        finally:
            await browser.close()
    chrome.watch.assert_clean()


# -- helpers ------------------------------------------------------------------------------
def count_of(page: Page) -> Locator:
    return page.get_by_test_id("me-count")


def button(page: Page) -> Locator:
    return page.get_by_role("button", name="Click!")


def status(page: Page) -> Locator:
    return page.locator("#status")


async def join(page: Page, name: str) -> None:
    """Open the play page and join through its form."""
    await page.goto("/")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Play").click()
    await expect(page.get_by_test_id("me-name")).to_have_text(name)
    await expect(status(page)).to_have_text("Live")


async def server_user(instance: Instance, name: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=instance.url, timeout=5) as http:
        response = await http.get(f"/api/users/{name}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def server_count(instance: Instance, name: str) -> int | None:
    user = await server_user(instance, name)
    return None if user is None else int(user["count"])


async def wait_counted(instance: Instance, name: str, expected: int, timeout: float = 10) -> None:
    """Wait until the server has counted exactly `expected` clicks for this player."""

    async def done() -> bool:
        return await server_count(instance, name) == expected

    await eventually(done, timeout=timeout, interval=0.02)


async def http_player(instance: Instance, name: str, clicks: int) -> None:
    """A player who joins and clicks over HTTP (n at most 20 per second)."""
    async with httpx.AsyncClient(base_url=instance.url, timeout=5) as http:
        joined = await http.post("/api/join", json={"username": name})
        assert joined.status_code == 201, joined.text
        auth = {"Authorization": f"Bearer {joined.json()['token']}"}
        while clicks:
            n = min(clicks, 20)
            response = await http.post("/api/click", json={"n": n}, headers=auth)
            if response.status_code == 429:
                await asyncio.sleep(response.json()["retry_after_ms"] / 1000)
                continue
            assert response.status_code == 200, response.text
            clicks -= n


# -- the play page ------------------------------------------------------------------------
async def test_join_and_twenty_clicks_show_twenty_everywhere(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    page = await chrome.page(instance)
    await join(page, "Ann")
    for _ in range(20):
        await button(page).click()

    await wait_counted(instance, "Ann", 20)
    await expect(count_of(page)).to_have_text("20")
    await expect(page.get_by_test_id("global")).to_have_text("20")
    mine = page.get_by_test_id("board").locator("li.is-me")
    await expect(mine).to_have_count(1)
    await expect(mine.locator(".name")).to_have_text("Ann")
    await expect(mine.locator(".count")).to_have_text("20")
    await expect(page.get_by_test_id("me-rank")).to_have_text("#1")
    await expect(status(page)).to_have_text("Live")


async def test_two_instances_see_each_others_clicks_within_a_second(
    stack: Stack, chrome: Chrome
) -> None:
    first, second = stack.instance(), stack.instance()
    left = await chrome.page(first)
    right = await chrome.page(second)
    await join(left, "Lefty")
    await join(right, "Righty")

    for clicker, watcher, name, instance, clicks in (
        (left, right, "Lefty", first, 4),
        (right, left, "Righty", second, 6),
    ):
        for _ in range(clicks):
            await button(clicker).click()
        await wait_counted(instance, name, clicks)
        counted = time.monotonic()
        row = watcher.get_by_test_id("board").locator("li", has_text=name)
        await expect(row.locator(".count")).to_have_text(str(clicks), timeout=1000)
        assert time.monotonic() - counted < 1.0
    await expect(left.get_by_test_id("global")).to_have_text("10", timeout=1000)
    await expect(right.get_by_test_id("global")).to_have_text("10", timeout=1000)


async def test_a_taken_name_is_refused_in_the_page(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    await http_player(instance, "Taken", 0)
    page = await chrome.page(instance, phone=True)
    await page.goto("/")
    field = page.get_by_label("Your name")

    await field.fill("taken")  # uniqueness ignores case
    await page.get_by_role("button", name="Play").click()
    error = page.locator("#join-error")
    await expect(error).to_contain_text("is taken")
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(button(page)).to_be_hidden()

    await field.fill("no/slashes")
    await page.get_by_role("button", name="Play").click()
    await expect(error).not_to_contain_text("is taken")
    await expect(error).not_to_be_empty()
    assert await page.evaluate("localStorage.getItem('clickky.player')") is None
    # The phone layout does not scroll sideways.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width

    await field.fill("Fresh name")
    await page.get_by_role("button", name="Play").click()
    await expect(page.get_by_test_id("me-name")).to_have_text("Fresh name")
    await expect(error).to_be_empty()


async def test_a_reload_keeps_the_player_and_keys_click_once(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    page = await chrome.page(instance)
    await join(page, "Keys")

    # Space and Enter click once per press; a held key's repeats do not click.
    await page.keyboard.press("Space")
    await page.keyboard.press("Enter")
    await page.keyboard.down("Space")
    await page.keyboard.down("Space")  # a repeat
    await page.keyboard.down("Space")  # a repeat
    await page.keyboard.up("Space")
    await wait_counted(instance, "Keys", 3)
    await expect(count_of(page)).to_have_text("3")

    await page.reload()
    await expect(page.get_by_test_id("me-name")).to_have_text("Keys")
    await expect(count_of(page)).to_have_text("3")
    await expect(page.locator("#join")).to_be_hidden()
    await expect(status(page)).to_have_text("Live")
    await button(page).click()
    await wait_counted(instance, "Keys", 4)

    # A new tab of the same browser plays on as the same player.
    tab = await page.context.new_page()
    await tab.goto("/")
    await expect(tab.get_by_test_id("me-name")).to_have_text("Keys")
    await expect(count_of(tab)).to_have_text("4")
    await expect(status(tab)).to_have_text("Live")


async def test_online_moves_when_a_tab_closes(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    watcher = await chrome.page(instance)
    await watcher.goto("/")
    online = watcher.get_by_test_id("online")
    await expect(online).to_have_text("1")

    other = await chrome.page(instance)
    await other.goto("/")
    await expect(online).to_have_text("2")
    await expect(other.get_by_test_id("online")).to_have_text("2")

    await other.close()
    await expect(online).to_have_text("1")


@pytest.mark.timeout(150)
async def test_a_killed_instance_comes_back_and_no_click_is_lost(
    stack: Stack, chrome: Chrome
) -> None:
    instance = stack.instance()
    page = await chrome.page(instance)
    await join(page, "Phoenix")
    for _ in range(5):
        await button(page).click()
    await wait_counted(instance, "Phoenix", 5)
    await expect(count_of(page)).to_have_text("5")

    instance.proc.kill()
    await expect(status(page)).to_contain_text("Reconnecting")
    for _ in range(3):
        await button(page).click()
    await expect(status(page)).to_contain_text("3 clicks queued")
    await expect(count_of(page)).to_have_text("8")  # shown at once, sent later

    await asyncio.to_thread(stack.instance, port=instance.port)
    await expect(status(page)).to_have_text("Live", timeout=20_000)
    await wait_counted(instance, "Phoenix", 8)
    await expect(count_of(page)).to_have_text("8")
    await expect(page.get_by_test_id("global")).to_have_text("8")
    await button(page).click()
    await wait_counted(instance, "Phoenix", 9)
    await expect(count_of(page)).to_have_text("9")


async def test_clicks_over_the_rate_limit_are_rolled_back_and_said(
    stack: Stack, chrome: Chrome
) -> None:
    instance = stack.instance(extra={"RATE_LIMIT_CPS": "5"})
    page = await chrome.page(instance)
    await join(page, "Speedy")
    for _ in range(16):
        await button(page).click(delay=0)
    await expect(page.get_by_test_id("notice")).to_contain_text("did not count")

    async def settled() -> int | None:
        counted = await server_count(instance, "Speedy")
        shown = await count_of(page).inner_text()
        queue = await status(page).inner_text()
        return counted if shown == str(counted) and queue.strip() == "Live" else None

    counted = await eventually(settled, timeout=10)
    assert 1 <= counted < 16, counted
    await expect(page.get_by_test_id("global")).to_have_text(str(counted))


async def admin_set(instance: Instance, name: str, count: int) -> None:
    async with httpx.AsyncClient(base_url=instance.url, timeout=5) as http:
        response = await http.put(
            f"/api/admin/users/{name}",
            json={"count": count},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert response.status_code == 200, response.text


async def test_milestones_are_celebrated_for_the_right_people(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    await http_player(instance, "Whale", 0)
    await admin_set(instance, "Whale", 900)
    player = await chrome.page(instance)
    await join(player, "Lucky")
    await admin_set(instance, "Lucky", 99)
    await expect(count_of(player)).to_have_text("99")  # the admin edit reaches the page
    spectator = await chrome.page(instance)
    await spectator.goto("/")
    await expect(spectator.get_by_test_id("global")).to_have_text("999")

    await button(player).click()  # Lucky reaches 100, the world reaches 1,000
    toasts = player.locator("#toasts")
    await expect(toasts).to_contain_text("You reached 100 clicks!")
    await expect(toasts).to_contain_text("1,000 clicks worldwide!")
    await expect(spectator.locator("#toasts")).to_contain_text(
        "1,000 clicks worldwide! The one that did it: Lucky."
    )
    await expect(spectator.get_by_test_id("global")).to_have_text("1,000")
    await expect(spectator.locator("#toasts")).not_to_contain_text("You reached")


# -- the dashboard ----------------------------------------------------------------------
@pytest.mark.timeout(150)
async def test_dashboard_signs_in_charts_searches_edits_and_deletes(
    stack: Stack, chrome: Chrome
) -> None:
    instance, other_instance = stack.instance(), stack.instance()
    await http_player(instance, "Bystander", 7)
    await http_player(instance, "Vicky", 2)  # shares a prefix with the victim's name
    player = await chrome.page(instance)
    await join(player, "Victim")
    for _ in range(3):
        await button(player).click()
    await wait_counted(instance, "Victim", 3)

    dash = await chrome.page(instance)
    await dash.goto("/dashboard")
    await expect(dash.get_by_test_id("users")).to_be_hidden()  # nothing private yet
    await dash.get_by_label("Admin token").fill("not-the-token")
    await dash.get_by_role("button", name="Sign in").click()
    await expect(dash.locator("#signin-error")).to_contain_text("not accepted")
    await expect(dash.get_by_test_id("users")).to_be_hidden()
    await dash.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await dash.get_by_role("button", name="Sign in").click()

    await expect(dash.get_by_test_id("card-users")).to_have_text("3")
    await expect(dash.get_by_test_id("card-global")).to_have_text("12")
    await expect(dash.get_by_test_id("card-avg")).to_have_text("4")
    await expect(dash.get_by_test_id("card-online")).to_have_text(re.compile(r"^[1-9]"))
    chart = dash.get_by_test_id("chart")
    await expect(chart.locator("canvas")).to_be_visible()
    await expect(chart.locator(".u-axis")).to_have_count(2)  # uPlot draws both axes
    await expect(chart).to_have_attribute("aria-label", re.compile("per minute over the last hour"))
    await expect(dash.locator("#chart-summary")).to_contain_text("12 clicks in the last hour")
    await expect(dash.locator("#breakdowns")).to_contain_text("Devices")
    await dash.get_by_role("group", name="Chart window").get_by_role("button", name="Day").click()
    await expect(chart).to_have_attribute("aria-label", re.compile("15 minutes over the last 24"))
    await expect(dash.locator("#chart-summary")).to_contain_text("12 clicks in the last 24 hours")

    # The whole board is in the table, and search narrows it.
    rows = dash.get_by_test_id("users").locator("tbody tr")
    await expect(rows).to_have_count(3)
    await dash.get_by_label("Search players by name").fill("vic")
    await expect(rows).to_have_count(2)
    await dash.get_by_label("Search players by name").fill("victim")
    await expect(rows).to_have_count(1)
    victim = rows.filter(has_text="Victim")

    # A second dashboard, on another instance, follows the changes.
    watcher = await chrome.page(other_instance)
    await watcher.goto("/dashboard")
    await watcher.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await watcher.get_by_role("button", name="Sign in").click()
    watched = watcher.get_by_test_id("users").locator("tbody tr", has_text="Victim")
    await expect(watched.locator(".count")).to_have_text("3")

    await victim.get_by_role("button", name="Set the count of Victim").click()
    await dash.get_by_label("New count for Victim").fill("42")
    await dash.get_by_role("button", name="Save").click()
    await expect(victim.locator(".count")).to_have_text("42")
    await expect(count_of(player)).to_have_text("42")  # the player's page changes
    await expect(player.get_by_test_id("notice")).to_contain_text("admin set your count to 42")
    await expect(watched.locator(".count")).to_have_text("42")
    await expect(dash.get_by_test_id("card-global")).to_have_text("51")
    assert await server_count(instance, "Victim") == 42

    await victim.get_by_role("button", name="Delete Victim").click()
    await dash.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(rows).to_have_count(0)
    await expect(dash.get_by_test_id("card-global")).to_have_text("9")
    await expect(dash.get_by_test_id("card-users")).to_have_text("2")
    await expect(watched).to_have_count(0)
    await expect(player.locator("#join")).to_be_visible()
    await expect(player.locator("#join-error")).to_contain_text("removed your player")
    assert await server_user(instance, "Victim") is None


async def test_pages_load_nothing_from_other_hosts(stack: Stack, chrome: Chrome) -> None:
    instance = stack.instance()
    page = await chrome.page(instance, phone=True)
    response = await page.goto("/")
    assert response is not None and response.ok
    assert "default-src 'self'" in (await response.header_value("content-security-policy") or "")
    await page.get_by_label("Your name").fill("Homebody")
    await page.get_by_role("button", name="Play").click()
    await button(page).click()
    await wait_counted(instance, "Homebody", 1)

    dash = await chrome.page(instance)
    await dash.goto("/dashboard")
    await dash.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await dash.get_by_role("button", name="Sign in").click()
    await expect(dash.get_by_test_id("chart").locator("canvas")).to_be_visible()
    await expect(dash.get_by_test_id("card-global")).to_have_text("1")

    # Every script, style and icon the pages name is served from /static/ on this host.
    for view in (page, dash):
        urls = await view.evaluate(
            """[...document.querySelectorAll('script[src], link[href]')]
                .map((node) => node.src || node.href)"""
        )
        assert urls, "the page names no assets"
        for url in urls:
            assert url.startswith(f"{instance.url}/static/"), url
    assert chrome.watch.requests >= 8  # pages, assets, API calls and websockets were seen
    chrome.watch.assert_clean()


async def test_dashboard_feed_shows_joins_edits_and_milestones_live(
    stack: Stack, chrome: Chrome
) -> None:
    dash_instance, player_instance = stack.instance(), stack.instance()
    dash = await chrome.page(dash_instance)
    await dash.goto("/dashboard")
    await dash.get_by_label("Admin token").fill(ADMIN_TOKEN)
    await dash.get_by_role("button", name="Sign in").click()
    feed = dash.get_by_test_id("feed")
    await expect(dash.get_by_test_id("card-users")).to_have_text("0")
    await expect(dash.locator("#status")).to_contain_text("Live")

    # Every frame the player's socket receives, to prove the feed never reaches it.
    player = await chrome.page(player_instance)
    frames: list[str] = []
    player.on(
        "websocket",
        lambda ws: ws.on("framereceived", lambda data: frames.append(str(data))),
    )
    await join(player, "Feedy")
    await expect(feed.locator("li").first).to_contain_text("Feedy joined")

    await admin_set(player_instance, "Feedy", 999)
    await expect(feed.locator("li").first).to_contain_text(
        "admin set Feedy from 0 to 999 from 127.0.0.1"
    )
    await expect(count_of(player)).to_have_text("999")
    await button(player).click()
    await expect(feed.locator("li").first).to_contain_text("The global count passed 1,000")
    await expect(feed.locator("li")).to_have_count(3)
    assert await server_count(player_instance, "Feedy") == 1000

    # The player's socket saw ticks and the milestone, but no activity event. The
    # milestone reaches the player's instance over the bus, so it may land after the feed.
    assert any('"state"' in frame for frame in frames)
    await eventually(lambda: any('"milestone"' in frame for frame in frames), timeout=5)
    assert not any('"activity"' in frame for frame in frames)

    # After a reload the history comes back from the server, newest first, a page at a
    # time (30 entries): the oldest entry is one "Older activity" click away.
    for i in range(30):
        await http_player(dash_instance, f"Later{i}", 0)
    await expect(feed.locator("li").first).to_contain_text("Later29 joined")
    await dash.reload()
    await expect(feed.locator("li")).to_have_count(30)
    await expect(feed.locator("li").first).to_contain_text("Later29 joined")
    await dash.get_by_role("button", name="Older activity").click()
    await expect(feed.locator("li")).to_have_count(33)
    await expect(feed.locator("li").last).to_contain_text("Feedy joined")
    await expect(dash.get_by_role("button", name="Older activity")).to_be_hidden()
