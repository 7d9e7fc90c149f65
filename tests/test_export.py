"""Exports: a day's minutes, breakdowns, users and audit log, partitioned, read with pandas."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from service.audit import AuditLog, Record
from service.store import Cut, Store, UserRow
from worker.cli import main
from worker.export import ExportError, export_day, parse_day, partition

DAY = date(2026, 11, 23)
START = 1795392000  # 2026-11-23T00:00:00Z


@pytest.fixture
def store(store_url: str) -> Store:
    result = Store(store_url)
    result.migrate()
    # Two shards' shares, which the export sums (schema 5 keeps them apart).
    result.write_snapshot(
        [
            Cut(
                global_count=7,
                clicks_total=7,
                server_ms=START * 1000 + 5000,
                users=[UserRow("ann", "Ann", "n", 7)],
                # Two minutes of the day, one of the day before (must not be exported).
                minutes={START: 1, START + 3600: 6, START - 60: 99},
                breakdowns={
                    ("2026-11-23", "device", "mobile"): 2,
                    ("2026-11-23", "device", "desktop"): 4,
                    ("2026-11-23", "country", "FR"): 6,
                    ("2026-11-22", "device", "mobile"): 99,
                },
            ),
            Cut(
                global_count=3,
                clicks_total=3,
                server_ms=START * 1000 + 5000,
                users=[UserRow("bo", "Bo", "m", 3)],
                minutes={START: 3},
                breakdowns={
                    ("2026-11-23", "device", "mobile"): 4,
                    ("2026-11-23", "country", "FR"): 4,
                },
                shard=1,
            ),
        ],
        fence=1,
        shard_count=2,
    )
    audit = AuditLog(result)
    audit.insert(Record("eve", "edit", "10.0.0.9", "Ann", 1, 7, at_ms=(START - 1) * 1000))
    audit.insert(Record("ada", "edit", "10.0.0.1", "Ann", 2, 7, at_ms=START * 1000 + 10))
    audit.insert(Record("bob", "delete", "10.0.0.2", "Cy", 5, None, at_ms=START * 1000 + 20))
    return result


def test_parquet_round_trips_through_pandas(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = export_day(store, DAY, "parquet", out)
    assert files["minutes"] == out / "minutes/year=2026/month=11/day=23/minutes.parquet"
    minutes = pd.read_parquet(out / "minutes")
    assert len(minutes) == 1440 and minutes["clicks"].sum() == 10
    assert minutes.set_index("minute")["clicks"][pd.Timestamp(START, unit="s", tz="UTC")] == 4
    assert set(minutes["day"].astype(int)) == {23}  # the partition column comes back
    breakdowns = pd.read_parquet(out / "breakdowns")
    by_key = {(r.dimension, r.value): r.clicks for r in breakdowns.itertuples()}
    assert by_key == {("country", "FR"): 10, ("device", "desktop"): 4, ("device", "mobile"): 6}
    users = pd.read_parquet(out / "users")
    assert dict(zip(users["username"], users["count"], strict=True)) == {"Ann": 7, "Bo": 3}
    audit = pd.read_parquet(out / "audit")  # that day's admin actions only, oldest first
    assert audit["admin"].tolist() == ["ada", "bob"]
    assert audit["before"].tolist() == [2, 5] and audit["after"].iloc[0] == 7
    assert pd.isna(audit["after"].iloc[1])


def test_csv_has_the_same_rows(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = export_day(store, DAY, "csv", out)
    minutes = pd.read_csv(files["minutes"])
    assert len(minutes) == 1440 and minutes["clicks"].sum() == 10
    breakdowns = pd.read_csv(files["breakdowns"])
    assert breakdowns["clicks"].sum() == 20
    assert pd.read_csv(files["users"])["count"].tolist() == [7, 3]
    audit = pd.read_csv(files["audit"])
    assert audit[["admin", "action", "username"]].values.tolist() == [
        ["ada", "edit", "Ann"],
        ["bob", "delete", "Cy"],
    ]


def test_exporting_a_day_twice_replaces_it(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_day(store, DAY, "parquet", out)
    export_day(store, DAY, "parquet", out)
    assert pd.read_parquet(out / "minutes")["clicks"].sum() == 10
    assert list((out / "minutes").rglob("*.tmp")) == []


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ExportError, match="YYYY-MM-DD"):
        parse_day("23/11/2026")
    with pytest.raises(ExportError, match="format"):
        export_day(Store("sqlite:///unused.db"), DAY, "xlsx", Path("/tmp"))


def test_the_clickky_export_command(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", store.url)
    out = tmp_path / "cli"
    status = main(["export", "--day", "2026-11-23", "--format", "csv", "--out", str(out)])
    assert status == 0
    assert "minutes:" in capsys.readouterr().out
    assert pd.read_csv(partition(out, "users", DAY) / "users.csv")["count"].sum() == 10
    assert main(["export", "--day", "yesterday", "--out", str(out)]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
