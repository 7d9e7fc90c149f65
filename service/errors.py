"""The contract's error shape: every refusal is a status, a machine code and a sentence."""

from __future__ import annotations

import math
from typing import Any


class ApiError(Exception):
    """A refusal that reaches the client as {"error": code, "detail": sentence}."""

    def __init__(
        self, status: int, code: str, detail: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.retry_after_s is not None:
            body["retry_after_ms"] = math.ceil(self.retry_after_s * 1000)
        return body

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Retry-After is whole seconds; round up so a client that obeys it is never early.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def invalid(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)


def unavailable(detail: str = "The counter store is unreachable; try again shortly.") -> ApiError:
    return ApiError(503, "unavailable", detail, retry_after_s=1)


def restoring() -> ApiError:
    return ApiError(
        503,
        "restoring",
        "Counts are being restored from the last snapshot; try again in a moment.",
        retry_after_s=1,
    )


def invalid_token() -> ApiError:
    return ApiError(401, "invalid_token", "This token is not valid; join again to get a new one.")


def count_limit() -> ApiError:
    return ApiError(
        422,
        "count_limit",
        "Counts stop at 9007199254740991 (2^53 - 1, the largest integer a web page shows"
        " exactly); this change would pass it.",
    )
