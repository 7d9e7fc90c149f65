"""The admin audit log: who did what to whom, with the count before and after, in SQL.

Records are written straight to the SQL store, not to Redis and snapshotted later:
admin actions are rare (one INSERT each costs nothing), and a record that waited in
Redis for the next snapshot would be lost with Redis, the very event after which
someone asks who changed what. The table is created by the store's migrations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.store import Store

log = logging.getLogger(__name__)

_COLUMNS = ("at_ms", "admin", "action", "username", "before_count", "after_count", "address")


@dataclass(frozen=True)
class Record:
    """One admin action. `before`/`after` are counts (None where they do not apply)."""

    admin: str
    action: str  # "edit", "delete" or "login_blocked"
    address: str
    username: str | None = None
    before: int | None = None
    after: int | None = None
    at_ms: int = 0
    id: int = 0

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["at"] = datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat()
        return body


class AuditLog:
    """Append and page the audit table; blocking SQL runs in a thread."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, record: Record) -> Record | None:
        """Store one record (stamped now, UTC); on failure log it whole and return None.

        The action it describes already happened in Redis, so a database outage must not
        turn it into an error: the record then survives in the log line and the metric.
        """
        stamped = Record(**{**asdict(record), "at_ms": int(time.time() * 1000)})
        try:
            new_id = await asyncio.to_thread(self.insert, stamped)
        except Exception as exc:
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.error("audit record not stored (%s): %s", exc, stamped.as_json())
            return None
        return Record(**{**asdict(stamped), "id": new_id})

    async def page(self, limit: int, before: int | None = None) -> list[Record]:
        """Newest first: up to `limit` records with an id below `before`."""
        return await asyncio.to_thread(self.rows, limit, before)

    def _sql(self, statement: str) -> str:
        return statement if self.store.is_mysql else statement.replace("%s", "?")

    def insert(self, record: Record) -> int:
        """Append a record as stamped (blocking); returns its id."""
        self.store.migrate()
        row = (
            record.at_ms,
            record.admin[:64],
            record.action,
            record.username,
            record.before,
            record.after,
            record.address[:64],
        )
        placeholders = ", ".join(["%s"] * len(_COLUMNS))
        with self.store.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({placeholders})"),
                row,
            )
            return int(cursor.lastrowid)

    def rows(
        self, limit: int, before: int | None = None, *, start_ms: int = 0, end_ms: int = 2**62
    ) -> list[Record]:
        """Newest first; `start_ms`/`end_ms` bound the time (the daily export's day)."""
        self.store.migrate()
        with self.store.connect() as conn:
            cursor = conn.cursor()
            cursor.execute(
                self._sql(
                    f"SELECT id, {', '.join(_COLUMNS)} FROM audit"
                    " WHERE id < %s AND at_ms >= %s AND at_ms < %s ORDER BY id DESC LIMIT %s"
                ),
                (before if before is not None else 2**62, start_ms, end_ms, limit),
            )
            return [
                Record(
                    id=int(r[0]),
                    at_ms=int(r[1]),
                    admin=str(r[2]),
                    action=str(r[3]),
                    username=r[4],
                    before=None if r[5] is None else int(r[5]),
                    after=None if r[6] is None else int(r[6]),
                    address=str(r[7]),
                )
                for r in cursor.fetchall()
            ]
