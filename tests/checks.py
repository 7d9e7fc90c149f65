"""Assertions about the contract shared by the API, hostile-input and system suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

# The fixtures' ADMIN_TOKEN: at least 32 characters, like every admin token.
ADMIN_TOKEN = "admin-test-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Text that only shows up in a body when an exception leaked to the client.
TRACE_MARKERS = ("Traceback", 'File "', "Exception", "Error:", "line ")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_no_trace(text: str) -> None:
    for marker in TRACE_MARKERS:
        assert marker not in text, f"stack trace text {marker!r} in a response: {text[:500]}"


def assert_error_body(body: Any, code: str) -> dict[str, Any]:
    """The contract's error shape: exactly error and detail (plus retry_after_ms when set)."""
    assert isinstance(body, dict), body
    assert set(body) - {"retry_after_ms"} == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    if "retry_after_ms" in body:
        assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0, body
    assert_no_trace(str(body))
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An HTTP refusal: the status, JSON content type, and the contract's body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert_no_trace(response.text)
    return assert_error_body(response.json(), code)


@dataclass(frozen=True)
class Counts:
    """What the counter holds, read through the public API."""

    global_count: int
    users: int
    board: dict[str, int]

    def assert_invariant(self) -> None:
        assert self.global_count == sum(self.board.values()), self
        assert self.users == len(self.board), self


async def read_counts(client: httpx.AsyncClient) -> Counts:
    """Global and user count from /api/state, every row of the leaderboard; checks the invariant."""
    state = await client.get("/api/state")
    assert state.status_code == 200, state.text
    board: dict[str, int] = {}
    offset = 0
    while True:
        page = await client.get("/api/leaderboard", params={"offset": offset, "limit": 200})
        assert page.status_code == 200, page.text
        entries = page.json()["entries"]
        board.update({e["username"]: e["count"] for e in entries})
        if len(entries) < 200:
            break
        offset += 200
    body = state.json()
    counts = Counts(body["global"], body["users"], board)
    counts.assert_invariant()
    return counts
