"""The HTTP contract, route by route, against an in-process instance on the real Redis."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.tokens import TokenSigner
from tests.checks import ADMIN, assert_error, bearer, read_counts
from tests.conftest import Server
from tests.shared import shared_loop, shared_server, unique
from tests.support import Player, eventually, join


# Refusal-only cases share one instance (see tests/shared.py); the rest get their own.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(redis_url: str, tmp_path_factory) -> AsyncIterator[Server]:
    async with shared_server(redis_url, tmp_path_factory.mktemp("api")) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(shared: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with shared.client() as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def player(http: httpx.AsyncClient) -> tuple[str, str]:
    """A fresh player on the shared instance with 4 clicks: (name, token)."""
    name = unique("ann")
    token = await join(http, name)
    assert (await click(http, token, 4)).status_code == 200
    return name, token


# -- helpers -------------------------------------------------------------------------


async def click(client: httpx.AsyncClient, token: str, n: int | None = None) -> httpx.Response:
    body = None if n is None else {"n": n}
    return await client.post("/api/click", json=body, headers=bearer(token))


async def set_count(client: httpx.AsyncClient, name: str, count: int) -> httpx.Response:
    return await client.put(f"/api/admin/users/{name}", json={"count": count}, headers=ADMIN)


async def board_of(client: httpx.AsyncClient, counts: dict[str, int]) -> None:
    """Players with exactly these counts (admin edits: no rate limit in the way)."""
    for name, count in counts.items():
        await join(client, name)
        if count:
            assert (await set_count(client, name, count)).status_code == 200


# -- POST /api/join ------------------------------------------------------------------


async def test_join_returns_201_with_name_and_a_working_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/join", json={"username": "Ann"})
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"username", "token"}
    assert body["username"] == "Ann"
    assert isinstance(body["token"], str) and body["token"]
    assert (await click(client, body["token"])).json()["user"] == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Ann", "ann"),
        ("Ann", "ANN"),
        ("Straße", "STRASSE"),  # full case folding, not just lower()
        ("ΣΊΣΥΦΟΣ", "σίσυφος"),  # final sigma folds to sigma
        ("Zoë", "ZOË"),
        ("Zoë", "Zoe\u0308"),  # the same name, composed and decomposed
        ("\uff21\uff4e\uff4e", "ann"),  # fullwidth forms
        ("Ἀθηνᾶ", "ἀθηνᾶ"),
    ],
)
async def test_join_refuses_a_taken_name_ignoring_case(
    client: httpx.AsyncClient, first: str, second: str
) -> None:
    await join(client, first)
    response = await client.post("/api/join", json={"username": second})
    assert_error(response, 409, "name_taken")
    assert (await client.get("/api/state")).json()["users"] == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "\t\n",
        "a" * 33,
        "😀",
        "ann😀",
        "a\x00b",
        "a\x07b",
        "line\nbreak",
        "zero\u200bwidth",
        "joiner\u200d",
        "\ufeffbom",
        "rtl\u202eoverride",
        "ann!",
        "a/b",
        "<script>",
        "\u0301accent-first",
        None,
        42,
        ["Ann"],
        {"name": "Ann"},
    ],
)
@shared_loop
async def test_join_refuses_an_invalid_name(http: httpx.AsyncClient, name: Any) -> None:
    before = await read_counts(http)
    response = await http.post("/api/join", json={"username": name})
    assert_error(response, 422, "invalid_username")
    assert await read_counts(http) == before


@pytest.mark.parametrize(
    ("raw", "display"),
    [
        ("Zoë", "Zoë"),
        ("Ἀθηνᾶ", "Ἀθηνᾶ"),
        ("हिन्दी", "हिन्दी"),  # vowel signs are marks that follow a letter
        ("日本語", "日本語"),
        ("  Zoë  ", "Zoë"),
        ("\tspaced out\n", "spaced out"),
        ("Zoe\u0308", "Zoë"),  # stored composed (NFC)
        ("a" * 32, "a" * 32),
        ("x_y-z.0 9", "x_y-z.0 9"),
        ("سلام١٢٣", "سلام١٢٣"),  # Arabic letters, then Arabic-Indic digits
    ],
)
async def test_join_accepts_any_script_and_trims(
    client: httpx.AsyncClient, raw: str, display: str
) -> None:
    response = await client.post("/api/join", json={"username": raw})
    assert response.status_code == 201, response.text
    assert response.json()["username"] == display
    found = await client.get(f"/api/users/{display}")
    assert found.json() == {"username": display, "count": 0, "rank": 1}


# -- POST /api/click -----------------------------------------------------------------


async def test_click_counts_and_answers_user_and_global(client: httpx.AsyncClient) -> None:
    ann = await join(client, "Ann")
    bob = await join(client, "Bob")
    response = await click(client, ann, 3)
    assert response.status_code == 200
    assert response.json() == {"user": 3, "global": 3, "rank": 1}
    assert (await click(client, bob)).json() == {"user": 1, "global": 4, "rank": 2}
    # An empty body, and an object without n, both mean one click.
    empty = await client.post("/api/click", headers=bearer(bob))
    assert empty.json()["user"] == 2
    assert (await client.post("/api/click", json={}, headers=bearer(bob))).json()["user"] == 3
    counts = await read_counts(client)
    assert counts.board == {"Ann": 3, "Bob": 3}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": ""}, "unauthorized"),
        ({"Authorization": "Bearer"}, "unauthorized"),
        ({"Authorization": "Basic YW5uOnB3"}, "unauthorized"),
        ({"Authorization": "Bearer nonsense"}, "invalid_token"),
        ({"Authorization": "Bearer WyJBbm4iLCJ4Il0.forged"}, "invalid_token"),
        ({"Authorization": "Bearer " + "x" * 5000}, "invalid_token"),
    ],
)
@shared_loop
async def test_click_without_a_valid_token_is_401(
    http: httpx.AsyncClient, player, headers: dict[str, str], code: str
) -> None:
    before = await read_counts(http)
    assert_error(await http.post("/api/click", json={"n": 1}, headers=headers), 401, code)
    assert await read_counts(http) == before


async def test_click_with_a_forged_or_tampered_token_is_401(server, client) -> None:
    token = await join(client, "Ann")
    nonce_part, _, signature = token.rpartition(".")
    forged = [
        TokenSigner("some-other-secret").issue("Ann", "0123456789abcdef"),
        # A genuine signature for a user who never joined (the epoch is set: no excuse).
        TokenSigner(server.settings.secret_key).issue("Ghost", "0123456789abcdef"),
        # Ann's name with a nonce that was never issued.
        TokenSigner(server.settings.secret_key).issue("Ann", "0123456789abcdef"),
        nonce_part + "." + signature[::-1],
        nonce_part[:-2] + "." + signature,
        token.swapcase(),
    ]
    for bad in forged:
        response = await client.post("/api/click", json={"n": 5}, headers=bearer(bad))
        assert_error(response, 401, "invalid_token")
    counts = await read_counts(client)
    assert counts.board == {"Ann": 0}


@pytest.mark.parametrize(
    "n", [0, -1, 51, 1000, "3", "", None, True, False, 2.0, 1.5, [1], {"n": 1}]
)
@shared_loop
async def test_click_with_a_bad_n_is_422(http: httpx.AsyncClient, player, n: Any) -> None:
    before = await read_counts(http)
    response = await http.post("/api/click", json={"n": n}, headers=bearer(player[1]))
    assert_error(response, 422, "invalid_n")
    assert await read_counts(http) == before


async def test_click_over_the_rate_limit_is_429_and_counts_nothing(server, client) -> None:
    limit = server.settings.rate_limit_cps
    token = await join(client, "Ann")
    assert (await click(client, token, limit)).status_code == 200
    refused = await click(client, token, 1)
    body = assert_error(refused, 429, "rate_limited")
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after == 1
    assert 0 < body["retry_after_ms"] <= 1000
    # n above the per-second limit could never pass: refused as invalid, not "wait".
    too_big = await click(client, token, limit + 1) if limit < 50 else None
    if too_big is not None:
        assert_error(too_big, 422, "invalid_n")
    counts = await read_counts(client)
    assert counts.board == {"Ann": limit}
    assert counts.global_count == limit


# -- GET /api/state --------------------------------------------------------------------


async def test_state_has_the_contract_fields_and_the_top_ten(client: httpx.AsyncClient) -> None:
    await board_of(client, {f"p{i:02d}": 100 - i for i in range(12)})
    body = (await client.get("/api/state")).json()
    assert set(body) >= {"global", "online", "cps", "users", "top"}
    assert body["global"] == sum(100 - i for i in range(12))
    assert body["users"] == 12
    assert body["online"] == 0
    assert isinstance(body["cps"], int | float)
    assert body["top"] == [{"username": f"p{i:02d}", "count": 100 - i} for i in range(10)]


async def test_state_cps_reflects_recent_clicks(server, client: httpx.AsyncClient) -> None:
    token = await join(client, "Ann")
    # The rate is the slope between the ticker's samples: make sure one was taken before
    # the clicks (a connecting client's first state takes one).
    watcher = await Player(server.url).connect()
    try:
        await eventually(lambda: watcher.states, timeout=5)
        assert (await client.get("/api/state")).json()["cps"] == 0
        for _ in range(4):
            assert (await click(client, token, 5)).status_code == 200
        # It shows within a couple of ticks.
        await eventually(lambda: _cps(client), timeout=5)
    finally:
        await watcher.close()


async def _cps(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/api/state")).json()["cps"] > 0)


# -- GET /api/leaderboard ------------------------------------------------------------

BOARD = {"Ann": 50, "Bob": 30, "Cid": 30, "Dee": 10, "Eve": 0}


async def test_leaderboard_uses_competition_ranks_for_ties(client: httpx.AsyncClient) -> None:
    await board_of(client, BOARD)
    body = (await client.get("/api/leaderboard")).json()
    assert body["total"] == 5
    ranks = [(e["rank"], e["count"]) for e in body["entries"]]
    assert ranks == [(1, 50), (2, 30), (2, 30), (4, 10), (5, 0)], body
    assert {e["username"] for e in body["entries"]} == set(BOARD)
    assert all(set(e) == {"rank", "username", "count"} for e in body["entries"])


@pytest.mark.parametrize(
    ("offset", "limit", "expected"),
    [
        (0, 1, [(1, 50)]),
        (1, 2, [(2, 30), (2, 30)]),
        (2, 2, [(2, 30), (4, 10)]),
        (3, 50, [(4, 10), (5, 0)]),
        (4, 200, [(5, 0)]),
        (5, 10, []),
        (1000, 1, []),
    ],
)
async def test_leaderboard_pages(
    client: httpx.AsyncClient, offset: int, limit: int, expected: list[tuple[int, int]]
) -> None:
    await board_of(client, BOARD)
    response = await client.get("/api/leaderboard", params={"offset": offset, "limit": limit})
    body = response.json()
    assert body["total"] == 5
    assert [(e["rank"], e["count"]) for e in body["entries"]] == expected


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": ""},
        {"limit": "99999999999999999999"},
        {"offset": "-1"},
        {"offset": "x"},
        {"offset": "1e3"},
    ],
)
@shared_loop
async def test_leaderboard_refuses_bad_paging(http: httpx.AsyncClient, params) -> None:
    assert_error(await http.get("/api/leaderboard", params=params), 422, "invalid_paging")


async def test_leaderboard_limit_bounds_are_inclusive(client: httpx.AsyncClient) -> None:
    await board_of(client, {"Ann": 1})
    for limit in (1, 200):
        response = await client.get("/api/leaderboard", params={"limit": limit})
        assert response.status_code == 200, response.text


# -- GET /api/users/{name} and /api/users?q= ------------------------------------------


@pytest.mark.parametrize(
    ("stored", "asked"),
    [("Ann", "ann"), ("Ann", "ANN"), ("Straße", "STRASSE"), ("Zoë", "zoË"), ("日本語", "日本語")],
)
async def test_user_lookup_ignores_case(client: httpx.AsyncClient, stored: str, asked: str) -> None:
    await board_of(client, {"Top": 9, stored: 7, "Tie": 7, "Low": 1})
    response = await client.get(f"/api/users/{asked}")
    assert response.status_code == 200
    assert response.json() == {"username": stored, "count": 7, "rank": 2}


@pytest.mark.parametrize("name", ["Nobody", "a" * 40, "😀", "%F0%9F%98%80", "a%00b", " "])
@shared_loop
async def test_unknown_user_is_404(http: httpx.AsyncClient, player, name: str) -> None:
    assert_error(await http.get(f"/api/users/{name}"), 404, "not_found")


async def test_user_search_by_prefix(client: httpx.AsyncClient) -> None:
    await board_of(client, {"Alice": 3, "alina": 5, "Bob": 1, "Al": 0})
    names = await _search(client, "al")
    assert names == ["Al", "Alice", "alina"]  # name order, ignoring case
    assert await _search(client, "AL") == names
    assert await _search(client, "ali") == ["Alice", "alina"]
    assert await _search(client, "alice") == ["Alice"]
    assert await _search(client, "zz") == []
    assert await _search(client, "") == ["Al", "Alice", "alina", "Bob"]
    entries = (await client.get("/api/users", params={"q": "alina"})).json()["entries"]
    assert entries == [{"rank": 1, "username": "alina", "count": 5}]
    limited = (await client.get("/api/users", params={"q": "a", "limit": 2})).json()
    assert len(limited["entries"]) == 2


@pytest.mark.parametrize(
    ("names", "query", "expected"),
    [
        (["日本語", "日本", "中文"], "日", ["日本", "日本語"]),
        (["Ἀθηνᾶ", "Ἀπόλλων"], "ἀθ", ["Ἀθηνᾶ"]),
        (["Zoë", "Zoeh", "Zoé"], "zo", ["Zoeh", "Zoé", "Zoë"]),
        (["aĀb", "ab"], "a", ["ab", "aĀb"]),
        (["Straße"], "STRA", ["Straße"]),
    ],
)
async def test_user_search_finds_names_in_any_script(
    client: httpx.AsyncClient, names: list[str], query: str, expected: list[str]
) -> None:
    for name in names:
        await join(client, name)
    assert sorted(await _search(client, query)) == sorted(expected)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"q": "a" * 33}, "invalid_query"),
        ({"q": "a", "limit": "0"}, "invalid_paging"),
        ({"q": "a", "limit": "51"}, "invalid_paging"),
        ({"q": "a", "limit": "x"}, "invalid_paging"),
    ],
)
@shared_loop
async def test_user_search_refuses_bad_queries(http: httpx.AsyncClient, params, code) -> None:
    assert_error(await http.get("/api/users", params=params), 422, code)


async def _search(client: httpx.AsyncClient, q: str) -> list[str]:
    response = await client.get("/api/users", params={"q": q})
    assert response.status_code == 200, response.text
    return [e["username"] for e in response.json()["entries"]]


# -- GET /api/stats ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "bucket", "points"), [("hour", 60, 60), ("day", 900, 96), ("week", 3600, 168)]
)
async def test_stats_windows(
    client: httpx.AsyncClient, window: str, bucket: int, points: int
) -> None:
    token = await join(client, "Ann")
    before = time.time()
    assert (await click(client, token, 7)).status_code == 200
    response = await client.get("/api/stats", params={"window": window})
    after = time.time()
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == window
    assert body["bucket_seconds"] == bucket
    series = body["points"]
    assert len(series) == points
    stamps = [p[0] for p in series]
    assert all(b - a == bucket for a, b in itertools.pairwise(stamps)), "oldest first"
    assert all(stamp % bucket == 0 for stamp in stamps)
    assert stamps[-1] <= after < stamps[-1] + bucket + 1
    assert sum(p[1] for p in series) == 7
    assert all(p[1] == 0 for p in series[:-2])
    if math.floor(before / bucket) == math.floor(after / bucket):
        assert series[-1][1] == 7, "the current bucket holds the fresh clicks"


@shared_loop
async def test_stats_defaults_to_the_hour(http: httpx.AsyncClient) -> None:
    body = (await http.get("/api/stats")).json()
    assert body["window"] == "hour" and len(body["points"]) == 60


@pytest.mark.parametrize("window", ["month", "HOUR", "", "hour ", "minute", "0"])
@shared_loop
async def test_stats_refuses_an_unknown_window(http: httpx.AsyncClient, window: str) -> None:
    assert_error(await http.get("/api/stats", params={"window": window}), 422, "invalid_window")


# -- admin -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic admin-test-token-0123456789abcdef"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 403, "forbidden"),
        ({"Authorization": "Bearer admin-test-token-0123456789abcdef-and-more"}, 403, "forbidden"),
        ({"Authorization": "Bearer ADMIN-TEST-TOKEN-0123456789ABCDEF"}, 403, "forbidden"),
    ],
)
@shared_loop
async def test_admin_needs_the_admin_token(
    http: httpx.AsyncClient, player, method: str, headers, status: int, code: str
) -> None:
    before = await read_counts(http)
    response = await http.request(
        method, f"/api/admin/users/{player[0]}", json={"count": 99}, headers=headers
    )
    assert_error(response, status, code)
    assert await read_counts(http) == before
    assert before.board[player[0]] == 4


async def test_admin_is_disabled_without_admin_token(serve, counter) -> None:
    server = await serve(admin_token=None)
    async with server.client() as client:
        await join(client, "Ann")
        for method in ("PUT", "DELETE"):
            for headers in ({}, ADMIN, {"Authorization": "Bearer wrong"}):
                response = await client.request(
                    method, "/api/admin/users/Ann", json={"count": 5}, headers=headers
                )
                assert_error(response, 403, "admin_disabled")
        assert (await read_counts(client)).board == {"Ann": 0}


async def test_admin_set_count_keeps_the_invariant(client: httpx.AsyncClient) -> None:
    ann, bob = await join(client, "Ann"), await join(client, "Bob")
    await click(client, ann, 10)
    await click(client, bob, 5)
    response = await set_count(client, "ANN", 3)  # the path name ignores case
    assert response.status_code == 200
    assert response.json() == {"username": "Ann", "count": 3, "global": 8}
    response = await set_count(client, "bob", 1000)
    assert response.json() == {"username": "Bob", "count": 1000, "global": 1003}
    counts = await read_counts(client)
    assert counts.board == {"Ann": 3, "Bob": 1000}
    assert counts.global_count == 1003
    # Clicking after an edit goes on from the edited count.
    assert (await click(client, ann, 2)).json()["user"] == 5
    assert (await read_counts(client)).global_count == 1005


@pytest.mark.parametrize(
    "body",
    [
        {"count": -1},
        {"count": "5"},
        {"count": 1.5},
        {"count": True},
        {"count": None},
        {},
        [5],
        5,
        {"count": 2**53},
        {"count": 2**64},
        {"count": 10**400},
    ],
)
@shared_loop
async def test_admin_set_refuses_a_bad_count(http: httpx.AsyncClient, player, body: Any) -> None:
    before = await read_counts(http)
    response = await http.put(f"/api/admin/users/{player[0]}", json=body, headers=ADMIN)
    assert_error(response, 422, "invalid_count")
    assert await read_counts(http) == before


async def test_admin_routes_404_for_unknown_users(client: httpx.AsyncClient) -> None:
    await join(client, "Ann")
    assert_error(await set_count(client, "Nobody", 5), 404, "not_found")
    assert_error(await client.delete("/api/admin/users/Nobody", headers=ADMIN), 404, "not_found")
    assert_error(await client.delete("/api/admin/users/😀", headers=ADMIN), 404, "not_found")
    assert (await read_counts(client)).board == {"Ann": 0}


async def test_admin_delete_frees_the_name_and_kills_the_token(client: httpx.AsyncClient) -> None:
    old = await join(client, "Ann")
    bob = await join(client, "Bob")
    await click(client, old, 6)
    await click(client, bob, 2)
    response = await client.delete("/api/admin/users/ann", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"username": "Ann", "global": 2}
    counts = await read_counts(client)
    assert counts.board == {"Bob": 2}
    assert_error(await click(client, old), 401, "invalid_token")
    assert_error(await client.get("/api/users/Ann"), 404, "not_found")
    assert_error(await client.delete("/api/admin/users/Ann", headers=ADMIN), 404, "not_found")

    # The name is free again; the new owner gets a new token and starts from zero.
    response = await client.post("/api/join", json={"username": "ANN"})
    assert response.status_code == 201
    new = response.json()["token"]
    assert new != old
    assert (await click(client, new, 1)).json() == {"user": 1, "global": 3, "rank": 2}
    assert_error(await click(client, old), 401, "invalid_token")
    counts = await read_counts(client)
    assert counts.board == {"Bob": 2, "ANN": 1}


# -- operations ------------------------------------------------------------------------


@shared_loop
async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_readyz_reports_its_checks(server, client: httpx.AsyncClient) -> None:
    async def ready() -> dict[str, Any] | None:
        response = await client.get("/readyz")
        return response.json() if response.status_code == 200 else None

    body = await eventually(ready, timeout=10)
    assert body["status"] == "ready"
    assert body["redis"] == "ok"
    assert body["pubsub"] == "ok"
    assert body["restore"] == "done"
    assert body["instance"] == server.runtime.instance_id
    assert "error" not in body


async def test_junk_in_the_snapshot_status_is_dropped(
    server, client: httpx.AsyncClient, redis, keys
) -> None:
    junk = {"last_ok_ms": "soon", "duration_s": "nan", "rows": "1e999", "failures": "[]"}
    await redis.hset(keys.snapshot_status, mapping=junk)
    await eventually(lambda: server.runtime.bus.healthy, timeout=10)
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["snapshot"] == {
        "age_s": None,
        "duration_s": None,
        "rows": None,
        "failures": 0,
        "last_error": None,
    }
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/api/admin/status", headers=ADMIN)).status_code == 200


async def test_metrics_are_prometheus_text(server, client: httpx.AsyncClient) -> None:
    token = await join(client, "Ann")
    await click(client, token, 3)
    player = await Player(server.url, token).connect()
    try:
        assert "user" in await player.click(2)
        await eventually(lambda: _metric(client, "clickky_connections", 1.0), timeout=5)
        response = await client.get("/metrics")
    finally:
        await player.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "clickky_clicks_total",
        "clickky_clicks_refused_total",
        "clickky_joins_total",
        "clickky_connections",
        "clickky_broadcast_lag_seconds_bucket",
        "clickky_redis_errors_total",
        "clickky_pubsub_up",
        "clickky_loop_up",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text or name in text, name
    samples = _samples(text)
    assert samples["clickky_global_clicks"] == 5.0
    assert samples["clickky_users"] == 1.0
    assert samples['clickky_clicks_total{transport="http"}'] >= 3
    assert samples['clickky_clicks_total{transport="socket"}'] >= 2


def _samples(text: str) -> dict[str, float]:
    result = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            result[name] = float(value)
    return result


async def _metric(client: httpx.AsyncClient, name: str, value: float) -> bool:
    return _samples((await client.get("/metrics")).text).get(name) == value


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nope"),
        ("POST", "/api/nope"),
        ("GET", "/api"),
        ("GET", "/static/does-not-exist.js"),
        ("GET", "/.env"),
    ],
)
@shared_loop
async def test_unknown_route_is_a_json_404(http: httpx.AsyncClient, method, path) -> None:
    assert_error(await http.request(method, path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/join"),
        ("PUT", "/api/click"),
        ("GET", "/api/click"),
        ("POST", "/api/state"),
        ("DELETE", "/api/leaderboard"),
        ("POST", "/api/users/Ann"),
        ("GET", "/api/admin/users/Ann"),
        ("POST", "/healthz"),
    ],
)
@shared_loop
async def test_wrong_method_is_a_json_405(http: httpx.AsyncClient, method, path) -> None:
    response = await http.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers.get("allow")
