"""The SQL store (MySQL/MariaDB or SQLite): snapshots of the counts and the token secret.

Blocking DB-API code on purpose: callers run it in a thread. A connection is
opened per operation, so a database that restarts needs no reconnect logic.
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

SCHEMA_VERSION = 4
BATCH_ROWS = 1000


class StaleFence(Exception):
    """A newer snapshot leader has claimed a fence; this (paused, old) leader must not write."""

    def __init__(self, fence: int, stored: int) -> None:
        super().__init__(f"fence {fence} is older than the stored {stored}")
        self.stored = stored


class RedisWentBack(Exception):
    """The cut's generation is not above the last committed one: Redis lost recent writes
    (a failover to a lagging replica), so a snapshot of only its changes would break the
    invariant in SQL. The caller reconciles (a full snapshot) instead."""

    def __init__(self, generation: int, stored: int) -> None:
        super().__init__(f"cut generation {generation} is not above the stored {stored}")
        self.generation = generation
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
    """One consistent instant of Redis, as the snapshot job read it."""

    # None: take it as the sum of the users after this write (a cut read in chunks).
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
    # The highest global milestone announced.
    milestone_global: int = 0

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
class Totals:
    global_count: int
    clicks_total: int
    snapshot_ms: int
    fence: int
    milestone_global: int = 0
    generation: int = 0


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

# Columns a version adds to an existing table: (table, column, definition). Added
# only when missing, since neither SQLite nor MySQL 8 has ADD COLUMN IF NOT EXISTS.
_COLUMNS: dict[int, list[tuple[str, str, str]]] = {
    3: [
        ("users", "milestone", "BIGINT NOT NULL DEFAULT 0"),
        ("totals", "milestone", "BIGINT NOT NULL DEFAULT 0"),
        ("totals", "generation", "BIGINT NOT NULL DEFAULT 0"),
    ],
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
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    cursor.execute(statement.format(bin=bin_collation, table=table, autoid=autoid))
                for name, column, definition in _COLUMNS.get(version, []):
                    self._add_column(cursor, name, column, definition)
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
        """The last snapshot's totals, or None when no snapshot was ever taken."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT global_count, clicks_total, snapshot_ms, fence, milestone, generation"
                " FROM totals WHERE id = 1"
            )
            row = cursor.fetchone()
        return Totals(*(int(v) for v in row)) if row else None

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

    def write_snapshot(self, cut: Cut, fence: int) -> int:
        """Write one cut in one transaction, unless a newer fence already wrote. Returns rows."""
        now_ms = int(time.time() * 1000)
        with self.connect() as conn:
            cursor = conn.cursor()
            stored = self._stored_fence(cursor)
            if stored > fence:
                raise StaleFence(fence, stored)
            cursor.execute("SELECT generation FROM totals WHERE id = 1")
            row = cursor.fetchone()
            if cut.generation and row is not None and cut.generation <= int(row[0]):
                raise RedisWentBack(cut.generation, int(row[0]))
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
                    [
                        (u.canon, u.username, u.count, u.nonce, now_ms, u.milestone)
                        for u in cut.users
                    ],
                )
            if cut.minutes:
                self._execute_many(
                    conn,
                    self._upsert("minutes", ("minute", "clicks"), ("minute",)),
                    sorted(cut.minutes.items()),
                )
            if cut.tombstones:
                self._execute_many(
                    conn,
                    self._upsert(
                        "tombstones", ("canon", "nonce", "deleted_ms"), ("canon", "nonce")
                    ),
                    [(canon, nonce, now_ms) for canon, nonce in cut.tombstones],
                )
            if cut.breakdowns:
                self._execute_many(
                    conn,
                    self._upsert(
                        "breakdowns",
                        ("day", "dimension", "value", "clicks"),
                        ("day", "dimension", "value"),
                    ),
                    [(*key, clicks) for key, clicks in sorted(cut.breakdowns.items())],
                )
            global_count = cut.global_count
            if global_count is None:
                cursor.execute("SELECT COALESCE(SUM(count), 0) FROM users")
                global_count = int(cursor.fetchone()[0])
            columns = (
                "id",
                "global_count",
                "clicks_total",
                "snapshot_ms",
                "fence",
                "milestone",
                "generation",
            )
            cursor.execute(
                self._upsert("totals", columns, ("id",)),
                (
                    1,
                    global_count,
                    cut.clicks_total,
                    cut.server_ms,
                    fence,
                    cut.milestone_global,
                    cut.generation,
                ),
            )
        return cut.rows

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

    def minutes_between(self, start: int, end: int) -> dict[int, int]:
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql("SELECT minute, clicks FROM minutes WHERE minute >= %s AND minute < %s"),
                (start, end),
            )
            return {int(m): int(c) for m, c in cursor.fetchall()}

    def breakdowns_between(self, first_day: str, last_day: str) -> dict[tuple[str, str, str], int]:
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    "SELECT day, dimension, value, clicks FROM breakdowns"
                    " WHERE day >= %s AND day <= %s"
                ),
                (first_day, last_day),
            )
            return {(str(d), str(k), str(v)): int(c) for d, k, v, c in cursor.fetchall()}

    def country_totals(self) -> dict[str, int]:
        """All-time clicks per country, for the country board."""
        with self.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                "SELECT value, SUM(clicks) FROM breakdowns WHERE dimension = 'country'"
                " GROUP BY value"
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
