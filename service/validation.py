"""Input validators shared by the HTTP routes and the Socket.IO handlers."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from service.breakdown import DIMENSIONS
from service.errors import ApiError, invalid

MAX_USERNAME = 32
# Normalising can lengthen a name (NFKC turns U+FDFA into 18 letters); the store's key
# column holds 191 characters, so three times the display length is the ceiling.
MAX_CANONICAL = 3 * MAX_USERNAME
MAX_CLICK_BATCH = 50
MAX_PAGE = 200
MAX_SEARCH = 50
# Bucket widths keep every window to at most a few hundred points.
WINDOWS = {"hour": (3600, 60), "day": (86400, 900), "week": (7 * 86400, 3600)}
_PUNCTUATION = {" ", "_", "-", "."}
_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Counts live in sorted-set scores, doubles exact up to 2**53; an admin may set a
# count far below that, so clicks on top of it stay exact.
_MAX_COUNT = 10**12


def canonical(name: str) -> str:
    """The form names are compared in: uniqueness ignores case (and Unicode width forms)."""
    return unicodedata.normalize("NFKC", name).casefold()


def username(raw: Any) -> tuple[str, str]:
    """Return (display, canonical) for a valid name or raise 422 saying what is wrong."""
    if not isinstance(raw, str):
        raise invalid("invalid_username", "username must be a string.")
    display = unicodedata.normalize("NFC", raw).strip()
    if not display:
        raise invalid("invalid_username", "username must not be empty.")
    if len(display) > MAX_USERNAME:
        raise invalid("invalid_username", f"username must be at most {MAX_USERNAME} characters.")
    for index, char in enumerate(display):
        category = unicodedata.category(char)
        # Marks (M*) carry vowels and accents in many scripts; they may follow a letter.
        allowed = (
            category[0] == "L"
            or category == "Nd"
            or char in _PUNCTUATION
            or (category[0] == "M" and index > 0)
        )
        if not allowed:
            raise invalid(
                "invalid_username",
                f"username may hold letters, digits, spaces and _ - . only, not {char!r}.",
            )
    canon = canonical(display)
    if len(canon) > MAX_CANONICAL:
        raise invalid("invalid_username", "username is too long once normalised.")
    return display, canon


def strict_int(value: Any) -> int | None:
    """An int that is really an int: JSON true is not 1 and 2.0 is not 2."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def click_n(payload: Any, limit_cps: int = MAX_CLICK_BATCH) -> int:
    """The `n` of a click body: absent means 1, else an int 1..50 (and within the rate
    limit: a batch bigger than a second's allowance could never be accepted)."""
    if payload is None:
        return 1
    if not isinstance(payload, dict):
        raise invalid("invalid_n", 'click body must be an object like {"n": 1}.')
    if "n" not in payload:
        return 1
    n = strict_int(payload["n"])
    if n is None or not 1 <= n <= MAX_CLICK_BATCH:
        raise invalid("invalid_n", f"n must be an integer from 1 to {MAX_CLICK_BATCH}.")
    if n > limit_cps:
        raise invalid(
            "invalid_n", f"n must be at most {limit_cps}, the clicks a player may make a second."
        )
    return n


def click_id(raw: Any) -> str:
    """A click batch's idempotency id: 1-64 of A-Z a-z 0-9 _ - ("" when absent).

    Over HTTP it is the Idempotency-Key header, which the IETF draft defines as a
    structured-field string ("..."); a bare value is accepted too.
    """
    if raw is None:
        return ""
    if isinstance(raw, str) and len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    if not isinstance(raw, str) or not _CLICK_ID.fullmatch(raw):
        raise invalid("invalid_id", "id must be 1 to 64 of the characters A-Z a-z 0-9 _ -.")
    return raw


def click_body(payload: Any, limit_cps: int = MAX_CLICK_BATCH) -> tuple[int, str]:
    """The `n` and `id` of a Socket.IO click body ({"n": 3, "id": "..."}, both optional)."""
    n = click_n(payload, limit_cps)
    return n, click_id(payload.get("id")) if isinstance(payload, dict) else ""


def _query_int(query: Any, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise invalid("invalid_paging", f"{name} must be a non-negative integer.")
    return int(raw)


def paging(query: Any, default_limit: int = 50) -> tuple[int, int]:
    """offset >= 0 and limit 1..200 from a query string."""
    offset = _query_int(query, "offset", 0)
    limit = _query_int(query, "limit", default_limit)
    if not 1 <= limit <= MAX_PAGE:
        raise invalid("invalid_paging", f"limit must be from 1 to {MAX_PAGE}.")
    return offset, limit


def window(query: Any, allowed: tuple[str, ...] = tuple(WINDOWS)) -> str:
    """One of the named windows, else 422 listing them."""
    value = query.get("window", "hour")
    if value not in allowed:
        raise invalid("invalid_window", f"window must be one of: {', '.join(allowed)}.")
    return str(value)


def dimension(query: Any) -> str:
    """One of the breakdown dimensions."""
    value = query.get("dimension")
    if value not in DIMENSIONS:
        raise invalid("invalid_dimension", f"dimension must be one of: {', '.join(DIMENSIONS)}.")
    return str(value)


def admin_count(payload: Any) -> int:
    """The `count` an admin sets: an int >= 0."""
    if not isinstance(payload, dict) or "count" not in payload:
        raise invalid("invalid_count", 'body must be an object like {"count": 0}.')
    count = strict_int(payload["count"])
    if count is None or not 0 <= count <= _MAX_COUNT:
        raise invalid("invalid_count", f"count must be an integer from 0 to {_MAX_COUNT}.")
    return count


def search_prefix(query: Any) -> tuple[str, int]:
    """A name prefix to search for, and how many matches to return."""
    raw = query.get("q", "")
    if len(raw) > MAX_USERNAME:
        raise invalid("invalid_query", f"q must be at most {MAX_USERNAME} characters.")
    limit = _query_int(query, "limit", 20)
    if not 1 <= limit <= MAX_SEARCH:
        raise invalid("invalid_paging", f"limit must be from 1 to {MAX_SEARCH}.")
    return canonical(raw.strip()), limit


def require_object(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_body", f"{what} must be a JSON object.")
    return payload
