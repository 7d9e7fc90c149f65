"""Settings: read once from the environment, with defaults, casts and early refusals."""

from __future__ import annotations

import dataclasses

import pytest

from service.settings import Settings, SettingsError, refuse


def test_defaults() -> None:
    settings = Settings.from_environ({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "sqlite:///./clickky.db"
    assert settings.snapshot_interval_s == 30.0
    assert settings.broadcast_interval_ms == 100
    assert settings.rate_limit_cps == 20
    assert settings.join_rate_per_min == 30
    assert settings.admin_token is None
    assert settings.secret_key is None
    assert settings.key_prefix == "clickky:"
    assert settings.max_body_bytes == 16 * 1024
    assert settings.presence_ttl_s == 5.0
    assert settings.allowed_origins == ()
    assert settings.export_hour is None
    assert settings.prometheus_multiproc_dir is None
    assert settings.tick_s == 0.1


def test_casts_and_normalisation() -> None:
    settings = Settings.from_environ(
        {
            "REDIS_URL": "redis://example:6380/2",
            "DATABASE_URL": "mysql://u:p@db:3306/clickky",
            "SNAPSHOT_INTERVAL_S": "2.5",
            "BROADCAST_INTERVAL_MS": "250",
            "RATE_LIMIT_CPS": "7",
            "JOIN_RATE_PER_MIN": "3",
            "ADMIN_TOKEN": "sesame-sesame-sesame-sesame-sesame",
            "SECRET_KEY": "k",
            "KEY_PREFIX": "staging:",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "TEXT",
            "MAX_BODY_BYTES": "1024",
            "PRESENCE_TTL_S": "2",
            "ALLOWED_ORIGINS": " https://a.example , https://b.example ,, ",
            "EXPORT_HOUR": "3",
            "EXPORT_FORMAT": "CSV",
            "PROMETHEUS_MULTIPROC_DIR": "/tmp/prom",
            "MAX_WAIT_MS": "250",
        }
    )
    assert settings.redis_url == "redis://example:6380/2"
    assert settings.snapshot_interval_s == 2.5
    assert settings.broadcast_interval_ms == 250 and settings.tick_s == 0.25
    assert (settings.rate_limit_cps, settings.join_rate_per_min) == (7, 3)
    assert (settings.admin_token, settings.secret_key) == (
        "sesame-sesame-sesame-sesame-sesame",
        "k",
    )
    assert settings.key_prefix == "staging:"
    assert (settings.log_level, settings.log_format) == ("DEBUG", "text")
    assert settings.max_body_bytes == 1024
    assert settings.presence_ttl_s == 2.0
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert (settings.export_hour, settings.export_format) == (3, "csv")
    assert settings.prometheus_multiproc_dir == "/tmp/prom"
    assert settings.max_wait_ms == 250
    assert Settings.from_environ({}).max_wait_ms == 500


def test_empty_secrets_mean_unset() -> None:
    settings = Settings.from_environ({"ADMIN_TOKEN": "", "SECRET_KEY": ""})
    assert settings.admin_token is None and settings.secret_key is None


def test_settings_are_immutable() -> None:
    settings = Settings.from_environ({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.rate_limit_cps = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RATE_LIMIT_CPS", "0"),
        ("RATE_LIMIT_CPS", "-5"),
        ("BROADCAST_INTERVAL_MS", "0"),
        ("SNAPSHOT_INTERVAL_S", "0"),
        ("SNAPSHOT_INTERVAL_S", "-1.5"),
        ("JOIN_RATE_PER_MIN", "0"),
        ("MAX_BODY_BYTES", "0"),
        ("PRESENCE_TTL_S", "0"),
        ("MAX_WAIT_MS", "0"),
        ("DATABASE_URL", "postgres://db/clickky"),
        ("DATABASE_URL", "clickky.db"),
        ("LOG_FORMAT", "xml"),
        ("EXPORT_HOUR", "24"),
        ("EXPORT_HOUR", "-1"),
        ("EXPORT_FORMAT", "json"),
        ("ADMIN_TOKEN", "x" * 31),
        ("ADMIN_TOKENS", "alice"),
        ("ADMIN_TOKENS", "alice:" + "0" * 63),
        ("ADMIN_TOKENS", ":" + "0" * 64),
        ("ADMIN_TOKENS", "n" * 65 + ":" + "0" * 64),
        ("ADMIN_FAILURES_PER_MIN", "0"),
    ],
)
def test_unusable_values_are_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environ({variable: value})
    assert variable in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RATE_LIMIT_CPS", "abc"),
        ("SNAPSHOT_INTERVAL_S", "soon"),
        ("MAX_WAIT_MS", "half a second"),
        ("EXPORT_HOUR", "noon"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_values_of_the_wrong_type_are_refused_as_settings_errors(variable: str, value: str) -> None:
    """Not a number (or not a level) is as unusable as a negative one: same error, same clarity."""
    with pytest.raises(SettingsError) as info:
        Settings.from_environ({variable: value})
    assert variable in str(info.value)


def test_validate_also_guards_direct_construction() -> None:
    with pytest.raises(SettingsError, match="RATE_LIMIT_CPS"):
        Settings(redis_url="redis://x", rate_limit_cps=0).validate()


@pytest.mark.parametrize(
    ("variable", "value", "shown", "accepted"),
    [
        ("REDIS_URL", "redis://127.0.0.1:6379/0garbage", "0garbage", "must be a number"),
        ("REDIS_URL", "htp://nowhere", "htp://nowhere", "expected redis://"),
        ("REDIS_URL", "redis://:hunter2@h:x/0", "redis://:***@h:x/0", "1..65535"),
        ("DATABASE_URL", "mysql://u:hunter2@db:3306", "mysql://u:***@db:3306", "mysql://user"),
        ("RATE_LIMIT_CPS", "12.5", "12.5", "a whole number"),
        ("SNAPSHOT_INTERVAL_S", "nan", "nan", "a positive number"),
        ("PRESENCE_TTL_S", "inf", "inf", "a positive number"),
    ],
)
def test_a_refusal_is_one_line_naming_variable_value_and_what_is_accepted(
    variable: str, value: str, shown: str, accepted: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environ({variable: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}=") and shown in message, message
    assert accepted in message and "hunter2" not in message


def test_secrets_are_never_shown_in_a_refusal() -> None:
    for name in ("ADMIN_TOKEN", "SECRET_KEY", "ADMIN_TOKENS"):
        message = str(refuse(name, "hunter2", "at least 32 characters"))
        assert message == f"{name}='***' is not accepted: at least 32 characters"


def test_load_ends_the_process_with_the_refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SECRET_KEY", "hunter2")
    monkeypatch.setenv("JOIN_RATE_PER_MIN", "-3")
    with pytest.raises(SystemExit) as exited:
        Settings.load("clickky")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "clickky: JOIN_RATE_PER_MIN='-3' is not accepted: a positive number\n"


def test_named_admin_tokens_are_name_and_hash_pairs() -> None:
    alice, rotated = "a" * 64, "B" * 64
    settings = Settings.from_environ(
        {"ADMIN_TOKENS": f" alice:{alice}, bob smith:{'c' * 64},alice:{rotated},"}
    )
    assert settings.admin_tokens == (
        ("alice", alice),
        ("bob smith", "c" * 64),
        ("alice", "b" * 64),
    )
    assert Settings.from_environ({}).admin_tokens == ()
