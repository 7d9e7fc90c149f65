"""The validators shared by the HTTP routes and the Socket.IO handlers."""

from __future__ import annotations

from typing import Any

import pytest

from service import names, validation
from service.errors import ApiError


def refusal(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert info.value.status == 422
    assert info.value.detail.endswith(".")
    return info.value


@pytest.mark.parametrize(
    ("raw", "display", "canon"),
    [
        ("Ann", "Ann", "ann"),
        ("  Ann  ", "Ann", "ann"),
        ("Straße", "Straße", "strasse"),
        ("Zoe\u0308", "Zoë", "zoë"),
        ("\uff21\uff4e\uff4e", "Ann", "ann"),  # full-width forms become the ordinary ones
        ("ΣΊΣΥΦΟΣ", "ΣΊΣΥΦΟΣ", "σίσυφοσ"),
        ("हिन्दी", "हिन्दी", "हिन्दी"),
        ("日本語", "日本語", "日本語"),
        ("a_b-c.d e", "a_b-c.d e", "a_b-c.d e"),
        ("x" * 32, "x" * 32, "x" * 32),
        ("سلام٣", "سلام٣", "سلام٣"),
    ],
)
def test_valid_usernames(raw: str, display: str, canon: str) -> None:
    assert validation.username(raw) == (display, canon)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " \t\n",
        "x" * 33,
        "😀",
        "a\u200bb",
        "a\u200db",
        "\u0301a",
        "a\x00",
        "a\x1b[31m",
        "a!",
        "a@b",
        "a/b",
        "a:b",
        "Ⅻ",  # a number, but not a decimal digit
        "\ud800",
        None,
        7,
        b"Ann",
        ["Ann"],
    ],
)
def test_invalid_usernames(raw: Any) -> None:
    error = refusal(validation.username, raw)
    assert error.code == "invalid_username"


def test_length_counts_characters_after_normalising() -> None:
    # 32 "ë" typed decomposed are 64 code points but 32 characters once composed.
    assert validation.username("e\u0308" * 32)[0] == "ë" * 32
    assert refusal(validation.username, "ë" * 33).code == "invalid_username"


@pytest.mark.parametrize(
    ("payload", "n"), [(None, 1), ({}, 1), ({"n": 1}, 1), ({"n": 50}, 50), ({"n": 7, "x": 1}, 7)]
)
def test_click_n_accepts(payload: Any, n: int) -> None:
    assert validation.click_n(payload) == n


@pytest.mark.parametrize(
    "payload",
    [{"n": 0}, {"n": 51}, {"n": -1}, {"n": True}, {"n": 1.0}, {"n": "1"}, {"n": None}, [1], "1", 1],
)
def test_click_n_refuses(payload: Any) -> None:
    assert refusal(validation.click_n, payload).code == "invalid_n"


def test_strict_int() -> None:
    assert validation.strict_int(3) == 3
    assert validation.strict_int(0) == 0
    for value in (True, False, 3.0, "3", None, [3]):
        assert validation.strict_int(value) is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, (0, 50)),
        ({"offset": "10"}, (10, 50)),
        ({"limit": "1"}, (0, 1)),
        ({"limit": "200", "offset": "0"}, (0, 200)),
    ],
)
def test_paging_accepts(query: dict[str, str], expected: tuple[int, int]) -> None:
    assert validation.paging(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": ""},
        {"limit": "٣"},  # a digit, but not an ASCII one
        {"offset": "-1"},
        {"offset": "1" * 13},
    ],
)
def test_paging_refuses(query: dict[str, str]) -> None:
    assert refusal(validation.paging, query).code == "invalid_paging"


def test_window() -> None:
    assert validation.window({}) == "hour"
    for name in ("hour", "day", "week"):
        assert validation.window({"window": name}) == name
    error = refusal(validation.window, {"window": "year"})
    assert error.code == "invalid_window"
    assert "hour, day, week" in error.detail


def test_windows_have_the_documented_buckets() -> None:
    assert validation.WINDOWS == {
        "hour": (3600, 60),
        "day": (86400, 900),
        "week": (604800, 3600),
    }


@pytest.mark.parametrize(
    ("payload", "count"), [({"count": 0}, 0), ({"count": 5}, 5), ({"count": 2**53 - 1}, 2**53 - 1)]
)
def test_admin_count_accepts(payload: dict[str, int], count: int) -> None:
    assert validation.admin_count(payload) == count


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"count": -1},
        {"count": 2**53},
        {"count": 10**30},
        {"count": 1.0},
        {"count": True},
        {"count": "1"},
        [0],
    ],
)
def test_admin_count_refuses(payload: Any) -> None:
    assert refusal(validation.admin_count, payload).code == "invalid_count"


def test_search_prefix() -> None:
    assert validation.search_prefix({}) == ("", 20)
    assert validation.search_prefix({"q": "  ALI ", "limit": "5"}) == ("ali", 5)
    assert validation.search_prefix({"q": "STRA"}) == ("stra", 20)
    assert refusal(validation.search_prefix, {"q": "a" * 33}).code == "invalid_query"
    assert refusal(validation.search_prefix, {"limit": "51"}).code == "invalid_paging"


def test_require_object() -> None:
    assert validation.require_object({"a": 1}, "The body") == {"a": 1}
    error = refusal(validation.require_object, [1], "The join body")
    assert error.code == "invalid_body"
    assert error.detail.startswith("The join body")


def test_a_compatibility_form_is_refused() -> None:
    # U+FDFA is one letter that NFKC spells as 18: PRECIS refuses compatibility forms.
    assert len(validation.canonical("\ufdfa" * 11)) > names.MAX_CANONICAL
    assert refusal(validation.username, "\ufdfa").code == "invalid_username"
