"""Daily exports for offline analysis: one UTC day's minutes, breakdowns, users and audit log.

Files land under OUT/<table>/year=YYYY/month=MM/day=DD/<table>.<csv|parquet>, so
`pandas.read_parquet(OUT / "minutes")` reads every exported day at once.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from service.audit import AuditLog
from service.store import Store

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")


class ExportError(Exception):
    """The export cannot run as asked (a missing optional dependency, a bad day)."""


def partition(out: Path, table: str, day: date) -> Path:
    return out / table / f"year={day.year}" / f"month={day.month:02d}" / f"day={day.day:02d}"


def export_day(store: Store, day: date, fmt: str, out: Path) -> dict[str, Path]:
    """Write the day's four tables; returns {table: file}. Rewriting a day replaces it."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}")
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    clicks = store.minutes_between(start, start + 86400)
    iso = day.isoformat()
    tables: dict[str, tuple[list[str], list[Sequence[Any]]]] = {
        # Every minute of the day, zeros included, so a plot needs no resampling.
        "minutes": (
            ["minute", "clicks"],
            [
                (datetime.fromtimestamp(m, UTC), clicks.get(m, 0))
                for m in range(start, start + 86400, 60)
            ],
        ),
        "breakdowns": (
            ["dimension", "value", "clicks"],
            [
                (dimension, value, n)
                for (_, dimension, value), n in sorted(store.breakdowns_between(iso, iso).items())
            ],
        ),
        # Counts as of the last snapshot: the store keeps each user's total, not per day.
        "users": (
            ["username", "count", "updated_at"],
            [
                (name, count, datetime.fromtimestamp(ms / 1000, UTC))
                for name, count, ms in store.all_users()
            ],
        ),
        # The admin actions of that day, oldest first.
        "audit": (
            ["at", "admin", "action", "username", "before", "after", "address"],
            [
                (
                    datetime.fromtimestamp(r.at_ms / 1000, UTC),
                    r.admin,
                    r.action,
                    r.username,
                    r.before,
                    r.after,
                    r.address,
                )
                for r in reversed(
                    AuditLog(store).rows(
                        10**9, start_ms=start * 1000, end_ms=(start + 86400) * 1000
                    )
                )
            ],
        ),
    }
    written: dict[str, Path] = {}
    for table, (columns, rows) in tables.items():
        folder = partition(out, table, day)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{table}.{fmt}"
        _write(path, fmt, columns, rows)
        log.info("exported %s", table, extra={"day": iso, "rows": len(rows), "file": str(path)})
        written[table] = path
    return written


def _write(path: Path, fmt: str, columns: list[str], rows: list[Sequence[Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    if fmt == "csv":
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(v.isoformat() if isinstance(v, datetime) else v for v in row)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ExportError(
                "Parquet needs the optional extra: pip install 'clickky[parquet]'"
            ) from exc
        data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
        pq.write_table(pa.table(data), tmp)
    tmp.replace(path)  # readers never see a half-written file


def yesterday(now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)) - timedelta(days=1)).date()


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ExportError(f"--day must be YYYY-MM-DD, not {text!r}") from None
