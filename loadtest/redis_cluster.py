"""Local Redis Clusters for the benchmarks: real redis-servers in cluster mode on free ports.

`LocalCluster(directory, masters, replicas=0, conf=None).start()` starts one
`redis-server` per node (with `conf`, e.g. deploy/redis-cluster/node.conf, as the node's
settings; else no persistence and `cluster-require-full-coverage no`), creates the
cluster (`redis-cli --cluster create` from 3 masters; CLUSTER ADDSLOTSRANGE for one master
alone) and returns once every node says `cluster_state:ok`. `stop()` kills every node.
The bus port is chosen apart from the node's port: the default, port + 10000, may be
taken or past 65535.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cluster
import redis

SLOTS = 16384


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replicas each, on free loopback ports."""

    directory: Path
    masters: int
    replicas: int = 0
    conf: Path | None = None
    ports: list[int] = field(default_factory=list)  # masters first, as created
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout: float = 30) -> LocalCluster:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("a local Redis Cluster needs redis-server on PATH")
        settings = (
            [str(self.conf)]
            if self.conf
            else [
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-require-full-coverage", "no", "--save", "", "--appendonly", "no"),
            ]
        )
        for _ in range(self.masters * (1 + self.replicas)):
            port = cluster.free_port()
            home = self.directory / f"node-{port}"
            home.mkdir(parents=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        *(binary, *settings, "--port", str(port), "--bind", "127.0.0.1"),
                        *("--cluster-port", str(cluster.free_port()), "--dir", str(home)),
                        *("--cluster-announce-hostname", "127.0.0.1"),
                    ],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            self.ports.append(port)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._until(deadline, lambda c: c.ping(), port)
        if self.masters == 1 and not self.replicas:
            # redis-cli --cluster create wants 3 masters at least; one node takes every slot.
            with contextlib.closing(self.client(self.ports[0])) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
        else:
            subprocess.run(
                [
                    *("redis-cli", "--cluster", "create"),
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        for port in self.ports:
            self._until(deadline, lambda c: c.cluster("info")["cluster_state"] == "ok", port)
        return self

    def wait_replicas_in_sync(self, timeout: float = 60) -> None:
        """Until every replica's link to its master is up: one that never finished its
        first sync refuses to take over ("Disconnected from master for longer than
        allowed")."""

        def synced(client: redis.Redis) -> bool:
            info = client.info("replication")
            return info["role"] == "master" or info.get("master_link_status") == "up"

        deadline = time.monotonic() + timeout
        for port in self.ports:
            self._until(deadline, synced, port)

    def _until(self, deadline: float, check: Callable[[redis.Redis], bool], port: int) -> None:
        with contextlib.closing(self.client(port)) as client:
            while True:
                with contextlib.suppress(redis.RedisError):
                    if check(client):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {port} not ready; see {self.directory}")
                time.sleep(0.05)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5, decode_responses=True)

    def master_of(self, slot: int) -> int:
        """Index (in self.ports) of the master serving `slot`, as a live node sees it."""
        alive = next(
            p for p, proc in zip(self.ports, self.procs, strict=True) if proc.poll() is None
        )
        with contextlib.closing(self.client(alive)) as client:
            for low, high, (_host, port, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return self.ports.index(int(port))
        raise RuntimeError(f"slot {slot} is not served")

    def kill(self, index: int) -> None:
        """SIGKILL one node: what it held only in memory is gone, as in a crash."""
        self.procs[index].kill()
        self.procs[index].wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(10)
        self.procs.clear()


@contextlib.contextmanager
def local_cluster(
    masters: int, replicas: int = 0, conf: Path | None = None
) -> Iterator[LocalCluster]:
    """A started LocalCluster in a temporary directory, killed and removed on exit."""
    directory = Path(tempfile.mkdtemp(prefix="clickky-cluster-bench-"))
    nodes = LocalCluster(directory, masters, replicas, conf)
    try:
        yield nodes.start()
    finally:
        nodes.stop()
        shutil.rmtree(directory, ignore_errors=True)
