"""Gunicorn settings for Clickky: uvicorn workers, sizes from the environment.

    gunicorn --config deploy/gunicorn.conf.py service.app:app

Several workers behind one port are fine because the service speaks only the websocket
transport: a Socket.IO session is one TCP connection, held by the worker that accepted it.
(Long-polling would need every request of a session to reach the same worker.)

Environment: BIND (comma-separated, default 0.0.0.0:8000), WEB_CONCURRENCY (workers,
default: the CPU count), GRACEFUL_TIMEOUT (seconds, default 20), WORKER_TIMEOUT (default 30),
FORWARDED_ALLOW_IPS (the proxies trusted for X-Forwarded-For/-Proto, default loopback),
LOG_LEVEL, and PROMETHEUS_MULTIPROC_DIR (optional; a fresh temporary one by default).
"""

# Nothing here may import prometheus_client at module level: it picks single- or
# multi-process mode at import time, from PROMETHEUS_MULTIPROC_DIR, which on_starting sets.
import os
import shutil
import tempfile

bind = [b.strip() for b in os.environ.get("BIND", "0.0.0.0:8000").split(",") if b.strip()]
workers = int(os.environ.get("WEB_CONCURRENCY", str(os.cpu_count() or 1)))
worker_class = "uvicorn_worker.UvicornWorker"

# SIGTERM: stop accepting, let uvicorn close websockets (code 1012, clients reconnect to
# another instance) and finish requests; after this many seconds gunicorn kills the worker.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "20"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "30"))
# Longer than nginx's upstream keepalive (60 s), so nginx closes idle connections first
# and never sends a request on a connection we are closing.
keepalive = 75
# No max_requests: a recycled worker would drop every websocket it holds.
max_requests = 0

# Behind nginx the peer is the proxy; X-Forwarded-For is trusted only from these addresses.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Each worker builds its own app (own event loop, Redis pool, ticker) after the fork, and
# only then imports prometheus_client, with PROMETHEUS_MULTIPROC_DIR already set.
preload_app = False
proc_name = "clickky"
accesslog = None  # nginx logs requests; the service logs what matters
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
if os.path.isdir("/dev/shm"):
    # The worker heartbeat file: tmpfs, so a slow disk cannot make gunicorn kill workers.
    worker_tmp_dir = "/dev/shm"

_OWNED = "CLICKKY_OWNED_METRICS_DIR"


def on_starting(server):
    """Give the workers a clean PROMETHEUS_MULTIPROC_DIR, so /metrics sums over all of them."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        # Files left by an earlier run would add old counts to the new ones.
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="clickky-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        os.environ[_OWNED] = path
    server.log.info("Prometheus multiprocess directory: %s", path)


def child_exit(server, worker):
    """Drop a dead worker's live gauges (connections, loop health) from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get(_OWNED)
    if path:
        shutil.rmtree(path, ignore_errors=True)
