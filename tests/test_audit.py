"""The audit log: who changed which user from what to what, kept in SQL, paged newest first."""

from __future__ import annotations

from typing import Any

import pymysql

from service.admin import hash_token, new_token
from service.counter import Counter
from service.keys import Keys
from service.shards import Shards
from service.store import Store
from tests.checks import assert_error, bearer
from tests.conftest import MYSQL
from tests.support import join
from tests.worker_support import lose_everything
from worker.restore import Restorer
from worker.snapshot import Snapshotter

ADA, BEA = new_token(), new_token()
NAMED = (("ada", hash_token(ADA)), ("bea", hash_token(BEA)))


def actions(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (e["admin"], e["action"], e["username"], e["before"], e["after"]) for e in body["entries"]
    ]


async def test_two_named_admins_are_audited_and_the_log_survives_a_redis_loss(
    serve: Any, counter: Counter, redis: Any, keys: Keys
) -> None:
    server = await serve(admin_tokens=NAMED)
    async with server.client() as http:
        ann = await join(http, "Ann")
        await join(http, "Cy")
        assert (
            await http.post("/api/click", json={"n": 5}, headers=bearer(ann))
        ).status_code == 200
        edit = await http.put("/api/admin/users/ann", json={"count": 40}, headers=bearer(ADA))
        assert edit.status_code == 200, edit.text
        edit = await http.put("/api/admin/users/Ann", json={"count": 7}, headers=bearer(BEA))
        assert edit.status_code == 200, edit.text
        assert (await http.delete("/api/admin/users/Cy", headers=bearer(BEA))).status_code == 200
        # A refused action (no such user) changes nothing and records nothing.
        gone = await http.put("/api/admin/users/Nobody", json={"count": 1}, headers=bearer(ADA))
        assert_error(gone, 404, "not_found")

        expected = [
            ("bea", "delete", "Cy", 0, None),
            ("bea", "edit", "Ann", 40, 7),
            ("ada", "edit", "Ann", 5, 40),
        ]
        body = (await http.get("/api/admin/audit", headers=bearer(ADA))).json()
        assert actions(body) == expected and body["next"] is None
        first = body["entries"][0]
        assert first["address"] == "127.0.0.1" and first["at"].endswith("+00:00")
        assert first["at_ms"] >= body["entries"][-1]["at_ms"]

        # Paged, newest first: a page of two, then the rest from its cursor.
        page = (await http.get("/api/admin/audit?limit=2", headers=bearer(ADA))).json()
        assert actions(page) == expected[:2] and page["next"] is not None
        rest = await http.get(
            f"/api/admin/audit?limit=2&before={page['next']}", headers=bearer(BEA)
        )
        assert actions(rest.json()) == expected[2:] and rest.json()["next"] is None
        for query in (
            "limit=0",
            "limit=201",
            "limit=x",
            "before=-1",
            "before=1-0",
            "before=" + "9" * 19,
            "before=٣",
        ):
            response = await http.get(f"/api/admin/audit?{query}", headers=bearer(ADA))
            assert_error(response, 422, "invalid_paging")

        # Redis loses everything; the worker restores the counts from the snapshot.
        store = Store(server.settings.database_url)
        await Snapshotter(redis, Shards(keys.prefix), store).snapshot(fence=1)
        await lose_everything(redis, Shards(keys.prefix))
        assert await Restorer(redis, Shards(keys.prefix), store).run(lambda: True) == 1
        after = (await http.get("/api/admin/audit", headers=bearer(BEA))).json()
        assert actions(after) == expected
        assert (await http.get("/api/users/Ann")).json()["count"] == 7


async def test_no_record_no_action_when_the_store_is_down(
    serve: Any, counter: Counter, mysql_url: str
) -> None:
    server = await serve(admin_tokens=NAMED, database_url=mysql_url)
    async with server.client() as http:
        await join(http, "Ann")
        edit = await http.put("/api/admin/users/Ann", json={"count": 3}, headers=bearer(ADA))
        assert edit.status_code == 200, edit.text
        body = (await http.get("/api/admin/audit", headers=bearer(ADA))).json()
        assert actions(body) == [("ada", "edit", "Ann", 0, 3)]  # on MariaDB too

        conn = pymysql.connect(**MYSQL)  # type: ignore[arg-type]
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE `{mysql_url.rsplit('/', 1)[1]}`")
        conn.close()
        refused = await http.put("/api/admin/users/Ann", json={"count": 9}, headers=bearer(BEA))
        assert_error(refused, 503, "audit_unavailable")
        assert "Retry-After" in refused.headers
        assert_error(
            await http.delete("/api/admin/users/Ann", headers=bearer(BEA)), 503, "audit_unavailable"
        )
        assert (await http.get("/api/users/Ann")).json()["count"] == 3
