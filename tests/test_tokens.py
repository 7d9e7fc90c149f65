"""Signed player tokens: issued, read back, and refused when forged or mangled."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest
from itsdangerous import URLSafeSerializer

from service.tokens import MAX_TOKEN_LENGTH, Player, TokenSigner

SECRET = "unit-test-secret"


def test_a_token_names_its_player() -> None:
    signer = TokenSigner(SECRET)
    token = signer.issue("Straße", "abc123")
    assert signer.read(token) == Player(display="Straße", canon="strasse", nonce="abc123")


def test_a_token_survives_a_restart() -> None:
    token = TokenSigner(SECRET).issue("Ann", "n1")
    assert TokenSigner(SECRET).read(token) == Player("Ann", "ann", "n1")


def test_tokens_are_url_safe_and_short() -> None:
    token = TokenSigner(SECRET).issue("日本語" * 10, "0123456789abcdef")
    assert len(token) < MAX_TOKEN_LENGTH
    assert all(c.isalnum() or c in "-_." for c in token)


def test_another_secret_is_refused() -> None:
    token = TokenSigner("other").issue("Ann", "n1")
    assert TokenSigner(SECRET).read(token) is None


def _reencode(token: str, payload: Any) -> str:
    """The same signature over a different payload: what a tamperer would try."""
    _, _, signature = token.rpartition(".")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{body}.{signature}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + "x",
        lambda t: t[:-1],
        lambda t: "x" + t,
        lambda t: t.replace(".", ""),
        lambda t: t.swapcase(),
        lambda t: _reencode(t, ["Admin", "n1"]),
        lambda t: _reencode(t, ["Ann", "other-nonce"]),
        lambda t: t.rpartition(".")[0] + ".",
        lambda t: "." + t.rpartition(".")[2],
    ],
    ids=range(9),
)
def test_a_tampered_token_is_refused(mangle: Any) -> None:
    signer = TokenSigner(SECRET)
    assert signer.read(mangle(signer.issue("Ann", "n1"))) is None


@pytest.mark.parametrize(
    "payload",
    [["Ann"], ["Ann", "n1", "extra"], "Ann", {"display": "Ann", "nonce": "n1"}, [1, 2], None, 5],
    ids=range(7),
)
def test_a_genuine_signature_over_the_wrong_shape_is_refused(payload: Any) -> None:
    forged = URLSafeSerializer(SECRET, salt="clickky.player").dumps(payload)
    assert TokenSigner(SECRET).read(forged) is None


def test_the_signature_is_salted() -> None:
    # Signed with the right secret but for another purpose: still not a player token.
    other_use = URLSafeSerializer(SECRET).dumps(["Ann", "n1"])
    assert TokenSigner(SECRET).read(other_use) is None


@pytest.mark.parametrize(
    "token", [None, 123, b"bytes", ["a"], "", "nonsense", "a.b.c", "x" * (MAX_TOKEN_LENGTH + 1)]
)
def test_non_tokens_are_refused(token: Any) -> None:
    assert TokenSigner(SECRET).read(token) is None


def test_an_overlong_token_is_refused_even_if_genuine() -> None:
    signer = TokenSigner(SECRET)
    token = signer.issue(secrets.token_urlsafe(600), "n1")  # random: it does not compress
    assert len(token) > MAX_TOKEN_LENGTH
    assert signer.read(token) is None
