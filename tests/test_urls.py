"""REDIS_URL and DATABASE_URL: the forms accepted, the refusals, and the masking of passwords."""

from __future__ import annotations

import pytest

from service import urls


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://:secret@redis.internal:6380/3",
        "redis://user:secret@[::1]:6379/1",
        "rediss://cache.example:6380/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?db=2",
        "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/1",
        "redis+sentinel://s1:26379/mymaster",
    ],
)
def test_redis_forms_that_connect_redis_reads_are_accepted(url: str) -> None:
    urls.check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:6379/0garbage", "database '0garbage' must be a number"),
        ("htp://nowhere", "unknown scheme htp://"),
        ("127.0.0.1:6379", "unknown scheme"),
        ("redis://:6379/0", "needs a host"),
        ("redis://host:port/0", "port 'port' is not a number"),
        ("redis://host:70000/0", "1..65535"),
        ("redis://host/0?db=x", "database 'x'"),
        ("unix://", "socket's path"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/m/0x", "database '0x'"),
        ("redis://host /0", "spaces"),
    ],
)
def test_redis_urls_that_would_fail_later_are_refused_now(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        urls.check_redis_url(url)


@pytest.mark.parametrize(
    "url",
    ["mysql://root@127.0.0.1:3306/clickky", "mysql+pymysql://u:p@db/c", "sqlite:///./c.db"],
)
def test_database_forms_that_the_store_reads_are_accepted(url: str) -> None:
    urls.check_database_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://root@127.0.0.1:3306", "one database name"),
        ("mysql://root@:3306/db", "needs a host"),
        ("mysql://root@db:x/db", "port 'x'"),
        ("sqlite://", "sqlite:///relative/path"),
        ("clickky.db", "unknown scheme"),
        ("postgres://db/x", "unknown scheme postgres://"),
    ],
)
def test_database_urls_the_store_cannot_use_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        urls.check_database_url(url)


def test_mask_hides_only_the_password() -> None:
    assert urls.mask("mysql://root:hunter2@db:3306/c") == "mysql://root:***@db:3306/c"
    assert urls.mask("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert urls.mask("redis+sentinel://:pw@s1:1,s2:2/m") == "redis+sentinel://:***@s1:1,s2:2/m"
    assert urls.mask("redis://user@h/0") == "redis://user@h/0"
    assert urls.mask("sqlite:///./c.db") == "sqlite:///./c.db"
