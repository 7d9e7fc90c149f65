"""Prometheus metrics. With several gunicorn workers, PROMETHEUS_MULTIPROC_DIR makes
every worker's /metrics report the sum over all of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CLICKS = Counter("clickky_clicks_total", "Clicks counted by this instance.", ["transport"])
REFUSED = Counter("clickky_clicks_refused_total", "Click requests refused, by reason.", ["reason"])
REPEATED = Counter(
    "clickky_clicks_repeated_total",
    "Click batches sent again with an id already counted: answered, not counted.",
    ["transport"],
)
JOINS = Counter("clickky_joins_total", "Players who joined through this instance.")
CONNECTIONS = Gauge(
    "clickky_connections",
    "Socket.IO connections held by this instance.",
    multiprocess_mode="livesum",
)
TICKS = Counter("clickky_ticks_sent_total", "State messages broadcast (one per changed tick).")
STATE_BYTES = Counter(
    "clickky_state_bytes_total", "Bytes of state messages queued to clients, all clients summed."
)
BROADCAST_LAG = Histogram(
    "clickky_broadcast_lag_seconds",
    "Delay from a tick boundary until its state was handed to every local client.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
REDIS_ERRORS = Counter("clickky_redis_errors_total", "Redis calls that failed.", ["where"])
LOOP_UP = Gauge(
    "clickky_loop_up",
    "1 while a background loop is healthy, else 0.",
    ["loop"],
    multiprocess_mode="livemin",
)
LOOP_ERRORS = Counter(
    "clickky_loop_errors_total", "Failed iterations of a background loop.", ["loop"]
)
PUBSUB_UP = Gauge(
    "clickky_pubsub_up",
    "1 while the cross-instance event listener hears its own pings.",
    multiprocess_mode="livemin",
)
PUBSUB_RECONNECTS = Counter("clickky_pubsub_reconnects_total", "Pub/sub (re)subscriptions.")
FRAMES_REFUSED = Counter(
    "clickky_frames_refused_total",
    "Socket.IO frames refused before any handler (an error ack or a closed socket), by reason.",
    ["reason"],
)
REDIS_JUNK = Counter(
    "clickky_redis_junk_total",
    "Messages or fields read from Redis that were not what we write, dropped; by where and why.",
    ["where", "reason"],
)
LOOP_LAG = Gauge(
    "clickky_event_loop_lag_seconds",
    "How late the event loop ran a timer, last measure: the wait new work sees.",
    multiprocess_mode="livemax",
)
CLICK_WAIT = Histogram(
    "clickky_click_wait_seconds",
    "Wait of accepted clicks from arrival (estimated by the loop's lag) to their Redis call.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
OVERLOAD_REFUSED = Counter(
    "clickky_overload_refused_total",
    "Work refused as overloaded, by reason: lag (at arrival), queue (waited too long),"
    " join, connect.",
    ["reason"],
)
HTTP_ERRORS = Counter("clickky_http_errors_total", "HTTP error responses, by code.", ["code"])
ADMIN_AUTH_FAILURES = Counter(
    "clickky_admin_auth_failures_total", "Admin authentications refused for a wrong token."
)
ADMIN_AUTH_BLOCKS = Counter(
    "clickky_admin_auth_blocks_total",
    "Client addresses blocked for a minute after too many failed admin authentications.",
)
AUDIT_WRITE_FAILURES = Counter(
    "clickky_audit_write_failures_total", "Audit records the SQL store did not accept."
)


def render(cluster: dict[str, float | None], *, multiprocess: bool) -> tuple[bytes, str]:
    """This process's (or all workers') metrics, plus cluster-wide gauges read from Redis."""
    if multiprocess:
        registry: Any = CollectorRegistry()
        MultiProcessCollector(registry)
        local = generate_latest(registry)
    else:
        local = generate_latest()
    # The cluster view is read fresh for each scrape. It is yielded by a collector, not
    # kept in Gauge objects: in multiprocess mode those would leave per-pid files behind
    # and every later scrape would repeat the family.
    shared = CollectorRegistry(auto_describe=False)
    shared.register(_Snapshot(cluster))
    return local + generate_latest(shared), CONTENT_TYPE_LATEST


class _Snapshot(Collector):
    """Yields the cluster gauges read for this scrape."""

    def __init__(self, values: dict[str, float | None]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        for name, value in self.values.items():
            if value is not None:
                yield GaugeMetricFamily(f"clickky_{name}", _CLUSTER_HELP.get(name, name), value)


_CLUSTER_HELP = {
    "global_clicks": "The global count, as Redis holds it.",
    "users": "Registered players.",
    "online": "Live connections across all instances.",
    "restored": "1 when Redis holds the whole truth, 0 while a restore is pending.",
    "snapshot_age_seconds": "Seconds since the worker's last good snapshot.",
    "snapshot_duration_seconds": "How long the last good snapshot took.",
    "snapshot_rows": "Rows written by the last good snapshot.",
    "snapshot_failures": "Consecutive failed snapshots.",
    "workers_alive": "Worker processes with a live health key.",
    "shards_unreachable": "Shards whose Redis primary this instance cannot reach (shown as"
    " last read; their players get unavailable).",
    "hub_unreachable": "1 when the hub's Redis primary cannot be reached: online is frozen,"
    " joins get unavailable, and the snapshot and worker gauges are not reported.",
}
FANOUT_SECONDS = Histogram(
    "clickky_fanout_seconds",
    "Time to write one state message to every local client (one pass of service/fanout.py).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)
FANOUT_OVERRUNS = Counter(
    "clickky_fanout_overruns_total",
    "Ticks whose state took longer than a tick to reach every client: the next tick is "
    "skipped for everyone (fewer states a second, still the newest).",
)
STATES_SKIPPED = Counter(
    "clickky_states_skipped_total",
    "States a client did not get because its previous data was still unsent.",
)
SLOW_READERS_DROPPED = Counter(
    "clickky_slow_readers_dropped_total",
    "Connections cut because their unsent data passed the bound or fell too far behind.",
)
