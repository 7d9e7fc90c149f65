"""The SQL store (MySQL/MariaDB or SQLite): snapshots of the counts and the token secret.

Blocking DB-API code on purpose: callers run it in a thread. A connection is
opened per operation, so a database that restarts needs no reconnect logic.

Since schema 5 the counters everyone shares (global, clicks total, minute buckets,
breakdowns, countries) are kept per Redis shard (service/shards.py), with each shard's
last committed cut generation; shard 0 holds what older versions stored. Readers that
want totals sum over shards (`shard=None`). Users stay one table: a user's shard is a
function of the name. `totals.shards` records the shard count the rows were written
with; only `relayout` (a full restore) changes it.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql

SCHEMA_VERSION = 6
BATCH_ROWS = 1000


class StaleFence(Exception):
    """A newer snapshot leader has claimed a fence; this (paused, old) leader must not write."""

    def __init__(self, fence: int, stored: int) -> None:
        super().__init__(f"fence {fence} is older than the stored {stored}")
        self.stored = stored


class RedisWentBack(Exception):
    """A cut's generation is not above its shard's last committed one: that shard lost
    recent writes (a failover to a lagging replica), so a snapshot of only its changes
    would break the invariant in SQL. The caller reconciles those shards (a full
    snapshot of each) instead.

    `stored`: shard index -> the generation SQL holds, for every shard that went back.
    """

    def __init__(self, stored: dict[int, int], generations: dict[int, int]) -> None:
        went = ", ".join(
            f"shard {i}: cut {generations[i]} not above the stored {g}"
            for i, g in sorted(stored.items())
        )
        super().__init__(f"cut generation went back ({went})")
        self.stored = stored
        self.generations = generations


class LayoutChanged(Exception):
    """SQL was written with another shard count: only a full restore may change it
    (Store.relayout); a snapshot of the new layout on top would mix the two."""

    def __init__(self, count: int, stored: int) -> None:
        super().__init__(
            f"the snapshot store holds {stored} shard(s), this worker writes {count};"
            " only a full restore (every shard lost) may change the shard count"
        )
        self.count = count
        self.stored = stored


@dataclass(frozen=True)
class UserRow:
    canon: str
    username: str
    nonce: str
    count: int
    # The highest personal milestone announced to this user (0: none).
    milestone: int = 0


@dataclass
class Cut:
    """One consistent instant of one Redis shard, as the snapshot job read it."""

    # None: this shard's share is whatever makes the sum over shards equal the sum of
    # the users after this write (a cut read in chunks, not at one instant).
    global_count: int | None
    clicks_total: int
    server_ms: int
    users: list[UserRow] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    minutes: dict[int, int] = field(default_factory=dict)
    # (day "YYYY-MM-DD", dimension, value) -> clicks that day
    breakdowns: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (canonical name, nonce) of tokens that died with their user
    tombstones: list[tuple[str, str]] = field(default_factory=list)
    # The cut's number (take_cut.lua); 0 for a cut that has none (no check).
    generation: int = 0
    # The highest global milestone announced (a hub value: the same in every cut).
    milestone_global: int = 0
    # The Redis shard this cut is of (0 on a single Redis).
    shard: int = 0
    # Click batch ids recorded since the last cut: (canon, id, first answer, expiry ms).
    idempotency: list[tuple[str, str, str, int]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return (
            len(self.users)
            + len(self.deleted)
            + len(self.minutes)
            + len(self.breakdowns)
            + len(self.tombstones)
        )


@dataclass(frozen=True)
class Share:
    """One shard's share of the shared counters, and its last committed cut generation."""

    global_count: int
    clicks_total: int
    generation: int


@dataclass(frozen=True)
class Totals:
    """The last snapshot: sums over shards, and each shard's share."""

    global_count: int
    clicks_total: int
    snapshot_ms: int
    fence: int
    milestone_global: int = 0
    # The shard count the snapshot was written with (1 before schema 5).
    shard_count: int = 1
    # Shard index -> its share; a shard never written has none.
    shares: dict[int, Share] = field(default_factory=dict)

    def generation(self, shard: int = 0) -> int:
        """The generation SQL last committed for this shard (0: none)."""
        share = self.shares.get(shard)
        return share.generation if share else 0


# Each step creates what a version adds; all are idempotent so that two
# workers starting at once can both run them (columns: see _COLUMNS).
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS users (
            canon VARCHAR(191) {bin} NOT NULL PRIMARY KEY,
            username VARCHAR(64) {bin} NOT NULL,
            count BIGINT NOT NULL,
            nonce VARCHAR(32) NOT NULL,
            updated_at BIGINT NOT NULL
        ){table}""",
        """CREATE TABLE IF NOT EXISTS totals (
            id INTEGER NOT NULL PRIMARY KEY,
            global_count BIGINT NOT NULL,
            clicks_total BIGINT NOT NULL,
            snapshot_ms BIGINT NOT NULL,
            fence BIGINT NOT NULL
        ){table}""",
        """CREATE TABLE IF NOT EXISTS minutes (
            minute BIGINT NOT NULL PRIMARY KEY,
            clicks BIGINT NOT NULL
        ){table}""",
        """CREATE TABLE IF NOT EXISTS tombstones (
            canon VARCHAR(191) {bin} NOT NULL,
            nonce VARCHAR(32) NOT NULL,
            deleted_ms BIGINT NOT NULL,
            PRIMARY KEY (canon, nonce)
        ){table}""",
    ],
    2: [
        """CREATE TABLE IF NOT EXISTS breakdowns (
            day CHAR(10) NOT NULL,
            dimension VARCHAR(16) NOT NULL,
            value VARCHAR(64) {bin} NOT NULL,
            clicks BIGINT NOT NULL,
            PRIMARY KEY (day, dimension, value)
        ){table}""",
    ],
    3: [],
    # The admin audit log (service/audit.py): written directly, never through Redis.
    4: [
        """CREATE TABLE IF NOT EXISTS audit (
            id {autoid},
            at_ms BIGINT NOT NULL,
            admin VARCHAR(64) {bin} NOT NULL,
            action VARCHAR(32) NOT NULL,
            username VARCHAR(64) {bin} NULL,
            before_count BIGINT NULL,
            after_count BIGINT NULL,
            address VARCHAR(64) NOT NULL
        ){table}""",
    ],
}

_MIGRATIONS[5] = [
    # The shared counters per Redis shard (schema 5). The old tables (totals' counts,
    # minutes, breakdowns) are copied into shard 0 below and then left alone.
    """CREATE TABLE IF NOT EXISTS shard_totals (
        shard INTEGER NOT NULL PRIMARY KEY,
        global_count BIGINT NOT NULL,
        clicks_total BIGINT NOT NULL,
        generation BIGINT NOT NULL
    ){table}""",
    """CREATE TABLE IF NOT EXISTS shard_minutes (
        shard INTEGER NOT NULL,
        minute BIGINT NOT NULL,
        clicks BIGINT NOT NULL,
        PRIMARY KEY (shard, minute)
    ){table}""",
    """CREATE TABLE IF NOT EXISTS shard_breakdowns (
        shard INTEGER NOT NULL,
        day CHAR(10) NOT NULL,
        dimension VARCHAR(16) NOT NULL,
        value VARCHAR(64) {bin} NOT NULL,
        clicks BIGINT NOT NULL,
        PRIMARY KEY (shard, day, dimension, value)
    ){table}""",
    # Idempotent copies (a concurrent migration copies the same rows, and is ignored),
    # from the old tables (created here if a database somehow lacks them).
    _MIGRATIONS[1][2],
    _MIGRATIONS[2][0],
    """{ignore} INTO shard_totals (shard, global_count, clicks_total, generation)
        SELECT 0, global_count, clicks_total, generation FROM totals WHERE id = 1""",
    """{ignore} INTO shard_minutes (shard, minute, clicks) SELECT 0, minute, clicks FROM minutes""",
    """{ignore} INTO shard_breakdowns (shard, day, dimension, value, clicks)
        SELECT 0, day, dimension, value, clicks FROM breakdowns""",
]

_MIGRATIONS[6] = [
    # Click batch ids and their first answers (schema 6), so that a batch counted before
    # a snapshot and sent again after a Redis loss counts once (Store.idempotency).
    """CREATE TABLE IF NOT EXISTS idempotency (
        canon VARCHAR(191) {bin} NOT NULL,
        click_id VARCHAR(64) {bin} NOT NULL,
        answer VARCHAR(128) NOT NULL,
        expires_ms BIGINT NOT NULL,
        PRIMARY KEY (canon, click_id)
    ){table}""",
]

# Columns a version adds to an existing table: (table, column, definition). Added
# only when missing, since neither SQLite nor MySQL 8 has ADD COLUMN IF NOT EXISTS.
# A version's columns are added before its statements run.
_COLUMNS: dict[int, list[tuple[str, str, str]]] = {
    3: [
        ("users", "milestone", "BIGINT NOT NULL DEFAULT 0"),
        ("totals", "milestone", "BIGINT NOT NULL DEFAULT 0"),
        ("totals", "generation", "BIGINT NOT NULL DEFAULT 0"),
    ],
    5: [("totals", "shards", "BIGINT NOT NULL DEFAULT 1")],
}


class Store:
    """One SQL database; the dialect differences are a placeholder and an upsert clause."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self._migrated = False
        self.is_mysql = parts.scheme in ("mysql", "mysql+pymysql")
        if self.is_mysql:
            self._mysql_args: dict[str, Any] = {
                "host": parts.hostname or "127.0.0.1",
                "port": parts.port or 3306,
                "user": unquote(parts.username or "root"),
                "password": unquote(parts.password or ""),
                "database": parts.path.lstrip("/") or "clickky",
                "charset": "utf8mb4",
                "connect_timeout": 5,
                "read_timeout": 60,
                "write_timeout": 60,
                "autocommit": False,
            }
        else:
            # sqlite:///relative/path or sqlite:////absolute/path
            self._sqlite_path = url.split("sqlite:///", 1)[1] if "sqlite:///" in url else url

    def describe(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url)
        if parts.password:
            return self.url.replace(":" + parts.password + "@", ":***@")
        return self.url

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection in a transaction: committed on success, rolled back on error."""
        conn: Any
        if self.is_mysql:
            conn = pymysql.connect(**self._mysql_args)
        else:
            conn = sqlite3.connect(self._sqlite_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # IMMEDIATE takes the write lock at once: the SQLite spelling of FOR UPDATE.
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _sql(self, statement: str) -> str:
        return statement if self.is_mysql else statement.replace("%s", "?")

    def _upsert(self, table: str, columns: Sequence[str], key: Sequence[str]) -> str:
        placeholders = ", ".join(["%s"] * len(columns))
        updates = [c for c in columns if c not in key]
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
        if self.is_mysql:
            # VALUES(col) works on MySQL 8 and MariaDB alike; MariaDB has no row alias.
            sets = ", ".join(f"{c} = VALUES({c})" for c in updates)
            return f"{head} ON DUPLICATE KEY UPDATE {sets}"
        sets = ", ".join(f"{c} = excluded.{c}" for c in updates)
        return self._sql(f"{head} ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")

    def _execute_many(self, conn: Any, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        cursor = conn.cursor()
        for start in range(0, len(rows), BATCH_ROWS):
            # pymysql turns INSERT ... VALUES (...) into one multi-row statement per call.
            cursor.executemany(statement, rows[start : start + BATCH_ROWS])

    # -- schema ------------------------------------------------------------
    def _create_database(self) -> None:
        """MySQL: create the database named in the URL if it is missing."""
        args = {k: v for k, v in self._mysql_args.items() if k != "database"}
        conn = pymysql.connect(**args)
        try:
            with conn.cursor() as cursor:
                name = str(self._mysql_args["database"]).replace("`", "``")
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        finally:
            conn.close()

    def migrate(self) -> int:
        """Create or upgrade the schema to SCHEMA_VERSION; safe to run concurrently.

        Once per Store: the instance's secret and fresh-start checks and every worker
        job call it, and only the first call needs to touch the database.
        """
        if self._migrated:
            return SCHEMA_VERSION
        if self.is_mysql:
            self._create_database()
        bin_collation = "COLLATE utf8mb4_bin" if self.is_mysql else ""
        table = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if self.is_mysql else ""
        autoid = (
            "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
            if self.is_mysql
            else "INTEGER PRIMARY KEY AUTOINCREMENT"
        )
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS meta (k VARCHAR(64) NOT NULL PRIMARY KEY,"
                f" v VARCHAR(255) NOT NULL){table}"
            )
            cursor.execute(self._sql("SELECT v FROM meta WHERE k = %s"), ("schema_version",))
            row = cursor.fetchone()
            current = int(row[0]) if row else 0
            ignore = "INSERT IGNORE" if self.is_mysql else "INSERT OR IGNORE"
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for name, column, definition in _COLUMNS.get(version, []):
                    self._add_column(cursor, name, column, definition)
                for statement in _MIGRATIONS[version]:
                    cursor.execute(
                        statement.format(
                            bin=bin_collation, table=table, autoid=autoid, ignore=ignore
                        )
                    )
            if current < SCHEMA_VERSION:
                cursor.execute(
                    self._upsert("meta", ("k", "v"), ("k",)),
                    ("schema_version", str(SCHEMA_VERSION)),
                )
        self._migrated = True
        return SCHEMA_VERSION

    def _add_column(self, cursor: Any, table: str, column: str, definition: str) -> None:
        """ALTER TABLE ... ADD COLUMN unless the column exists (a concurrent migration)."""
        if self.is_mysql:
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.columns"
                " WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s",
                (table, column),
            )
            present = int(cursor.fetchone()[0]) > 0
        else:
            cursor.execute(f"PRAGMA table_info({table})")
            present = any(row[1] == column for row in cursor.fetchall())
        if not present:
            try:
                cursor.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            except (pymysql.MySQLError, sqlite3.OperationalError) as exc:
                if "uplicate column" not in str(exc):  # another worker added it just now
                    raise

    def schema_version(self) -> int:
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql("SELECT v FROM meta WHERE k = %s"), ("schema_version",))
            row = cursor.fetchone()
            return int(row[0]) if row else 0

    # -- the secret ----------------------------------------------------------
    def secret(self) -> str:
        """The token secret: generated by whoever asks first, then the same for everyone."""
        self.migrate()
        with self.connect() as conn:
            cursor = conn.cursor()
            ignore = "INSERT IGNORE" if self.is_mysql else "INSERT OR IGNORE"
            cursor.execute(
                self._sql(f"{ignore} INTO meta (k, v) VALUES (%s, %s)"),
                ("secret_key", secrets.token_urlsafe(32)),
            )
            cursor.execute(self._sql("SELECT v FROM meta WHERE k = %s"), ("secret_key",))
            return str(cursor.fetchone()[0])

    # -- snapshots -----------------------------------------------------------
    def totals(self) -> Totals | None:
        """The last snapshot's totals (summed over shards), or None when none was taken."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT snapshot_ms, fence, milestone, shards FROM totals WHERE id = 1")
            row = cursor.fetchone()
            cursor.execute("SELECT shard, global_count, clicks_total, generation FROM shard_totals")
            shares = {int(r[0]): Share(int(r[1]), int(r[2]), int(r[3])) for r in cursor.fetchall()}
        if row is None:
            return None
        snapshot_ms, fence, milestone, count = (int(v) for v in row)
        return Totals(
            global_count=sum(s.global_count for s in shares.values()),
            clicks_total=sum(s.clicks_total for s in shares.values()),
            snapshot_ms=snapshot_ms,
            fence=fence,
            milestone_global=milestone,
            shard_count=count,
            shares=shares,
        )

    def claim_fence(self, writer: str) -> int:
        """A fence number no writer has had before, made the newest: every write under an
        older one is refused from now on. Kept in SQL, so a Redis that lost data or went
        back in time (a lagging replica) can never hand the same fence to two leaders."""
        with self.connect() as conn:
            cursor = conn.cursor()
            ignore = "INSERT IGNORE" if self.is_mysql else "INSERT OR IGNORE"
            cursor.execute(self._sql(f"{ignore} INTO meta (k, v) VALUES (%s, %s)"), ("fence", "0"))
            fence = self._stored_fence(cursor) + 1
            cursor.execute(self._sql("UPDATE meta SET v = %s WHERE k = %s"), (str(fence), "fence"))
            cursor.execute(self._upsert("meta", ("k", "v"), ("k",)), ("fence_writer", writer[:255]))
            return fence

    def _stored_fence(self, cursor: Any) -> int:
        """The newest fence claimed (or written, by a version before claims), locked."""
        lock = " FOR UPDATE" if self.is_mysql else ""
        cursor.execute(self._sql(f"SELECT v FROM meta WHERE k = %s{lock}"), ("fence",))
        claimed = cursor.fetchone()
        cursor.execute(f"SELECT fence FROM totals WHERE id = 1{lock}")
        written = cursor.fetchone()
        return max(int(claimed[0]) if claimed else 0, int(written[0]) if written else 0)

    def _check_writer(self, cursor: Any, fence: int, shard_count: int | None) -> None:
        """Raise StaleFence for an older fence, LayoutChanged for another shard count
        (None: any count, for relayout itself)."""
        stored = self._stored_fence(cursor)
        if stored > fence:
            raise StaleFence(fence, stored)
        cursor.execute("SELECT shards FROM totals WHERE id = 1")
        row = cursor.fetchone()
        if shard_count is not None and row is not None and int(row[0]) != shard_count:
            raise LayoutChanged(shard_count, int(row[0]))

    def write_snapshot(self, cuts: Cut | Sequence[Cut], fence: int, *, shard_count: int = 1) -> int:
        """Write the cuts of one snapshot (one per shard, or a subset) in one transaction.

        Refused as a whole when a newer fence has written (StaleFence), when SQL holds
        another shard count (LayoutChanged), or when a cut's generation is not above its
        shard's last committed one (RedisWentBack, naming every such shard). Returns rows.
        """
        cuts = [cuts] if isinstance(cuts, Cut) else list(cuts)
        now_ms = int(time.time() * 1000)
        with self.connect() as conn:
            cursor = conn.cursor()
            self._check_writer(cursor, fence, shard_count)
            cursor.execute("SELECT shard, generation FROM shard_totals")
            committed = {int(shard): int(g) for shard, g in cursor.fetchall()}
            went_back = {
                cut.shard: committed[cut.shard]
                for cut in cuts
                if cut.generation and cut.generation <= committed.get(cut.shard, 0)
            }
            if went_back:
                raise RedisWentBack(went_back, {c.shard: c.generation for c in cuts})
            for cut in cuts:
                self._write_cut(conn, cut, now_ms)
            cursor.execute(self._sql("DELETE FROM idempotency WHERE expires_ms < %s"), (now_ms,))
            # Shares read in chunks take what makes the sum equal SUM(users) (Cut.global_count).
            unknown = [cut for cut in cuts if cut.global_count is None]
            if unknown:
                cursor.execute("SELECT COALESCE(SUM(count), 0) FROM users")
                users = int(cursor.fetchone()[0])
                cursor.execute("SELECT shard, global_count FROM shard_totals")
                known = {int(shard): int(g) for shard, g in cursor.fetchall()}
                known.update({c.shard: c.global_count for c in cuts if c.global_count is not None})
                for cut in unknown:
                    known[cut.shard] = 0
                unknown[0].global_count = users - sum(known.values())
                for cut in unknown[1:]:
                    cut.global_count = 0
            self._execute_many(
                conn,
                self._upsert(
                    "shard_totals",
                    ("shard", "global_count", "clicks_total", "generation"),
                    ("shard",),
                ),
                [(c.shard, c.global_count, c.clicks_total, c.generation) for c in cuts],
            )
            self._write_totals(
                cursor,
                fence=fence,
                snapshot_ms=min((c.server_ms for c in cuts), default=now_ms),
                milestone=max((c.milestone_global for c in cuts), default=0),
                shard_count=shard_count,
            )
        return sum(cut.rows for cut in cuts)

    def _write_cut(self, conn: Any, cut: Cut, now_ms: int) -> None:
        """One shard's users, tombstones, batch ids and shares of the stats (not its totals
        row)."""
        if cut.idempotency:
            self._execute_many(
                conn,
                self._upsert(
                    "idempotency",
                    ("canon", "click_id", "answer", "expires_ms"),
                    ("canon", "click_id"),
                ),
                cut.idempotency,
            )
        if cut.deleted:
            self._execute_many(
                conn,
                self._sql("DELETE FROM users WHERE canon = %s"),
                [(canon,) for canon in cut.deleted],
            )
        if cut.users:
            self._execute_many(
                conn,
                self._upsert(
                    "users",
                    ("canon", "username", "count", "nonce", "updated_at", "milestone"),
                    ("canon",),
                ),
                [(u.canon, u.username, u.count, u.nonce, now_ms, u.milestone) for u in cut.users],
            )
        if cut.minutes:
            self._execute_many(
                conn,
                self._upsert("shard_minutes", ("shard", "minute", "clicks"), ("shard", "minute")),
                [(cut.shard, minute, clicks) for minute, clicks in sorted(cut.minutes.items())],
            )
        if cut.tombstones:
            self._execute_many(
                conn,
                self._upsert("tombstones", ("canon", "nonce", "deleted_ms"), ("canon", "nonce")),
                [(canon, nonce, now_ms) for canon, nonce in cut.tombstones],
            )
        if cut.breakdowns:
            self._execute_many(
                conn,
                self._upsert(
                    "shard_breakdowns",
                    ("shard", "day", "dimension", "value", "clicks"),
                    ("shard", "day", "dimension", "value"),
                ),
                [(cut.shard, *key, clicks) for key, clicks in sorted(cut.breakdowns.items())],
            )

    def _write_totals(
        self, cursor: Any, *, fence: int, snapshot_ms: int, milestone: int, shard_count: int
    ) -> None:
        """The snapshot's row: its fence and layout, and the sums over shards (which a
        reader of a version before schema 5 reads as the totals)."""
        cursor.execute("SELECT COALESCE(MAX(milestone), 0) FROM totals WHERE id = 1")
        milestone = max(milestone, int(cursor.fetchone()[0]))
        cursor.execute(
            "SELECT COALESCE(SUM(global_count), 0), COALESCE(SUM(clicks_total), 0)"
            " FROM shard_totals"
        )
        global_count, clicks_total = (int(v) for v in cursor.fetchone())
        columns = (
            "id",
            "global_count",
            "clicks_total",
            "snapshot_ms",
            "fence",
            "milestone",
            "shards",
        )
        # (Its `generation` column is unused since schema 5: see shard_totals.)
        cursor.execute(
            self._upsert("totals", columns, ("id",)),
            (1, global_count, clicks_total, snapshot_ms, fence, milestone, shard_count),
        )

    def relayout(self, shard_count: int, fence: int) -> bool:
        """Make SQL's shared counters those of `shard_count` shards, for a full restore.

        The users need nothing (a user's shard is computed from the name). Every shared
        counter is summed into shard 0 (readers sum over shards, so every total is
        unchanged); every shard's generation becomes the highest any had, so no shard's
        next cut is taken for one that went back. One transaction, fenced. Returns False
        when SQL already has this count (nothing to do).
        """
        with self.connect() as conn:
            cursor = conn.cursor()
            self._check_writer(cursor, fence, None)
            cursor.execute("SELECT shards, snapshot_ms, milestone FROM totals WHERE id = 1")
            row = cursor.fetchone()
            if row is None or int(row[0]) == shard_count:
                return False
            for table, key in (
                ("shard_minutes", ("minute",)),
                ("shard_breakdowns", ("day", "dimension", "value")),
            ):
                cursor.execute(
                    f"SELECT {', '.join(key)}, SUM(clicks) FROM {table} GROUP BY {', '.join(key)}"
                )
                summed = [(0, *r[:-1], int(r[-1])) for r in cursor.fetchall()]
                cursor.execute(f"DELETE FROM {table}")
                columns = ("shard", *key, "clicks")
                marks = ", ".join(["%s"] * len(columns))
                self._execute_many(
                    conn,
                    self._sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"),
                    summed,
                )
            cursor.execute(
                "SELECT COALESCE(SUM(global_count), 0), COALESCE(SUM(clicks_total), 0),"
                " COALESCE(MAX(generation), 0) FROM shard_totals"
            )
            global_count, clicks_total, generation = (int(v) for v in cursor.fetchone())
            cursor.execute("DELETE FROM shard_totals")
            self._execute_many(
                conn,
                self._sql(
                    "INSERT INTO shard_totals (shard, global_count, clicks_total, generation)"
                    " VALUES (%s, %s, %s, %s)"
                ),
                [
                    (i, global_count if i == 0 else 0, clicks_total if i == 0 else 0, generation)
                    for i in range(shard_count)
                ],
            )
            self._write_totals(
                cursor,
                fence=fence,
                snapshot_ms=int(row[1]),
                milestone=int(row[2]),
                shard_count=shard_count,
            )
        return True

    # -- reads for restore, export and tests --------------------------------
    def users_after(self, canon: str, limit: int) -> list[UserRow]:
        """Users in canonical-name order after `canon`: restore's resumable cursor."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT canon, username, nonce, count, milestone FROM users WHERE canon > %s"
                    " ORDER BY canon LIMIT %s"
                ),
                (canon, limit),
            )
            return [
                UserRow(str(c), str(u), str(n), int(k), int(m))
                for c, u, n, k, m in cursor.fetchall()
            ]

    def dead_tokens(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (canonical name, nonce) pairs belong to deleted users."""
        found: set[tuple[str, str]] = set()
        with self.connect() as conn:
            cursor = conn.cursor()
            for canon, nonce in pairs:
                cursor.execute(
                    self._sql("SELECT 1 FROM tombstones WHERE canon = %s AND nonce = %s"),
                    (canon, nonce),
                )
                if cursor.fetchone():
                    found.add((canon, nonce))
        return found

    def tombstones_of(self, canons: Sequence[str]) -> set[tuple[str, str]]:
        """Every dead (canonical name, nonce) of these names, in queries of BATCH_ROWS names."""
        found: set[tuple[str, str]] = set()
        with self.connect() as conn:
            cursor = conn.cursor()
            for start in range(0, len(canons), BATCH_ROWS):
                chunk = canons[start : start + BATCH_ROWS]
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(
                    self._sql(f"SELECT canon, nonce FROM tombstones WHERE canon IN ({marks})"),
                    tuple(chunk),
                )
                found.update((str(c), str(n)) for c, n in cursor.fetchall())
        return found

    def user_sum(self) -> tuple[int, int]:
        """(number of users, sum of their counts): checks the invariant in SQL."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT COUNT(*), COALESCE(SUM(count), 0) FROM users")
            users, total = cursor.fetchone()
            return int(users), int(total)

    @staticmethod
    def _of_shard(shard: int | None) -> tuple[str, tuple[int, ...]]:
        """The WHERE clause's tail and parameter that pick one shard's rows (None: all)."""
        return ("", ()) if shard is None else (" AND shard = %s", (shard,))

    def minutes_between(self, start: int, end: int, shard: int | None = None) -> dict[int, int]:
        """Unix minute (s) -> clicks, for start <= minute < end: one shard's, or the sums."""
        where, param = self._of_shard(shard)
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT minute, SUM(clicks) FROM shard_minutes"
                    f" WHERE minute >= %s AND minute < %s{where} GROUP BY minute"
                ),
                (start, end, *param),
            )
            return {int(m): int(c) for m, c in cursor.fetchall()}

    def breakdowns_between(
        self, first_day: str, last_day: str, shard: int | None = None
    ) -> dict[tuple[str, str, str], int]:
        """(day, dimension, value) -> clicks for days first..last: one shard's, or the sums."""
        where, param = self._of_shard(shard)
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT day, dimension, value, SUM(clicks) FROM shard_breakdowns"
                    f" WHERE day >= %s AND day <= %s{where} GROUP BY day, dimension, value"
                ),
                (first_day, last_day, *param),
            )
            return {(str(d), str(k), str(v)): int(c) for d, k, v, c in cursor.fetchall()}

    def country_totals(self, shard: int | None = None) -> dict[str, int]:
        """All-time clicks per country, for the country board: one shard's, or the sums."""
        where, param = self._of_shard(shard)
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT value, SUM(clicks) FROM shard_breakdowns"
                    f" WHERE dimension = 'country'{where} GROUP BY value"
                ),
                param,
            )
            return {str(v): int(c) for v, c in cursor.fetchall()}

    def all_users(self) -> list[tuple[str, int, int]]:
        """(username, count, updated_at ms) of every user, as of the last snapshot."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT username, count, updated_at FROM users ORDER BY count DESC, username"
            )
            return [(str(u), int(c), int(t)) for u, c, t in cursor.fetchall()]

    def idempotency(self, now_ms: int) -> list[tuple[str, str, str, int]]:
        """The click batch ids not yet expired at now_ms: (canon, id, first answer, expiry
        ms), for a restore to put back beside the counts of the same snapshot."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT canon, click_id, answer, expires_ms FROM idempotency"
                    " WHERE expires_ms > %s"
                ),
                (now_ms,),
            )
            return [(str(c), str(i), str(a), int(e)) for c, i, a, e in cursor.fetchall()]
