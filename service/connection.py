"""Connect to Redis from a URL: redis://, rediss://, unix://, redis+sentinel:// for HA, or
redis+cluster:// for a Redis Cluster (redis-py's cluster client)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisClusterException, RedisError, TimeoutError

from service.urls import split_host_port

# What a Redis call may raise when Redis (or a cluster node, or a slot) is unreachable:
# redis-py's cluster client raises some of these outside RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)

MAX_CONNECTIONS = 64
CLUSTER_MIN_CONNECTIONS = 64


def _options(retry: bool) -> dict[str, Any]:
    """Fail fast when Redis is gone: a click gets a clear 503 in about a second.

    No retry unless asked: redis-py re-sends a command whose reply was lost, and the
    click, join and delete scripts must not run twice (a lost reply would count a
    click twice, or answer "name taken" to the join that took it).
    """
    return {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 5.0,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.25, base=0.05), retries=1 if retry else 0),
        "retry_on_error": [ConnectionError, TimeoutError] if retry else [],
    }


def connect_redis(
    url: str, *, max_connections: int = MAX_CONNECTIONS, retry: bool = False
) -> Redis:
    """A client for this URL. With Sentinel it follows the current primary across failovers.

    `retry=True` only for clients whose commands are all safe to run twice.

    redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]
        [?sentinel_password=...]  (when the Sentinels themselves require a password)
    redis+cluster://[[user]:password@]host:port[,host:port...]  (any of the nodes; the
        client learns the rest, and follows MOVED and ASK as slots move)

    A cluster client is a `RedisCluster`; the callers use only commands and scripts
    whose keys sit in one hash slot (service/shards.py), so the two are used alike.
    """
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, retry)
    if url.startswith("redis+cluster://"):
        return _cluster_client(url, retry, max_connections)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, **_options(retry)
    )
    pool.connection_class = guarded(pool.connection_class)  # whichever the URL chose
    # from_pool: the client owns the pool, so aclose() closes its connections too.
    return Redis.from_pool(pool)


class WriteGuard(AbstractConnection):
    """A redis-py connection whose write on a closed connection raises ConnectionError."""

    # redis-py turns only OSError into ConnectionError there, and two other errors got
    # through to the caller as unexpected errors (a click answered `internal`, not
    # `unavailable`, when a cluster master died): uvloop's RuntimeError on a closed
    # transport (MagicStack/uvloop#506), and the AttributeError of a writer that another
    # task's disconnect dropped while this one waited to write. Both come before anything
    # is written, so the command did not run; redis-py has disconnected the connection.
    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if "closed" not in str(exc):
                raise
            raise ConnectionError(f"Error writing to Redis: {exc}") from None
        except AttributeError as exc:
            if exc.obj is not None or exc.name not in ("write", "writelines", "drain"):
                raise
            raise ConnectionError("Error writing to Redis: the connection was closed") from None


_GUARDED: dict[type, type] = {}
C = TypeVar("C", bound=AbstractConnection)


def guarded(cls: type[C]) -> type[C]:
    """`cls` (a redis-py connection class) with WriteGuard's handling of closed writes."""
    if cls not in _GUARDED:
        _GUARDED[cls] = type(f"Guarded{cls.__name__}", (WriteGuard, cls), {})
    return _GUARDED[cls]


def _sentinel_client(url: str, retry: bool) -> Redis:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    password = unquote(parts.password) if parts.password else None
    hosts = []
    for item in netloc.split(","):
        host, port = split_host_port(item)
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URLs need the service name: .../mymaster[/db]")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": 1.0}
    sentinel_password = parse_qs(parts.query).get("sentinel_password")
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password[0]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)
    client: Redis = sentinel.master_for(
        service,
        db=db,
        password=password,
        connection_class=guarded(SentinelManagedConnection),
        **_options(retry),
    )
    return client


def _cluster_client(url: str, retry: bool, max_connections: int) -> Redis:
    parts = urlsplit(url)
    nodes = []
    for item in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, port = split_host_port(item)
        nodes.append(ClusterNode(host, int(port or 6379)))
    options = _options(retry)
    # MOVED, ASK and TRYAGAIN are followed whatever this says (the command did not run);
    # a lost connection is retried only by clients whose commands may run twice.
    options["retry"] = Retry(ExponentialBackoff(cap=0.25, base=0.05), retries=3 if retry else 0)
    del options["retry_on_error"]
    client = Cluster(
        startup_nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        # Per node, and a full cluster pool raises instead of waiting: a tick reads
        # every shard at once, so a node may see one call per shard it holds.
        max_connections=max(max_connections, CLUSTER_MIN_CONNECTIONS),
        # With a master down, the players of the other masters keep playing (the nodes
        # need `cluster-require-full-coverage no` for that too; docs/cluster.md).
        require_full_coverage=False,
        **options,
    )
    # The nodes it knows now and those it learns later (it builds them from these kwargs).
    connection_class = guarded(client.connection_kwargs["connection_class"])
    client.connection_kwargs["connection_class"] = connection_class
    for node in client.nodes_manager.startup_nodes.values():
        node.connection_class = connection_class
    # The callers treat it as a Redis: same commands, same script objects.
    return client  # type: ignore[return-value]


async def ready(client: Redis) -> None:
    """Learn a cluster's nodes and slots now (a no-op on other clients), so the first
    commands, and a pub/sub subscription, find the slot map in place."""
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except REDIS_ERRORS:
            pass  # unreachable now: the first command tries again, and fails clearly


# Set while a command of this task runs inside the cluster client (see Cluster).
_IN_COMMAND: contextvars.ContextVar[bool] = contextvars.ContextVar("in_command", default=False)


@contextlib.contextmanager
def _in_command() -> Iterator[None]:
    """Marks this task as inside a cluster command (or pipeline) while the block runs."""
    token = _IN_COMMAND.set(True)
    try:
        yield
    finally:
        _IN_COMMAND.reset(token)


class Cluster(RedisCluster):
    """redis-py's cluster client, except that its own error paths re-learn the slot map
    instead of closing every node's connections.

    redis-py 8 calls `aclose()` from inside a command on CLUSTERDOWN (a primary rejoining)
    and on every few MOVED (slots moving): that disconnects the connections other
    commands are using at that moment, and they fail ("Connection closed", or worse)
    although their nodes are fine (redis/redis-py#4322, #3846). Here such a call only
    marks the slot map stale, so the next command reloads it; `aclose()` called from
    outside a command (shutdown) closes for real.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _in_command():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py refuses it
        return _Pipeline(self, transaction)  # type: ignore[abstract]  # as redis-py does

    async def aclose(self) -> None:
        if _IN_COMMAND.get():
            self._initialize = True
            return
        await super().aclose()


class _Pipeline(ClusterPipeline):
    """A cluster pipeline whose execution counts as a command (see Cluster.aclose)."""

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        with _in_command():
            return await super().execute(*args, **kwargs)
