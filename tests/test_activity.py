"""The activity feed: live to admin sockets on every instance, never to players, and paged."""

from __future__ import annotations

from typing import Any

import pytest
import socketio

from service.activity import Feed
from service.keys import Keys
from service.shards import Shards
from tests.checks import ADMIN, ADMIN_TOKEN, assert_error, bearer
from tests.support import Player, eventually, join, make_player
from tests.worker_support import lose_everything
from worker.main import Worker


def kinds(client: Player) -> list[str]:
    return [data["kind"] for event, data in client.events if event == "activity"]


async def test_admins_on_any_instance_see_it_live_and_players_never(
    serve: Any, counter: Any
) -> None:
    one, two = await serve(), await serve()
    async with one.client() as http:
        admin = await Player(two.url, auth={"admin": ADMIN_TOKEN}).connect()
        watcher = await Player(one.url).connect()
        ann = await join(http, "Ann")
        player = await Player(one.url, ann).connect()
        try:
            await eventually(lambda: kinds(admin) == ["join"])
            edit = await http.put("/api/admin/users/Ann", json={"count": 999}, headers=ADMIN)
            assert edit.status_code == 200
            assert (await player.click(1))["global"] == 1000  # crosses the 1,000 milestone
            await eventually(lambda: kinds(admin) == ["join", "admin", "milestone"])
            feed = {data["kind"]: data for event, data in admin.events if event == "activity"}
            assert feed["join"]["username"] == "Ann"
            assert (feed["admin"]["admin"], feed["admin"]["before"], feed["admin"]["after"]) == (
                "admin",
                0,
                999,
            )
            assert feed["milestone"]["value"] == 1000
            await eventually(lambda: any(e == "milestone" for e, _ in watcher.events))
            for other in (player, watcher):
                assert "activity" not in [event for event, _ in other.events]

            # The history pages back, newest first, through the same entries.
            page = (await http.get("/api/admin/activity?limit=2", headers=ADMIN)).json()
            assert [e["kind"] for e in page["entries"]] == ["milestone", "admin"]
            assert page["entries"][0]["id"] == feed["milestone"]["id"]
            older = await http.get(f"/api/admin/activity?before={page['next']}", headers=ADMIN)
            assert [e["kind"] for e in older.json()["entries"]] == ["join"]
            assert older.json()["next"] is None
            assert_error(await http.get("/api/admin/activity"), 401, "unauthorized")
            for query in (
                "before=x",
                "before=1",
                "before=1-2-3",
                "limit=0",
                "before=" + "9" * 16 + "-0",
            ):
                bad = await http.get(f"/api/admin/activity?{query}", headers=ADMIN)
                assert_error(bad, 422, "invalid_paging")
        finally:
            for client in (admin, watcher, player):
                await client.close()


async def refusal(url: str, auth: dict[str, Any]) -> dict[str, Any]:
    """The connect_error body of a refused admin socket."""
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[dict[str, Any]] = []
    sio.on("connect_error", errors.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
    await sio.disconnect()
    assert errors, "no connect_error"
    assert errors[0]["message"] == errors[0]["data"]["error"]
    return errors[0]["data"]


@pytest.mark.parametrize("auth", [{"admin": "wrong"}, {"admin": 7}, {"admin": ""}])
async def test_a_bad_admin_socket_is_refused(server: Any, auth: dict[str, Any]) -> None:
    assert (await refusal(server.url, auth))["error"] == "forbidden"


async def test_worker_events_reach_admins_over_the_channel(
    server: Any, redis: Any, keys: Keys
) -> None:
    """The worker has no Bus: it publishes on the same channel, and every instance delivers."""
    admin = await Player(server.url, auth={"admin": ADMIN_TOKEN}).connect()
    try:
        feed = Feed(redis, keys, "worker-test")
        added = await feed.add("lease", worker='w"1\\', fence=3)
        await eventually(lambda: kinds(admin) == ["lease"])
        assert added is not None and admin.events[-1][1] == added  # the id spliced in by Lua
        assert (await feed.page(1))[0] == added
    finally:
        await admin.close()


async def test_blocked_sockets_wait_like_http(serve: Any, counter: Any) -> None:
    server = await serve(admin_failures_per_min=2)
    for _ in range(2):
        assert (await refusal(server.url, {"admin": "x"}))["error"] == "forbidden"
    blocked = await refusal(server.url, {"admin": ADMIN_TOKEN})
    assert blocked["error"] == "rate_limited" and blocked["retry_after_ms"] > 0
    async with server.client() as http:
        ok = await http.get("/api/admin/status", headers=bearer(ADMIN_TOKEN))
        assert_error(ok, 429, "rate_limited")  # the same address, the same count


async def test_the_worker_reports_lease_restore_and_failed_snapshots(
    make_settings: Any, counter: Any, redis: Any, keys: Keys
) -> None:
    worker = Worker(make_settings())
    feed = Feed(redis, keys, "reader")
    try:
        await worker.guard()  # takes the lease
        [lease] = await feed.page(10)
        assert (lease["kind"], lease["worker"], lease["fence"]) == ("lease", worker.worker_id, 1)
        await make_player(counter, "Ann")
        await worker.snapshot()
        await lose_everything(redis, Shards(keys.prefix))
        assert await worker._restore() == 1
        await worker._failed(RuntimeError("disk full"))
        failed, restored = await feed.page(10)
        assert (restored["kind"], restored["users"]) == ("restore", 1)
        assert failed["kind"] == "snapshot_failed" and "disk full" in failed["error"]
        assert failed["failures"] == 1
    finally:
        await worker.redis.aclose()
