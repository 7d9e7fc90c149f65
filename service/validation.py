"""Input validators shared by the HTTP routes and the Socket.IO handlers."""

from __future__ import annotations

import re
from typing import Any

from service.breakdown import DIMENSIONS
from service.errors import ApiError, invalid

# Names have their own module; HTTP and Socket.IO reach them through this one.
from service.names import MAX_USERNAME, canonical
from service.names import username as username

MAX_CLICK_BATCH = 50
MAX_PAGE = 200
MAX_SEARCH = 50
# Bucket widths keep every window to at most a few hundred points.
WINDOWS = {"hour": (3600, 60), "day": (86400, 900), "week": (7 * 86400, 3600)}
# Counts live in sorted-set scores, doubles exact up to 2**53, and the page shows
# them as JavaScript numbers: every count is a JS safe integer.
MAX_COUNT = 2**53 - 1
_CLICK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


# A Redis stream id: milliseconds, a dash, a sequence number.
_STREAM_ID = re.compile(r"[0-9]{1,15}-[0-9]{1,10}")
# An audit row id: digits that fit a signed 64-bit integer in either SQL dialect.
_ROW_ID = re.compile(r"[0-9]{1,18}")


def history_paging(query: Any, *, stream: bool) -> tuple[int, str | None]:
    """limit 1..200 (default 50) and an optional `before` cursor: a row id, or a stream id."""
    limit = _query_int(query, "limit", 50)
    if not 1 <= limit <= MAX_PAGE:
        raise invalid("invalid_paging", f"limit must be from 1 to {MAX_PAGE}.")
    before = query.get("before")
    if before is None or before == "":
        return limit, None
    if not (_STREAM_ID if stream else _ROW_ID).fullmatch(before):
        shape = "a feed entry id like 1700000000000-0" if stream else "an audit record id"
        raise invalid("invalid_paging", f"before must be {shape} (the previous page's next).")
    return limit, str(before)


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
    if count is None or not 0 <= count <= MAX_COUNT:
        raise invalid("invalid_count", f"count must be an integer from 0 to {MAX_COUNT}.")
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
