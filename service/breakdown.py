"""Who clicks from where: device type, browser, platform and country of a connection.

A connection is classified once (at connect, or per distinct User-Agent for
HTTP clicks, through a cache), never per click. Parsing is ua-parser's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ua_parser import parse

DIMENSIONS = ("device", "browser", "platform", "country")
UNKNOWN = "unknown"
_COUNTRY = re.compile(r"^[A-Z]{2}$")
# Phones say "Mobile" in their User-Agent; Android tablets leave it out.
_TABLET_DEVICES = ("ipad", "tablet", "kindle", "nexus 7", "nexus 9", "nexus 10")
_MOBILE_OS = ("iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS")
_MAX_VALUE = 64


@dataclass(frozen=True)
class Profile:
    """The four dimensions of one connection, as stored in the per-day counters."""

    device: str = UNKNOWN
    browser: str = UNKNOWN
    platform: str = UNKNOWN
    country: str = UNKNOWN

    def values(self) -> tuple[str, str, str, str]:
        return (self.device, self.browser, self.platform, self.country)


def country_of(headers: dict[str, str] | None) -> str:
    """The country the load balancer put in X-Country or CF-IPCountry, else "unknown"."""
    if not headers:
        return UNKNOWN
    raw = (headers.get("x-country") or headers.get("cf-ipcountry") or "").strip().upper()
    # Cloudflare sends XX when it does not know; T1 (Tor) fails the pattern.
    return raw if _COUNTRY.match(raw) and raw != "XX" else UNKNOWN


@functools.lru_cache(maxsize=4096)
def classify(user_agent: str, country: str = UNKNOWN) -> Profile:
    """Classify a User-Agent (cached: a busy service sees few distinct ones)."""
    result = parse(user_agent[:1024]) if user_agent else None
    browser = result.user_agent.family if result and result.user_agent else None
    platform = result.os.family if result and result.os else None
    device_family = result.device.family if result and result.device else None
    return Profile(
        device=_device_type(user_agent, browser, platform, device_family),
        browser=(browser or UNKNOWN)[:_MAX_VALUE],
        platform=(platform or UNKNOWN)[:_MAX_VALUE],
        country=country,
    )


def _device_type(
    user_agent: str, browser: str | None, platform: str | None, device: str | None
) -> str:
    if device == "Spider" or (browser and "headless" in browser.lower()):
        return "bot"
    if platform is None and device is None:
        return "bot"  # a library or a tool (curl, python-requests): no OS, no device
    family = (device or "").lower()
    if any(name in family for name in _TABLET_DEVICES):
        return "tablet"
    if platform == "Android" and "Mobile" not in user_agent:
        return "tablet"
    if platform in _MOBILE_OS or "Mobile" in user_agent:
        return "mobile"
    return "desktop"


def warm_up() -> None:
    """Compile the parser's rules now, not on the first player's connect (~150 ms)."""
    classify("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
