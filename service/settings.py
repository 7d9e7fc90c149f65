"""Configuration, read once from the environment into one immutable object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.config import Config


class SettingsError(ValueError):
    """A configuration variable has a value we cannot use."""


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str
    database_url: str = "sqlite:///./clickky.db"
    snapshot_interval_s: float = 30.0
    broadcast_interval_ms: int = 100
    rate_limit_cps: int = 20
    join_rate_per_min: int = 30
    admin_token: str | None = None
    secret_key: str | None = None
    # Every Redis key and channel starts with this, so several deployments (or
    # test runs) can share one Redis without seeing each other.
    key_prefix: str = "clickky:"
    log_level: str = "INFO"
    log_format: str = "json"
    # Largest HTTP body or Socket.IO message we read; clicks are a few bytes.
    max_body_bytes: int = 16 * 1024
    # The hour (UTC, 0-23) at which the worker exports the previous day; unset disables it.
    export_hour: int | None = None
    export_dir: str = "./exports"
    export_format: str = "csv"
    # An instance whose heartbeat is older than this no longer counts as online.
    presence_ttl_s: float = 5.0
    # Origins allowed to open a socket besides the page's own (comma-separated).
    allowed_origins: tuple[str, ...] = ()
    # The longest a click may wait in an instance before it is refused as overloaded.
    max_wait_ms: int = 500
    # Set (by gunicorn's config) when several workers share one /metrics.
    prometheus_multiproc_dir: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every variable once; a missing REDIS_URL means the embedded default."""
        config = Config(environ=os.environ if environ is None else environ)
        try:
            settings = cls._read(config)
        except ValueError as exc:  # Starlette's cast errors name the variable and the value
            raise SettingsError(str(exc)) from None
        settings.validate()
        return settings

    @classmethod
    def _read(cls, config: Config) -> Settings:
        export_hour = config("EXPORT_HOUR", cast=str, default="").strip()
        if export_hour and not export_hour.isdigit():
            raise SettingsError(f"EXPORT_HOUR must be an hour 0..23, not {export_hour!r}")
        return cls(
            redis_url=config("REDIS_URL", cast=str, default="redis://127.0.0.1:6379/0"),
            database_url=config("DATABASE_URL", cast=str, default="sqlite:///./clickky.db"),
            snapshot_interval_s=config("SNAPSHOT_INTERVAL_S", cast=float, default=30.0),
            broadcast_interval_ms=config("BROADCAST_INTERVAL_MS", cast=int, default=100),
            rate_limit_cps=config("RATE_LIMIT_CPS", cast=int, default=20),
            join_rate_per_min=config("JOIN_RATE_PER_MIN", cast=int, default=30),
            admin_token=config("ADMIN_TOKEN", cast=str, default="") or None,
            secret_key=config("SECRET_KEY", cast=str, default="") or None,
            key_prefix=config("KEY_PREFIX", cast=str, default="clickky:"),
            log_level=config("LOG_LEVEL", cast=str, default="INFO").upper(),
            log_format=config("LOG_FORMAT", cast=str, default="json").lower(),
            max_body_bytes=config("MAX_BODY_BYTES", cast=int, default=16 * 1024),
            export_hour=int(export_hour) if export_hour else None,
            export_dir=config("EXPORT_DIR", cast=str, default="./exports"),
            export_format=config("EXPORT_FORMAT", cast=str, default="csv").lower(),
            presence_ttl_s=config("PRESENCE_TTL_S", cast=float, default=5.0),
            allowed_origins=tuple(
                o.strip()
                for o in config("ALLOWED_ORIGINS", cast=str, default="").split(",")
                if o.strip()
            ),
            max_wait_ms=config("MAX_WAIT_MS", cast=int, default=500),
            prometheus_multiproc_dir=config("PROMETHEUS_MULTIPROC_DIR", cast=str, default="")
            or None,
        )

    def validate(self) -> None:
        """Refuse values that would make the service misbehave later, at start instead."""
        _positive("SNAPSHOT_INTERVAL_S", self.snapshot_interval_s)
        _positive("BROADCAST_INTERVAL_MS", self.broadcast_interval_ms)
        _positive("RATE_LIMIT_CPS", self.rate_limit_cps)
        _positive("JOIN_RATE_PER_MIN", self.join_rate_per_min)
        _positive("MAX_BODY_BYTES", self.max_body_bytes)
        _positive("PRESENCE_TTL_S", self.presence_ttl_s)
        _positive("MAX_WAIT_MS", self.max_wait_ms)
        if not self.database_url.startswith(("mysql://", "mysql+pymysql://", "sqlite://")):
            raise SettingsError("DATABASE_URL must start with mysql:// or sqlite:///")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if self.log_format not in ("json", "text"):
            raise SettingsError("LOG_FORMAT must be json or text")
        if self.export_hour is not None and not 0 <= self.export_hour <= 23:
            raise SettingsError("EXPORT_HOUR must be 0..23")
        if self.export_format not in ("csv", "parquet"):
            raise SettingsError("EXPORT_FORMAT must be csv or parquet")

    @property
    def tick_s(self) -> float:
        return self.broadcast_interval_ms / 1000
