"""Configuration, read once from the environment into one immutable object."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.config import Config

from service import urls
from service.shards import DEFAULT_CLUSTER_SHARDS, MAX_SHARDS, Shards


class SettingsError(ValueError):
    """A configuration variable has a value we cannot use."""


def refuse(name: str, value: object, accepted: str) -> SettingsError:
    """The one-line refusal: the variable, its value (secrets masked), what is accepted."""
    secret = any(word in name for word in ("TOKEN", "SECRET", "PASSWORD"))
    shown = "***" if secret else urls.mask(str(value))
    return SettingsError(f"{name}={shown!r} is not accepted: {accepted}")


def _positive(name: str, value: int | float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise refuse(name, value, "a positive number")


def _url(name: str, value: str, check: Callable[[str], None], forms: str) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise refuse(name, value, f"{exc}; expected {forms}") from None


_KINDS: dict[object, str] = {int: "a whole number", float: "a number"}


class _Environment(Config):
    """starlette's Config, with a cast failure worded as every other refusal."""

    def _perform_cast(self, key: str, value: Any, cast: Callable[[Any], Any] | None = None) -> Any:
        try:
            return super()._perform_cast(key, value, cast)
        except ValueError:
            raise refuse(key, value, _KINDS.get(cast, "another value")) from None


MIN_ADMIN_TOKEN = 32
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def parse_admin_tokens(text: str) -> tuple[tuple[str, str], ...]:
    """ADMIN_TOKENS="name:sha256hex,..." into (name, hash) pairs; a bad entry names the variable.

    A name (1-64 characters) may repeat: two hashes for one admin is how a token rotates.
    """
    pairs: list[tuple[str, str]] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, digest = entry.rpartition(":")
        digest = digest.strip().lower()
        if not 0 < len(name.strip()) <= 64 or not _SHA256_HEX.fullmatch(digest):
            raise refuse(
                "ADMIN_TOKENS",
                entry,
                "name:sha256hex entries separated by commas"
                " (`clickky admin-token --name NAME` prints one)",
            )
        pairs.append((name.strip(), digest))
    return tuple(pairs)


@dataclass(frozen=True, kw_only=True)
class Settings:
    redis_url: str
    database_url: str = "sqlite:///./clickky.db"
    snapshot_interval_s: float = 30.0
    broadcast_interval_ms: int = 100
    rate_limit_cps: int = 20
    join_rate_per_min: int = 30
    admin_token: str | None = None
    # Named admins: (name, sha256 hex of the token). Only hashes live in the configuration.
    admin_tokens: tuple[tuple[str, str], ...] = ()
    # Failed admin authentications allowed per client address per minute, across instances.
    admin_failures_per_min: int = 10
    secret_key: str | None = None
    # Every Redis key and channel starts with this, so several deployments (or
    # test runs) can share one Redis without seeing each other.
    key_prefix: str = "clickky:"
    # Logical shards the players are split over (service/shards.py); None picks the
    # default: 16 on a Redis Cluster, 1 elsewhere.
    redis_shards: int | None = None
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
        config = _Environment(environ=os.environ if environ is None else environ)
        settings = cls._read(config)
        settings.validate()
        return settings

    @classmethod
    def load(cls, program: str) -> Settings:
        """from_environ, or end the process at once with the refusal on one line (exit 2)."""
        try:
            return cls.from_environ()
        except SettingsError as exc:
            print(f"{program}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    @classmethod
    def _read(cls, config: Config) -> Settings:
        export_hour = config("EXPORT_HOUR", cast=str, default="").strip()
        if export_hour and not export_hour.isdigit():
            raise refuse("EXPORT_HOUR", export_hour, "an hour 0..23 (UTC), or unset")
        return cls(
            redis_url=config("REDIS_URL", cast=str, default="redis://127.0.0.1:6379/0"),
            database_url=config("DATABASE_URL", cast=str, default="sqlite:///./clickky.db"),
            snapshot_interval_s=config("SNAPSHOT_INTERVAL_S", cast=float, default=30.0),
            broadcast_interval_ms=config("BROADCAST_INTERVAL_MS", cast=int, default=100),
            rate_limit_cps=config("RATE_LIMIT_CPS", cast=int, default=20),
            join_rate_per_min=config("JOIN_RATE_PER_MIN", cast=int, default=30),
            admin_token=config("ADMIN_TOKEN", cast=str, default="") or None,
            admin_tokens=parse_admin_tokens(config("ADMIN_TOKENS", cast=str, default="")),
            admin_failures_per_min=config("ADMIN_FAILURES_PER_MIN", cast=int, default=10),
            secret_key=config("SECRET_KEY", cast=str, default="") or None,
            key_prefix=config("KEY_PREFIX", cast=str, default="clickky:"),
            redis_shards=config("REDIS_SHARDS", cast=int, default=0) or None,
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
        _url("REDIS_URL", self.redis_url, urls.check_redis_url, urls.REDIS_FORMS)
        if self.redis_shards is not None and not 1 <= self.redis_shards <= MAX_SHARDS:
            raise refuse("REDIS_SHARDS", self.redis_shards, f"a number 1..{MAX_SHARDS}")
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise refuse("KEY_PREFIX", self.key_prefix, "a prefix without { or } (hash tags)")
        _url("DATABASE_URL", self.database_url, urls.check_database_url, urls.DATABASE_FORMS)
        _positive("ADMIN_FAILURES_PER_MIN", self.admin_failures_per_min)
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise refuse(
                "ADMIN_TOKEN",
                self.admin_token,
                f"at least {MIN_ADMIN_TOKEN} characters (it has {len(self.admin_token)});"
                " `clickky admin-token` prints a strong one",
            )
        _positive("MAX_WAIT_MS", self.max_wait_ms)
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise refuse("LOG_LEVEL", self.log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if self.log_format not in ("json", "text"):
            raise refuse("LOG_FORMAT", self.log_format, "json or text")
        if self.export_hour is not None and not 0 <= self.export_hour <= 23:
            raise refuse("EXPORT_HOUR", self.export_hour, "an hour 0..23 (UTC), or unset")
        if self.export_format not in ("csv", "parquet"):
            raise refuse("EXPORT_FORMAT", self.export_format, "csv or parquet")

    @property
    def shards(self) -> Shards:
        """The key layout: REDIS_SHARDS logical shards (default 16 on a cluster, else 1)."""
        default = DEFAULT_CLUSTER_SHARDS if self.redis_url.startswith("redis+cluster://") else 1
        return Shards(self.key_prefix, self.redis_shards or default)

    @property
    def tick_s(self) -> float:
        return self.broadcast_interval_ms / 1000
