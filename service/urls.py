"""The forms REDIS_URL and DATABASE_URL accept: checked at start, and shown with secrets masked.

Each check raises ValueError with a sentence that says what is wrong; service/settings.py
turns it into the one-line refusal naming the variable. The forms are those that
service/connection.py (Redis) and service/store.py (SQL) actually read.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs, urlsplit

REDIS_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://..., unix:///path[?db=N], "
    "redis+sentinel://[:password@]host:port[,host:port...]/service[/db] or "
    "redis+cluster://[[user]:password@]host:port[,host:port...]"
)
DATABASE_FORMS = "mysql://user[:password]@host[:port]/database or sqlite:///path"


def mask(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    credentials, _, hosts = parts.netloc.rpartition("@")
    user, colon, _ = credentials.partition(":")
    masked = f"{user}:***" if colon else credentials
    return parts._replace(netloc=f"{masked}@{hosts}").geturl()


def check_redis_url(url: str) -> None:
    """Refuse a REDIS_URL that connection.connect_redis would misread or fail on later."""
    parts = _split(url)
    if parts.scheme in ("redis", "rediss"):
        _host_port(parts.netloc.rpartition("@")[2], "a host")
        _db(parts.path.strip("/"))
        if "db" in parse_qs(parts.query):
            _db(parse_qs(parts.query)["db"][0])
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        if "db" in parse_qs(parts.query):
            _db(parse_qs(parts.query)["db"][0])
    elif parts.scheme == "redis+sentinel":
        for item in parts.netloc.rpartition("@")[2].split(","):
            _host_port(item, "the Sentinels' host:port list")
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ValueError("a redis+sentinel:// URL needs /service_name[/db]")
        if len(path) == 2:
            _db(path[1])
    elif parts.scheme == "redis+cluster":
        for item in parts.netloc.rpartition("@")[2].split(","):
            _host_port(item, "the nodes' host:port list")
        if parts.path.strip("/"):
            raise ValueError("a Redis Cluster has only database 0: drop the /db after the nodes")
    else:
        raise ValueError(f"unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'}")


def check_database_url(url: str) -> None:
    """Refuse a DATABASE_URL that store.Store would misread or fail on later."""
    parts = _split(url)
    if parts.scheme in ("mysql", "mysql+pymysql"):
        _host_port(parts.netloc.rpartition("@")[2], "a host")
        name = parts.path.strip("/")
        if not name or "/" in name:
            raise ValueError("a mysql:// URL needs one database name after the host")
    elif parts.scheme == "sqlite":
        if not url.startswith("sqlite:///") or not url[len("sqlite:///") :]:
            raise ValueError("a sqlite URL is sqlite:///relative/path or sqlite:////absolute/path")
    else:
        raise ValueError(f"unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'}")


def _split(url: str) -> SplitResult:
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError("it holds spaces or control characters")
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"it is not a URL ({exc})") from None


def split_host_port(netloc: str) -> tuple[str, str]:
    """("host", "port") of "host:port", "[v6]:port" or "host" (port "" when absent)."""
    if netloc.startswith("["):  # [IPv6]:port
        host, _, rest = netloc[1:].partition("]")
        return host, rest.removeprefix(":")
    if ":" in netloc:
        host, _, port = netloc.rpartition(":")
        return host, port
    return netloc, ""


def _host_port(netloc: str, what: str) -> None:
    host, port = split_host_port(netloc)
    if not host:
        raise ValueError(f"it needs {what}")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port {port!r} is not a number 1..65535")


def _db(text: str) -> None:
    if text and not (text.isascii() and text.isdigit()):
        raise ValueError(f"the database {text!r} must be a number (0, 1, ...)")
