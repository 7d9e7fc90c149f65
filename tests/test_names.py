"""Usernames: PRECIS (RFC 8265) validity, UTS #39 look-alikes, and grandfathered names."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service import names
from service.errors import ApiError
from tests.checks import ADMIN, assert_error
from tests.support import join

CYRILLIC_A = "\u0410"  # looks like Latin A
GREEK_IOTA = "\u03b9"  # looks like Latin i


def refusal(raw: Any) -> str:
    with pytest.raises(ApiError) as info:
        names.username(raw)
    assert (info.value.status, info.value.code) == (422, "invalid_username")
    return info.value.detail


@pytest.mark.parametrize(
    ("raw", "culprit"),
    [
        ("Alice9\u034f", "U+034F COMBINING GRAPHEME JOINER"),
        ("Alice9\ufe0f", "U+FE0F VARIATION SELECTOR-16"),
        ("Alice9\U000e0100", "U+E0100 VARIATION SELECTOR-17"),
        ("\u3164" * 24, "U+3164 HANGUL FILLER"),
        ("\u115f" * 16, "U+115F HANGUL CHOSEONG FILLER"),
        ("\uffa0Bob", "U+1160 HANGUL JUNGSEONG FILLER"),  # the half-width filler, mapped first
        ("Bob\u200b", "U+200B ZERO WIDTH SPACE"),
        ("Bob\u00ad", "U+00AD SOFT HYPHEN"),
        ("Bob\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("Bob\u2060", "U+2060 WORD JOINER"),
    ],
)
def test_invisible_code_points_are_refused_by_name(raw: str, culprit: str) -> None:
    detail = refusal(raw)
    assert culprit in detail and "invisible" in detail


def test_the_refusal_is_a_sentence_a_player_understands() -> None:
    assert refusal("a<b") == (
        "Usernames can use letters, digits, spaces and _ - . only,"
        " so '<' (U+003C LESS-THAN SIGN) is not allowed."
    )
    assert "compatibility form" in refusal("\u01c5ungla")
    assert refusal("   ") == "Please choose a username: it cannot be empty."


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("\u1f08\u03bb\u03af\u03ba\u03b7", "\u1f08\u03bb\u03af\u03ba\u03b7"),  # Greek
        ("\u0410\u043b\u0438\u0441\u0430", "\u0410\u043b\u0438\u0441\u0430"),  # Cyrillic
        ("\uff21lice", "Alice"),  # full-width forms are mapped to the ordinary ones
        ("a  b", "a b"),  # runs of spaces become one
    ],
)
def test_letters_of_every_script_are_kept(raw: str, display: str) -> None:
    assert names.username(raw)[0] == display


def test_look_alikes_share_a_skeleton() -> None:
    alice = names.skeleton(names.canonical("Alice9"))
    for other in (CYRILLIC_A + "lice9", "Al" + GREEK_IOTA + "ce9", "ALICE9", "\uff21lice9"):
        assert names.skeleton(names.canonical(other)) == alice, other
    assert names.skeleton(names.canonical("Alicia")) != alice


async def test_join_refuses_invisible_and_look_alike_copies(client: httpx.AsyncClient) -> None:
    await join(client, "Alice9")
    for raw in ("Alice9\u034f", "Alice9\ufe0f", "Alice9\U000e0100", "\u3164" * 24, "\u115f" * 16):
        response = await client.post("/api/join", json={"username": raw})
        assert_error(response, 422, "invalid_username")
    for raw in (CYRILLIC_A + "lice9", "Al" + GREEK_IOTA + "ce9", "alice9"):
        response = await client.post("/api/join", json={"username": raw})
        assert_error(response, 409, "name_taken")
        if raw != "alice9":
            assert "looks too much like 'Alice9'" in response.json()["detail"]
    # Greek and Cyrillic names are welcome when they copy nobody.
    await join(client, "\u1f08\u03bb\u03af\u03ba\u03b7")
    await join(client, "\u0410\u043b\u0438\u0441\u0430")
    # Once the original is deleted, the look-alike is free.
    assert (await client.delete("/api/admin/users/Alice9", headers=ADMIN)).status_code == 200
    await join(client, CYRILLIC_A + "lice9")


async def test_grandfathered_names_keep_working_and_are_indexed(
    client: httpx.AsyncClient, counter: Any, redis: Any, keys: Any
) -> None:
    # Joined before the rules tightened: straight into Redis, as the old validator allowed.
    old = "Bob\u034f"
    await counter.join(old, names.canonical(old), "127.0.0.1", 100)
    # A deployment that predates the skeleton index has none yet.
    await redis.delete(keys.skeletons, keys.skeletons_version)
    response = await client.get(f"/api/users/{old}")
    assert response.status_code == 200 and response.json()["username"] == old
    # The next join builds the index first, so a look-alike of the old name is refused.
    response = await client.post("/api/join", json={"username": "B" + "\u043e" + "b"})
    assert_error(response, 409, "name_taken")
    assert await redis.get(keys.skeletons_version) == names.SKELETON_VERSION.encode()
    # An admin can still edit and delete it.
    response = await client.put(f"/api/admin/users/{old}", json={"count": 3}, headers=ADMIN)
    assert response.status_code == 200 and response.json()["count"] == 3
    assert (await client.delete(f"/api/admin/users/{old}", headers=ADMIN)).status_code == 200
    await join(client, "Bob")
