"""Signed player tokens: they name a user and the nonce of the join that made them."""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from service.validation import canonical

MAX_TOKEN_LENGTH = 512


@dataclass(frozen=True)
class Player:
    """Who a valid signature says the bearer is; Redis still decides if the nonce is live."""

    display: str
    canon: str
    nonce: str


class TokenSigner:
    """HMAC-signs (display name, nonce); a deleted user's nonce is gone, so its token dies."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt="clickky.player")

    def issue(self, display: str, nonce: str) -> str:
        return str(self._serializer.dumps([display, nonce]))

    def read(self, token: object) -> Player | None:
        """The player a token names, or None when it is forged, mangled or not a string."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            payload = self._serializer.loads(token)
        except (BadSignature, ValueError, UnicodeError):
            return None
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not all(isinstance(part, str) for part in payload)
        ):
            return None
        display, nonce = payload
        return Player(display=display, canon=canonical(display), nonce=nonce)
