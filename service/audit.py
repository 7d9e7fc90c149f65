"""The admin audit log: who did what to whom, with the count before and after, in SQL.

Records are written straight to the SQL store, not to Redis and snapshotted later:
admin actions are rare (a few statements each cost nothing), and a record that waited
in Redis for the next snapshot would be lost with Redis, the very event after which
someone asks who changed what. An edit or delete is recorded *before* it is made
(no record, no action: 503 `audit_unavailable` while the store is down) and completed
with the count it replaced afterwards. The table is created by the store's migrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.errors import ApiError
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


def _stamped(record: Record) -> Record:
    return replace(record, at_ms=int(time.time() * 1000))


@dataclass
class Outcome:
    """What an audited action reports back: the user's display name and previous count."""

    username: str | None = None
    before: int | None = None
    # The completed record, once the action succeeded.
    record: Record | None = None


class AuditLog:
    """Append and page the audit table; blocking SQL runs in a thread."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, record: Record) -> Record | None:
        """Store one record (stamped now, UTC); on failure log it whole and return None.

        For events that happen whether or not the store answers (a blocked login burst):
        the record then survives in the log line and the metric.
        """
        stamped = _stamped(record)
        try:
            new_id = await asyncio.to_thread(self.insert, stamped)
        except Exception as exc:
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.error("audit record not stored (%s): %s", exc, stamped.as_json())
            return None
        return replace(stamped, id=new_id)

    @contextlib.asynccontextmanager
    async def action(self, record: Record) -> AsyncIterator[Outcome]:
        """Record an admin action around making it; 503 before it when the store is down.

        A definite refusal (an ApiError: no such user, a restore pending) removes the
        record, since nothing changed. Any other failure (Redis lost the reply, say)
        leaves it with no `before`: the action may have happened.
        """
        stamped = _stamped(record)
        try:
            rid = await asyncio.to_thread(self.insert, stamped)
        except Exception as exc:
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.error("audit log unavailable, admin %s refused: %s", record.action, exc)
            raise ApiError(
                503,
                "audit_unavailable",
                "The audit log cannot be written; admin actions wait until it can.",
                retry_after_s=5,
            ) from None
        outcome = Outcome()
        try:
            yield outcome
        except ApiError:
            await self._settle(rid, None)
            raise
        done = replace(
            stamped, id=rid, username=outcome.username or record.username, before=outcome.before
        )
        await self._settle(rid, done)
        outcome.record = done

    async def _settle(self, rid: int, done: Record | None) -> None:
        """Complete a record (or drop it when `done` is None); a failure is logged."""
        args: tuple[Any, ...] = (rid,)
        if done is None:
            statement = "DELETE FROM audit WHERE id = %s"
        else:
            statement = "UPDATE audit SET username = %s, before_count = %s WHERE id = %s"
            args = (done.username, done.before, rid)
        try:
            await asyncio.to_thread(self._execute, statement, args)
        except Exception as exc:
            metrics.AUDIT_WRITE_FAILURES.inc()
            log.error("audit record %d not completed (%s): %s", rid, exc, done and done.as_json())

    def _execute(self, statement: str, args: tuple[Any, ...]) -> None:
        with self.store.connect() as conn:
            conn.cursor().execute(self._sql(statement), args)

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
