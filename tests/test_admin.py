"""Admin authentication: hashed named tokens, rotation, and the failure limit per address."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.admin import Admins, hash_token, new_token
from service.keys import Keys
from tests.checks import ADMIN, assert_error, read_counts
from tests.support import join

ALICE, BOB = new_token(), new_token()
CLI = "import sys; from worker.cli import main; sys.exit(main(sys.argv[1:]))"


def _from(address: str, token: str) -> dict[str, str]:
    # The in-process uvicorn trusts X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS).
    return {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_named_tokens_match_by_hash_and_rotation_keeps_both(redis: Any, keys: Keys) -> None:
    rotated = new_token()
    admins = Admins(
        redis,
        keys,
        admin_token=None,
        named=[
            ("alice", hash_token(ALICE)),
            ("bob", hash_token(BOB)),
            ("alice", hash_token(rotated)),
        ],
    )
    assert len(ALICE) >= 32 and ALICE != BOB
    assert admins.identify(ALICE) == "alice" and admins.identify(rotated) == "alice"
    assert admins.identify(BOB) == "bob"
    assert admins.identify(ALICE[:-1]) is None and admins.identify("") is None
    assert admins.identify("\ud800") is None  # a lone surrogate from a socket's JSON


async def test_guessing_over_two_instances_is_refused_after_the_limit(
    serve: Any, counter: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    one = await serve(admin_tokens=(("alice", hash_token(ALICE)),))
    two = await serve(admin_tokens=(("alice", hash_token(ALICE)),))
    blocks_before = _metric("clickky_admin_auth_blocks_total")
    guesser, bystander = "203.0.113.7", "198.51.100.2"
    async with one.client() as a, two.client() as b:
        await join(a, "Ann")
        for i in range(10):  # alternating instances: the count is shared in Redis
            http = a if i % 2 else b
            response = await http.get("/api/admin/status", headers=_from(guesser, f"g{i}"))
            assert_error(response, 403, "forbidden")
        for http in (a, b):
            refused = await http.get("/api/admin/status", headers=_from(guesser, "g10"))
            body = assert_error(refused, 429, "rate_limited")
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
            assert 0 < body["retry_after_ms"] <= 60_000
            # The right token waits too: the limit tells nothing about the guesses.
            right = await http.put(
                "/api/admin/users/Ann", json={"count": 9}, headers=_from(guesser, ALICE)
            )
            assert_error(right, 429, "rate_limited")
        assert (await read_counts(a)).board == {"Ann": 0}
        # Another address is unaffected, on either instance.
        for http in (a, b):
            ok = await http.get("/api/admin/status", headers=_from(bystander, ALICE))
            assert ok.status_code == 200, ok.text

        # One warning line per address and window, however many instances saw guesses.
        blocked = [line for line in capsys.readouterr().err.splitlines() if "blocked" in line]
        assert len(blocked) == 1 and guesser in blocked[0]
        assert _metric("clickky_admin_auth_blocks_total") == blocks_before + 1
        audit = (await a.get("/api/admin/audit", headers=_from(bystander, ALICE))).json()
        assert [(e["action"], e["address"]) for e in audit["entries"]] == [
            ("login_blocked", guesser)
        ]
        metrics = (await b.get("/metrics")).text
        assert "clickky_admin_auth_failures_total" in metrics


async def test_missing_token_is_not_a_guess(serve: Any, counter: Any) -> None:
    server = await serve(admin_failures_per_min=2)
    async with server.client() as http:
        for _ in range(5):
            assert_error(await http.get("/api/admin/status"), 401, "unauthorized")
        assert (await http.get("/api/admin/status", headers=ADMIN)).status_code == 200


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ADMIN_TOKEN": "secret123"}, "ADMIN_TOKEN"),
        ({"ADMIN_TOKENS": "alice:not-a-hash"}, "ADMIN_TOKENS"),
    ],
)
def test_a_weak_admin_setting_stops_the_process(
    env: dict[str, str], variable: str, redis_url: str, tmp_path: Any
) -> None:
    """The real entry points refuse to start, with one line that names the variable."""
    base = {"REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "PATH": ""}
    for command in (
        [sys.executable, "-c", "import service.app"],
        [sys.executable, "-m", "worker"],
    ):
        done = subprocess.run(
            command, env=base | env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode != 0
        assert variable in done.stderr.strip().splitlines()[-1]
        if variable == "ADMIN_TOKEN":
            assert "at least 32 characters" in done.stderr
        assert "secret123" not in done.stderr  # the refused token is never echoed


def test_admin_token_command_prints_a_token_and_its_entry() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CLI, "admin-token", "--name", "alice"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[0].rsplit(" ", 1)[1]
    assert len(token) >= 32
    assert f"alice:{hash_token(token)}" in done.stdout
