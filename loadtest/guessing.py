"""Admin token guessing from one address, as issue 15 measured it, against a running instance.

    .venv/bin/python loadtest/guessing.py --url http://127.0.0.1:8000 [--guesses 300]

Sends `--guesses` requests to GET /api/admin/status, each with a different wrong bearer
token, one after another from this address, then one with `--token` (the right one, if
given) and one with the right token from another address (X-Forwarded-For, which the
instance trusts from 127.0.0.1 by default). Prints one JSON line: statuses, seconds, the
attempt that first got 429 and its Retry-After. Use a fresh KEY_PREFIX (or wait a
minute) between runs: the limit's window is a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections import Counter
from typing import Any

import httpx


async def run(url: str, guesses: int, token: str | None) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    first_429: int | None = None
    retry_after: str | None = None
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        started = time.perf_counter()
        for attempt in range(1, guesses + 1):
            wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
            response = await http.get("/api/admin/status", headers=wrong)
            statuses[response.status_code] += 1
            if response.status_code == 429 and first_429 is None:
                first_429, retry_after = attempt, response.headers.get("retry-after")
        seconds = time.perf_counter() - started
        result: dict[str, Any] = {
            "guesses": guesses,
            "seconds": round(seconds, 3),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "first_429_at": first_429,
            "retry_after_s": retry_after,
        }
        if token:
            right = {"Authorization": f"Bearer {token}"}
            result["right_token_same_address"] = (
                await http.get("/api/admin/status", headers=right)
            ).status_code
            other = right | {"X-Forwarded-For": "198.51.100.77"}
            result["right_token_other_address"] = (
                await http.get("/api/admin/status", headers=other)
            ).status_code
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--guesses", type=int, default=300)
    parser.add_argument("--token", help="the real admin token, to show that it waits too")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.guesses, args.token))))


if __name__ == "__main__":
    main()
