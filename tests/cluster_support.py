"""A real Redis Cluster for tests: nodes on free ports in a temp dir, broken on purpose.

`Cluster(directory, masters=3, replicas=0).start()` runs one `redis-server
--cluster-enabled yes` per node, joins them with `redis-cli --cluster create` and
returns once every node says `cluster_state:ok`, covers all 16384 slots and agrees with
the others on who owns which. Then a test can kill a node (SIGKILL), restart it empty,
move slots (`redis-cli --cluster reshard`, in the background while load runs) or wait
for a replica to take over. `stop()` kills every process it started; the `clusters`
fixture calls it whatever the test did.

Two settings differ from redis-server's defaults, on purpose:
- `cluster-node-timeout` 1000 ms: a dead master is flagged FAIL (and its replica
  elected) within about 2 s instead of 15 s, which keeps the fault tests short.
- `cluster-require-full-coverage no`: with the default `yes`, every node refuses every
  command (CLUSTERDOWN) while any slot's master is down, and the players whose shards
  live on the other masters could not click. `full_coverage=True` restores the default.

What Redis 7.0 does when a master without a replica is SIGKILLed and restarted with no
data (`restart_empty`): its nodes.conf survives the kill (Redis rewrites and fsyncs it on
every change of the cluster's configuration), so it comes back with the same node id and
the same config epoch, claims the same slots, and nobody has taken them over: it is the
same master again, owning its slots, with every key in them gone. The others had flagged
it FAIL (a majority of masters agreed) and clear the flag once it answers again (for a
master that still owns slots, only after 2 x node timeout since the flag was set). That is
exactly the issue's "one master SIGKILLed and restarted empty". Had nodes.conf gone too,
the node would start as a new, slotless node that the cluster does not know, and its slots
would stay unserved until an operator assigned them again (`CLUSTER ADDSLOTS`); had the
master had a replica, the replica would have been promoted in the meantime and the restarted
node would come back as its replica (`restart_empty` refuses that case: use
`wait_failover`).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from tests.support import wait_until

SLOTS = 16384
HOST = "127.0.0.1"
# Nodes listen from here up; their bus ports (+10000) stay below the ephemeral range.
FIRST_PORT = 20000


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} must be on PATH for the cluster tests (apt-get install redis-server)"
    return path


def slot_of(key: str) -> int:
    """The hash slot of a key (its {tag} when it has one), as every node computes it."""
    return int(key_slot(key.encode()))


@dataclass(eq=False)  # a node is itself: compared and hashed by identity
class Node:
    """One redis-server of the cluster, with its own port and directory."""

    port: int
    directory: Path
    id: str = ""  # the cluster node id (40 hex), read once it runs
    popen: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def client(self) -> redis.Redis:
        """A plain (non-cluster) client of this node only: close it after use."""
        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=1,
            decode_responses=True,
        )  # fmt: skip

    def call(self, *args: str | int) -> object:
        """One command on this node (CLUSTER INFO, DBSIZE, ...), answered as redis-py parses it."""
        with contextlib.closing(self.client()) as client:
            return client.execute_command(*args)

    def info(self) -> dict[str, str]:
        """CLUSTER INFO as a dict (cluster_state, cluster_slots_ok, ...)."""
        text = self.call("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def kill(self) -> None:
        """SIGKILL: what was only in memory is gone, as in a crash."""
        if self.popen is not None and self.alive:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __repr__(self) -> str:
        return f"Node({self.port}, {self.id[:8]}, {'up' if self.alive else 'down'})"


@dataclass(frozen=True)
class View:
    """One node as another node sees it (a line of CLUSTER NODES)."""

    id: str
    port: int
    flags: frozenset[str]  # master, slave, myself, fail, fail?, handshake, noaddr, ...
    master_id: str | None  # of a replica
    slots: frozenset[int]  # served slots (migrating/importing markers left out)

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


def parse_nodes(text: str) -> dict[str, View]:
    """CLUSTER NODES: lines of `id ip:port@bus flags master ping pong epoch link slots...`."""
    views: dict[str, View] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots: set[int] = set()
        for item in fields[8:]:
            if item.startswith("["):  # [slot->-id] or [slot-<-id]: a migration in progress
                continue
            low, _, high = item.partition("-")
            slots.update(range(int(low), int(high or low) + 1))
        port = int(fields[1].split("@")[0].rpartition(":")[2] or 0)
        views[fields[0]] = View(
            id=fields[0],
            port=port,
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            slots=frozenset(slots),
        )
    return views


@dataclass
class Reshard:
    """A `redis-cli --cluster reshard` running in the background."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float = 60) -> float:
        """Wait until it ends; fail with its output unless it succeeded. Returns its seconds."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(
                f"reshard still running after {timeout}s:\n{self.output()}"
            ) from None
        assert code == 0, f"reshard failed ({code}):\n{self.output()[-3000:]}"
        return time.monotonic() - self.started

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.running:
            self.popen.kill()
        self.popen.wait()


@dataclass
class Cluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on free ports.

    Persistence is off unless asked (`appendonly`, or `save` in redis.conf's syntax,
    e.g. "3600 1"), so a killed node loses what it held, as the fault tests want.
    """

    directory: Path
    masters_count: int = 3
    replicas: int = 0
    appendonly: bool = False
    save: str = ""
    full_coverage: bool = False
    node_timeout_ms: int = 1000
    nodes: list[Node] = field(default_factory=list)
    reshards: list[Reshard] = field(default_factory=list)

    # -- life ------------------------------------------------------------------
    def start(self, timeout: float = 30) -> Cluster:
        """Start the nodes, create the cluster, and wait until it is whole and agreed."""
        count = self.masters_count * (1 + self.replicas)
        self.nodes = [Node(port, self.directory / str(port)) for port in _free_ports(count)]
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            wait_until(lambda n=node: _pings(n), timeout=10)
            node.id = str(node.call("CLUSTER", "MYID"))
        # The first `masters_count` addresses become masters, the rest their replicas.
        create = subprocess.run(
            [
                binary("redis-cli"),
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        output = create.stdout.decode(errors="replace") + create.stderr.decode(errors="replace")
        assert create.returncode == 0, f"redis-cli --cluster create failed:\n{output}"
        self.wait_ok(timeout)
        return self

    def stop(self) -> None:
        """Kill every node and background reshard started here; idempotent."""
        for reshard in self.reshards:
            reshard.kill()
        for node in self.nodes:
            node.kill()

    def _launch(self, node: Node) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary("redis-server"),
            "--port", str(node.port),
            "--bind", HOST,
            "--dir", str(node.directory),
            "--logfile", "redis.log",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
            "--save", self.save,
            "--appendonly", "yes" if self.appendonly else "no",
            # A replica's first sync starts at once, not after 5 s of waiting for others.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        node.popen = subprocess.Popen(args, start_new_session=True)

    # -- what the cluster looks like --------------------------------------------
    @property
    def url(self) -> str:
        """REDIS_URL for the product: every node's address (the client learns the rest)."""
        return "redis+cluster://" + ",".join(n.address for n in self.nodes)

    @contextlib.contextmanager
    def client(self) -> Iterator[RedisCluster]:
        """A cluster client (redis-py's) that knows the live nodes; closed on exit."""
        nodes = [ClusterNode(HOST, n.port) for n in self.live()]
        client = RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=2)
        try:
            yield client
        finally:
            client.close()

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    def _alive(self, node_id: str) -> bool:
        return any(n.alive for n in self.nodes if n.id == node_id)

    def views(self, asked: Node | None = None) -> dict[str, View]:
        """The cluster as one live node (the first, unless `asked`) sees it, by node id."""
        node = asked or self.live()[0]
        return parse_nodes(str(node.call("CLUSTER", "NODES")))

    def masters(self) -> list[Node]:
        """The live masters that serve slots, in port order."""
        views = self.views()
        return [n for n in self.live() if views[n.id].is_master and views[n.id].slots]

    def replicas_of(self, master: Node) -> list[Node]:
        return [n for n in self.nodes if self.views()[n.id].master_id == master.id]

    def slots_of(self, node: Node) -> frozenset[int]:
        return self.views()[node.id].slots

    def owners(self) -> dict[int, Node]:
        """Slot -> the master that serves it now (one CLUSTER NODES for many lookups)."""
        return {
            slot: self.by_id(view.id)
            for view in self.views().values()
            if view.is_master
            for slot in view.slots
        }

    def node_of_slot(self, slot: int) -> Node:
        """The master that serves `slot` now."""
        owner = self.owners().get(slot)
        assert owner is not None, f"no master serves slot {slot}"
        return owner

    def node_of_key(self, key: str) -> Node:
        return self.node_of_slot(slot_of(key))

    def keys_on(self, node: Node, slots: Iterable[int]) -> int:
        """How many keys `node` holds in these slots (CLUSTER COUNTKEYSINSLOT)."""
        with contextlib.closing(node.client()) as client:
            pipe = client.pipeline(transaction=False)
            for slot in set(slots):
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
            return sum(int(n) for n in pipe.execute())

    def problems(self) -> list[str]:
        """Why the live part of the cluster is not whole and agreed; [] when it is."""
        found: list[str] = []
        maps: dict[int, dict[int, str]] = {}
        for node in self.live():
            try:
                info = node.info()
                views = self.views(node)
            except redis.RedisError as exc:
                found.append(f"{node}: {exc}")
                continue
            if info.get("cluster_state") != "ok":
                found.append(f"{node}: cluster_state {info.get('cluster_state')}")
            if info.get("cluster_slots_ok") != str(SLOTS):
                found.append(f"{node}: {info.get('cluster_slots_ok')} slots ok")
            maps[node.port] = {s: v.id for v in views.values() if v.is_master for s in v.slots}
            if len(maps[node.port]) != SLOTS:
                found.append(f"{node}: sees {len(maps[node.port])} slots assigned")
            for view in views.values():
                if view.failed and self._alive(view.id):
                    found.append(f"{node}: flags live {view.port} {sorted(view.flags)}")
            me = views.get(node.id)
            if me is None:
                found.append(f"{node}: not a member (its nodes.conf was lost?)")
            elif me.master_id is not None and self._alive(me.master_id):
                # A replica that never synced cannot be promoted (it has no data age).
                link = node.call("INFO", "replication")
                if not isinstance(link, dict) or link.get("master_link_status") != "up":
                    found.append(f"{node}: replica not in sync with its master")
        if len({tuple(sorted(m.items())) for m in maps.values()}) > 1:
            found.append("the nodes disagree on who owns which slots")
        return found

    def wait_ok(self, timeout: float = 20) -> None:
        """Until every live node is ok, covers all slots and agrees with the others."""
        deadline = time.monotonic() + timeout
        found = self.problems()
        while found and time.monotonic() < deadline:
            time.sleep(0.1)
            found = self.problems()
        assert not found, f"cluster not ok after {timeout}s: {found}"

    # -- breaking it ---------------------------------------------------------------
    def kill(self, node: Node) -> None:
        """SIGKILL one node."""
        node.kill()

    def wait_failed(self, node: Node, timeout: float = 15) -> None:
        """Until every live node flags `node` as FAIL (not just suspected)."""

        def flagged() -> bool:
            return all("fail" in self.views(n)[node.id].flags for n in self.live())

        wait_until(flagged, timeout=timeout, interval=0.05)

    def restart_empty(self, node: Node, timeout: float = 20) -> None:
        """Restart a killed master on its port with its nodes.conf but none of its data.

        It comes back as the same master owning the same slots, empty (see the module
        docstring); returns once it has and the whole cluster is ok again.
        """
        assert not node.alive, "kill the node first"
        view = self.views()[node.id]
        assert view.is_master and view.slots, f"{node} is no longer a master with slots"
        for name in ("dump.rdb", "appendonly.aof", "appendonlydir"):
            path = node.directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        assert (node.directory / "nodes.conf").exists(), "the node's nodes.conf is gone"
        self._launch(node)
        wait_until(lambda: _pings(node), timeout=10)
        assert node.call("CLUSTER", "MYID") == node.id, "it came back as another node"
        assert int(str(node.call("DBSIZE"))) == 0, "it came back with data"
        self.wait_ok(timeout)
        assert self.slots_of(node) == view.slots, "it came back without its slots"

    def reshard(self, source: Node, target: Node, slots: int, pipeline: int = 10) -> Reshard:
        """Start moving `slots` slots (the source's lowest) from `source` to `target`.

        Runs in the background; `wait()` on the result. `pipeline` is how many keys each
        MIGRATE moves: 1 keeps a slot half-moved longer, so clients meet ASK more often.
        """
        log_path = self.directory / f"reshard-{len(self.reshards)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [
                    binary("redis-cli"),
                    "--cluster", "reshard", source.address,
                    "--cluster-from", source.id,
                    "--cluster-to", target.id,
                    "--cluster-slots", str(slots),
                    "--cluster-pipeline", str(pipeline),
                    "--cluster-yes",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        result = Reshard(popen, log_path)
        self.reshards.append(result)
        return result

    def wait_failover(self, old_master: Node, timeout: float = 20) -> Node:
        """After `old_master` died: until one of its replicas serves its slots and all is ok."""
        views = self.views()
        slots = views[old_master.id].slots
        candidates = [n for n in self.live() if views[n.id].master_id == old_master.id]
        assert slots and candidates, f"{old_master} had no slots or no live replica"

        def promoted() -> Node | None:
            for node in candidates:
                seen = [self.views(n).get(node.id) for n in self.live()]
                if all(v is not None and v.is_master and v.slots == slots for v in seen):
                    return node
            return None

        winner: Node = wait_until(promoted, timeout=timeout, interval=0.05)
        self.wait_ok(timeout)
        return winner

    def errorstats(self) -> dict[str, int]:
        """Redirections and errors every live node answered (MOVED, ASK, TRYAGAIN, ...), summed."""
        totals: dict[str, int] = {}
        for node in self.live():
            stats = node.call("INFO", "errorstats")
            assert isinstance(stats, dict)
            for name, value in stats.items():
                key = name.removeprefix("errorstat_")
                totals[key] = totals.get(key, 0) + int(dict(value)["count"])
        return totals


def _pings(node: Node) -> bool:
    assert node.alive, f"redis-server on {node.port} exited:\n{node.log()[-2000:]}"
    with contextlib.suppress(redis.RedisError):
        return bool(node.call("PING"))
    return False


def _free_ports(count: int) -> list[int]:
    """Distinct free ports, and their cluster bus ports (+10000) free too, all below the
    kernel's ephemeral range: a port inside it may be handed to some outgoing connection
    between this check and the node's bind (a bus port once was, and the node aborted)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral = int(ranges.read().split()[0])
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(FIRST_PORT, ephemeral - 10000)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters on demand, `clusters(replicas=1)`; every process is gone afterwards.

    Import it into a test module to use it (`from tests.cluster_support import clusters`).
    """
    started: list[Cluster] = []

    def start(**options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(started)}", **options)
        started.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop()
