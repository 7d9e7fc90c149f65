"""Classification of real User-Agent strings, country headers, and the breakdown API."""

from __future__ import annotations

import httpx
import pytest

from service.breakdown import Profile, classify, country_of
from tests.support import join

CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.144 Mobile Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1"
)
FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
CURL = "curl/8.5.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("user_agent", "device", "browser", "platform"),
    [
        (CHROME_ANDROID, "mobile", "Chrome Mobile", "Android"),
        (SAFARI_IPHONE, "mobile", "Mobile Safari", "iOS"),
        (FIREFOX_LINUX, "desktop", "Firefox", "Linux"),
        (CURL, "bot", "curl", "unknown"),
        (GOOGLEBOT, "bot", "Googlebot", "unknown"),
        (IPAD, "tablet", "Mobile Safari", "iOS"),
        (ANDROID_TABLET, "tablet", "Chrome", "Android"),
        ("", "bot", "unknown", "unknown"),
    ],
)
def test_real_user_agents_land_in_the_right_buckets(
    user_agent: str, device: str, browser: str, platform: str
) -> None:
    assert classify(user_agent) == Profile(device, browser, platform, "unknown")


@pytest.mark.parametrize(
    ("headers", "country"),
    [
        ({"x-country": "de"}, "DE"),
        ({"cf-ipcountry": "JP"}, "JP"),
        ({"x-country": "US", "cf-ipcountry": "JP"}, "US"),
        ({"cf-ipcountry": "XX"}, "unknown"),
        ({"cf-ipcountry": "T1"}, "unknown"),
        ({"x-country": "<script>"}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_country_comes_from_the_load_balancer_header(headers: dict[str, str], country: str) -> None:
    assert country_of(headers) == country


async def test_breakdown_api_counts_http_clicks_by_dimension(
    client: httpx.AsyncClient,
) -> None:
    token = await join(client, "Brea")
    auth = {"Authorization": f"Bearer {token}"}
    phone = {**auth, "User-Agent": SAFARI_IPHONE, "X-Country": "NZ"}
    laptop = {**auth, "User-Agent": FIREFOX_LINUX, "CF-IPCountry": "FR"}
    assert (await client.post("/api/click", json={"n": 3}, headers=phone)).status_code == 200
    assert (await client.post("/api/click", json={"n": 2}, headers=laptop)).status_code == 200
    device = (await client.get("/api/stats/breakdown?dimension=device&window=day")).json()
    assert device == {
        "dimension": "device",
        "window": "day",
        "entries": [{"value": "mobile", "clicks": 3}, {"value": "desktop", "clicks": 2}],
    }
    week = (await client.get("/api/stats/breakdown?dimension=country&window=week")).json()
    assert week["entries"] == [{"value": "NZ", "clicks": 3}, {"value": "FR", "clicks": 2}]
    countries = (await client.get("/api/countries")).json()
    assert countries == {
        "entries": [{"country": "NZ", "clicks": 3}, {"country": "FR", "clicks": 2}]
    }


@pytest.mark.parametrize(
    "query", ["dimension=shoe&window=day", "window=day", "dimension=device&window=hour"]
)
async def test_breakdown_api_refuses_bad_queries(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/stats/breakdown?{query}")
    assert response.status_code == 422
    assert response.json()["error"] in {"invalid_dimension", "invalid_window"}
