"""The SQL store, run identically against SQLite and the machine's MariaDB."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pymysql
import pytest

from service.store import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    Cut,
    LayoutChanged,
    RedisWentBack,
    StaleFence,
    Store,
    UserRow,
)


@pytest.fixture
def store(store_url: str) -> Store:
    result = Store(store_url)
    result.migrate()
    return result


def _cut(users: list[UserRow], **kw: object) -> Cut:
    total = sum(u.count for u in users)
    return Cut(global_count=total, clicks_total=total, server_ms=1_000, users=users, **kw)  # type: ignore[arg-type]


def test_migrate_is_idempotent_and_versioned(store: Store) -> None:
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    assert store.schema_version() == SCHEMA_VERSION


def test_concurrent_migrations_agree(store: Store) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Store(store.url).migrate()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.schema_version() == SCHEMA_VERSION


def test_secret_is_generated_once(store: Store) -> None:
    first = store.secret()
    assert len(first) >= 32
    assert Store(store.url).secret() == first


def test_snapshot_round_trip_and_invariant(store: Store) -> None:
    users = [UserRow("ann", "Ann", "n1", 5), UserRow("zoë", "Zoë", "n2", 7)]
    assert store.totals() is None
    rows = store.write_snapshot(_cut(users, minutes={60: 3, 120: 9}), fence=1)
    assert rows == 4
    totals = store.totals()
    assert totals is not None and (totals.global_count, totals.fence) == (12, 1)
    assert store.user_sum() == (2, 12)
    assert store.users_after("", 10) == sorted(users, key=lambda u: u.canon)
    assert store.users_after("ann", 10) == [users[1]]
    assert store.minutes_between(0, 1000) == {60: 3, 120: 9}


def test_upsert_updates_and_delete_removes(store: Store) -> None:
    store.write_snapshot(_cut([UserRow("a", "A", "n", 1), UserRow("b", "B", "m", 2)]), fence=1)
    cut = _cut([UserRow("a", "A", "n", 10)], deleted=["b"], minutes={60: 4})
    cut.global_count = 10
    store.write_snapshot(cut, fence=1)
    assert store.user_sum() == (1, 10)
    assert store.totals().global_count == 10  # type: ignore[union-attr]


def test_names_differing_only_in_accents_are_distinct_rows(store: Store) -> None:
    # MySQL's default collation would make these one key; the store uses a binary one.
    store.write_snapshot(_cut([UserRow("e", "e", "1", 1), UserRow("é", "é", "2", 2)]), fence=1)
    assert store.user_sum() == (2, 3)


def test_an_older_fence_cannot_write(store: Store) -> None:
    store.write_snapshot(_cut([UserRow("a", "A", "n", 1)]), fence=5)
    with pytest.raises(StaleFence):
        store.write_snapshot(_cut([UserRow("a", "A", "n", 999)]), fence=4)
    assert store.user_sum() == (1, 1), "the refused snapshot must not have written anything"
    store.write_snapshot(_cut([UserRow("a", "A", "n", 2)]), fence=6)
    assert store.user_sum() == (1, 2)


def test_claimed_fences_never_repeat_and_refuse_older_writers(store: Store) -> None:
    store.write_snapshot(_cut([UserRow("a", "A", "n", 1)]), fence=3)  # before claims existed
    first = store.claim_fence("w1")
    second = Store(store.url).claim_fence("w2")
    assert (first, second) == (4, 5), "each claim is above every fence claimed or written"
    # The first claimer was paused past its lease: its write, even with an equal count of
    # leaders in Redis, is refused, and the newer one's goes through.
    with pytest.raises(StaleFence):
        store.write_snapshot(_cut([UserRow("a", "A", "n", 999)]), fence=first)
    store.write_snapshot(_cut([UserRow("a", "A", "n", 2)]), fence=second)
    assert store.user_sum() == (1, 2)
    assert store.claim_fence("w3") == 6


def test_a_cut_from_a_redis_that_went_back_is_refused(store: Store) -> None:
    store.write_snapshot(_cut([UserRow("a", "A", "n", 7)], generation=5), fence=1)
    for stale in (5, 4):
        with pytest.raises(RedisWentBack) as refused:
            store.write_snapshot(_cut([UserRow("a", "A", "n", 3)], generation=stale), fence=1)
        assert refused.value.stored == {0: 5}
    assert store.user_sum() == (1, 7), "nothing of the refused cut was written"
    store.write_snapshot(_cut([UserRow("a", "A", "n", 8)], generation=6), fence=1)
    assert store.totals().generation(0) == 6  # type: ignore[union-attr]


def test_each_shard_keeps_its_own_generation_and_share(store: Store) -> None:
    cuts = [
        _cut([UserRow("a", "A", "n", 7)], generation=5, shard=0),
        _cut([UserRow("b", "B", "m", 2)], generation=9, shard=1, minutes={60: 2}),
        _cut([], generation=1, shard=2, minutes={60: 5}),
    ]
    store.write_snapshot(cuts, fence=1, shard_count=3)
    totals = store.totals()
    assert totals is not None and (totals.global_count, totals.shard_count) == (9, 3)
    assert [totals.generation(i) for i in range(3)] == [5, 9, 1]
    assert store.minutes_between(0, 1000) == {60: 7}, "readers sum over shards"
    assert store.minutes_between(0, 1000, shard=2) == {60: 5}
    # Shard 1 went back (a lagging replica); shard 0 moved on: the whole write is refused,
    # naming shard 1 only.
    later = [
        _cut([UserRow("a", "A", "n", 8)], generation=6, shard=0),
        _cut([UserRow("b", "B", "m", 1)], generation=4, shard=1),
    ]
    with pytest.raises(RedisWentBack) as refused:
        store.write_snapshot(later, fence=1, shard_count=3)
    assert refused.value.stored == {1: 9}
    assert store.user_sum() == (2, 9), "nothing of the refused write landed"
    # A subset of shards (one restoring) may be written; the others keep their share.
    store.write_snapshot(later[:1], fence=1, shard_count=3)
    assert store.totals().global_count == 10  # type: ignore[union-attr]
    assert store.user_sum() == (2, 10)


def test_a_chunked_share_makes_the_sum_equal_the_users(store: Store) -> None:
    store.write_snapshot(
        [_cut([UserRow("a", "A", "n", 4)], shard=0), _cut([UserRow("b", "B", "m", 3)], shard=1)],
        fence=1,
        shard_count=2,
    )
    chunked = _cut([UserRow("b", "B", "m", 10)], shard=1)
    chunked.global_count = None  # read in chunks: no instant's global
    store.write_snapshot([chunked], fence=1, shard_count=2)
    assert store.totals().global_count == store.user_sum()[1] == 14  # type: ignore[union-attr]


def test_another_shard_count_needs_a_relayout(store: Store) -> None:
    store.write_snapshot(
        [
            _cut([UserRow("a", "A", "n", 4)], shard=0, generation=3, minutes={60: 4}),
            _cut([UserRow("b", "B", "m", 3)], shard=1, generation=7, minutes={60: 3, 120: 1}),
        ],
        fence=1,
        shard_count=2,
    )
    with pytest.raises(LayoutChanged):
        store.write_snapshot(_cut([UserRow("a", "A", "n", 5)]), fence=1, shard_count=4)
    with pytest.raises(StaleFence):
        store.relayout(4, fence=0)
    assert store.relayout(4, fence=1) and not store.relayout(4, fence=1)
    totals = store.totals()
    assert totals is not None and totals.shard_count == 4 and totals.global_count == 7
    assert [totals.generation(i) for i in range(4)] == [7, 7, 7, 7]
    assert store.minutes_between(0, 1000, shard=0) == {60: 7, 120: 1}
    assert store.minutes_between(0, 1000) == {60: 7, 120: 1}
    store.write_snapshot(_cut([UserRow("a", "A", "n", 5)], generation=8), fence=1, shard_count=4)


def test_milestone_memory_round_trips(store: Store) -> None:
    cut = _cut([UserRow("ann", "Ann", "n1", 150, milestone=100)], milestone_global=1000)
    store.write_snapshot(cut, fence=1)
    assert store.users_after("", 10) == [UserRow("ann", "Ann", "n1", 150, 100)]
    assert store.totals().milestone_global == 1000  # type: ignore[union-attr]


def test_a_version_2_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (k VARCHAR(64) NOT NULL PRIMARY KEY, v VARCHAR(255) NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    conn.execute(
        "CREATE TABLE users (canon VARCHAR(191) NOT NULL PRIMARY KEY, username VARCHAR(64)"
        " NOT NULL, count BIGINT NOT NULL, nonce VARCHAR(32) NOT NULL, updated_at BIGINT NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE totals (id INTEGER NOT NULL PRIMARY KEY, global_count BIGINT NOT NULL,"
        " clicks_total BIGINT NOT NULL, snapshot_ms BIGINT NOT NULL, fence BIGINT NOT NULL)"
    )
    conn.execute("INSERT INTO users VALUES ('ann', 'Ann', 4, 'n1', 0)")
    conn.execute("INSERT INTO totals VALUES (1, 4, 4, 1000, 9)")
    conn.commit()
    conn.close()
    store = Store(f"sqlite:///{path}")
    assert store.migrate() == SCHEMA_VERSION
    assert store.users_after("", 10) == [UserRow("ann", "Ann", "n1", 4, 0)]
    totals = store.totals()
    assert totals is not None and (totals.global_count, totals.fence, totals.generation(0)) == (
        4,
        9,
        0,
    )
    assert store.claim_fence("w") == 10


def test_a_version_4_database_keeps_its_counters_in_shard_0(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    old = Store(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (k VARCHAR(64) NOT NULL PRIMARY KEY, v VARCHAR(255) NOT NULL)")
    conn.commit()
    conn.close()
    with old.connect() as db:  # the version 4 schema, as a version 4 worker left it
        cursor = db.cursor()
        for version in range(1, 5):
            for statement in _MIGRATIONS[version]:
                cursor.execute(statement.format(bin="", table="", autoid="INTEGER PRIMARY KEY"))
        for column in ("milestone", "generation"):
            cursor.execute(f"ALTER TABLE totals ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0")
        cursor.execute("ALTER TABLE users ADD COLUMN milestone BIGINT NOT NULL DEFAULT 0")
        cursor.execute("INSERT INTO meta VALUES ('schema_version', '4')")
        cursor.execute("INSERT INTO users VALUES ('ann', 'Ann', 6, 'n1', 0, 100)")
        cursor.execute("INSERT INTO totals VALUES (1, 6, 9, 1000, 3, 1000, 12)")
        cursor.execute("INSERT INTO minutes VALUES (60, 9)")
        cursor.execute("INSERT INTO breakdowns VALUES ('2026-11-30', 'country', 'NZ', 9)")
    store = Store(f"sqlite:///{path}")
    assert store.migrate() == SCHEMA_VERSION == 6
    assert Store(store.url).migrate() == 6, "again: nothing copied twice"
    totals = store.totals()
    assert totals is not None
    assert (totals.global_count, totals.clicks_total, totals.milestone_global) == (6, 9, 1000)
    assert (totals.shard_count, totals.generation(0), sorted(totals.shares)) == (1, 12, [0])
    assert store.minutes_between(0, 1000, shard=0) == {60: 9}
    assert store.country_totals(shard=0) == {"NZ": 9}
    with pytest.raises(RedisWentBack):  # the generation check carries over
        store.write_snapshot(_cut([UserRow("ann", "Ann", "n1", 7)], generation=12), fence=3)


def test_tombstones_identify_dead_tokens(store: Store) -> None:
    store.write_snapshot(_cut([], tombstones=[("gone", "old")]), fence=1)
    assert store.dead_tokens([("gone", "old"), ("gone", "new"), ("x", "y")]) == {("gone", "old")}
    store.write_snapshot(_cut([], tombstones=[("gone", "newer"), ("z", "1")]), fence=1)
    assert store.tombstones_of(["gone", "x"]) == {("gone", "old"), ("gone", "newer")}


def test_a_failed_transaction_writes_nothing(store: Store) -> None:
    store.write_snapshot(_cut([UserRow("a", "A", "n", 1)]), fence=1)
    # The second row breaks NOT NULL half-way through the batch; the first must not stay.
    bad = Cut(
        global_count=3,
        clicks_total=3,
        server_ms=2_000,
        users=[UserRow("b", "B", "n", 2), UserRow("c", "C", "n", None)],  # type: ignore[arg-type]
    )
    with pytest.raises((pymysql.MySQLError, sqlite3.Error)):
        store.write_snapshot(bad, fence=1)
    assert store.user_sum() == (1, 1)
    assert store.totals().global_count == 1  # type: ignore[union-attr]


def test_mysql_batches_are_multi_row_statements(mysql_url: str) -> None:
    """pymysql's executemany must send one INSERT per batch, not one per row."""
    store = Store(mysql_url)
    store.migrate()
    users = [UserRow(f"u{i:05}", f"U{i}", "n", i) for i in range(2500)]
    conn = pymysql.connect(**store._mysql_args)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Com_insert'")
            before = int(cursor.fetchone()[1])
            store._execute_many(
                conn,
                store._upsert(
                    "users", ("canon", "username", "count", "nonce", "updated_at"), ("canon",)
                ),
                [(u.canon, u.username, u.count, u.nonce, 0) for u in users],
            )
            cursor.execute("SHOW SESSION STATUS LIKE 'Com_insert'")
            after = int(cursor.fetchone()[1])
        conn.commit()
    finally:
        conn.close()
    # 2500 rows in batches of 1000: three statements, where row-by-row would be 2500.
    assert after - before == 3
    assert store.user_sum() == (2500, sum(range(2500)))


def test_mysql_database_is_created_when_missing(mysql_url: str) -> None:
    url = mysql_url + "_new"
    store = Store(url)
    try:
        assert store.migrate() == SCHEMA_VERSION
        assert store.totals() is None
    finally:
        conn = pymysql.connect(**{k: v for k, v in store._mysql_args.items() if k != "database"})
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{store._mysql_args['database']}`")
        conn.close()
