"""Admin authentication: named tokens checked by hash, and a cross-instance limit on failures.

A token is never kept or compared in clear: each is hashed with SHA-256 and the digest
is compared with every configured one by `hmac.compare_digest`, without stopping at
the first match, so neither the time nor the order of the configured admins leaks.

Failed attempts are counted per client address in Redis (a fixed one-minute window,
shared by every instance). An address at the limit is refused with 429 before its
token is looked at, so a correct token from a blocked address waits too and the
refusal tells nothing about how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis

from service import metrics
from service.counter import load_script
from service.errors import ApiError
from service.keys import Keys

log = logging.getLogger(__name__)

# The Socket.IO room of authenticated admin connections: the only receivers of the feed.
ADMIN_ROOM = "admins"
# The name under which ADMIN_TOKEN's holder appears in the audit log.
DEFAULT_ADMIN = "admin"
WINDOW_S = 60

OnBlocked = Callable[[str], Awaitable[None]]


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token appears in ADMIN_TOKENS."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random admin token (256 bits, 43 URL-safe characters)."""
    return secrets.token_urlsafe(32)


class Admins:
    """Who may act as an admin, and how often an address may guess."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        admin_token: str | None,
        named: Sequence[tuple[str, str]] = (),
        failures_per_min: int = 10,
        on_blocked: OnBlocked | None = None,
    ) -> None:
        self.keys = keys
        self.limit = failures_per_min
        digests = [(name, bytes.fromhex(digest)) for name, digest in named]
        if admin_token is not None:
            digests.append((DEFAULT_ADMIN, hashlib.sha256(admin_token.encode()).digest()))
        self._digests = digests
        self._fail = load_script(redis, "admin_fail")
        self._check = load_script(redis, "admin_check")
        self.on_blocked = on_blocked

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, token: str) -> str | None:
        """The admin's name for this token, or None; constant-time over every digest."""
        offered = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for name, digest in self._digests:
            if hmac.compare_digest(offered, digest) and found is None:
                found = name
        return found

    async def authenticate(self, token: str | None, address: str) -> str:
        """The admin's name; raises the contract's ApiError (403, 401, 429) otherwise."""
        if not self.enabled:
            raise ApiError(
                403,
                "admin_disabled",
                "Admin routes are disabled: neither ADMIN_TOKEN nor ADMIN_TOKENS is set.",
            )
        key = self.keys.admin_failures(address)
        failures, ttl_ms = await self._check(keys=[key])
        if int(failures) >= self.limit:
            raise self._blocked(int(ttl_ms))
        if token is None:
            raise ApiError(
                401, "unauthorized", "Send the admin token as 'Authorization: Bearer …'."
            )
        name = self.identify(token)
        if name is not None:
            return name
        metrics.ADMIN_AUTH_FAILURES.inc()
        failures, ttl_ms = await self._fail(keys=[key], args=[WINDOW_S * 1000])
        if int(failures) == self.limit:
            # Exactly once per address and window, whichever instance saw the last guess.
            metrics.ADMIN_AUTH_BLOCKS.inc()
            log.warning(
                "admin authentication blocked for %s: %d failures within %d s",
                address,
                self.limit,
                WINDOW_S,
                extra={"address": address},
            )
            if self.on_blocked is not None:
                await self.on_blocked(address)
        raise ApiError(403, "forbidden", "That is not an admin token.")

    def _blocked(self, ttl_ms: int) -> ApiError:
        wait_s = max(ttl_ms, 1) / 1000 if ttl_ms > 0 else WINDOW_S
        return ApiError(
            429,
            "rate_limited",
            f"Too many failed admin authentications from your address; at most {self.limit}"
            f" a minute. Try again in {max(1, round(wait_s))} s.",
            retry_after_s=wait_s,
        )
