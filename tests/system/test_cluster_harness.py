"""The cluster harness itself (tests/cluster_support.py), on real nodes, before any product code."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import redis
from redis.exceptions import MovedError

from tests.cluster_support import SLOTS, Cluster, clusters, slot_of

pytestmark = pytest.mark.system

__all__ = ["clusters"]  # the fixture, imported to be found by pytest


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_create_reshard_kill_and_restart_empty(clusters: Callable[..., Cluster]) -> None:
    # With an append-only file: restart_empty must throw it away to come back empty.
    cluster = clusters(masters_count=3, appendonly=True)
    masters = cluster.masters()
    assert len(masters) == 3 and cluster.url.count(",") == 2
    owned = [cluster.slots_of(m) for m in masters]
    assert sum(len(s) for s in owned) == SLOTS and len(set().union(*owned)) == SLOTS

    with cluster.client() as client:
        for i in range(600):
            client.set(f"k{i}", i)
        # Each key sits where the harness says, and nowhere else.
        for i in range(0, 600, 37):
            home = cluster.node_of_key(f"k{i}")
            assert home.call("GET", f"k{i}") == str(i)
            other = next(m for m in masters if m is not home)
            with pytest.raises(MovedError, match=f"^{slot_of(f'k{i}')} 127.0.0.1:{home.port}$"):
                other.call("GET", f"k{i}")
        assert sum(cluster.keys_on(m, cluster.slots_of(m)) for m in masters) == 600
        assert all(int(str(m.call("DBSIZE"))) > 100 for m in masters), "keys spread over all"

        # Move the first master's lowest 400 slots, with their keys, while writing on.
        moving = sorted(cluster.slots_of(masters[0]))[:400]
        reshard = cluster.reshard(masters[0], masters[2], 400, pipeline=1)
        for i in range(600, 1200):
            client.set(f"k{i}", i)
        reshard.wait()
        owners = cluster.owners()
        assert all(owners[s] is masters[2] for s in moving)
        assert len(cluster.slots_of(masters[0])) == len(owned[0]) - 400
        assert cluster.keys_on(masters[0], moving) == 0
        cluster.wait_ok()
        assert [client.get(f"k{i}") for i in range(1200)] == [str(i) for i in range(1200)]
        assert cluster.errorstats().get("MOVED", 0) > 0, "the client was redirected"

        # SIGKILL the second master: its keys are out of reach, the others' are not.
        victim = masters[1]
        owners = cluster.owners()
        lost = [f"k{i}" for i in range(1200) if owners[slot_of(f"k{i}")] is victim]
        kept = [f"k{i}" for i in range(1200) if f"k{i}" not in set(lost)]
        assert any((victim.directory / "appendonlydir").iterdir())
        cluster.kill(victim)
        cluster.wait_failed(victim)
        assert not listening(victim.port)
        assert [client.get(k) for k in kept[:50]] == [k[1:] for k in kept[:50]]
        info = masters[0].info()
        assert info["cluster_state"] == "ok", "full coverage is off: the rest serves on"
        assert int(info["cluster_slots_fail"]) == len(owned[1])
        with cluster.client() as fresh, pytest.raises(redis.RedisError):
            fresh.get(lost[0])

        # Back on its port, same id, same slots, nothing in them.
        cluster.restart_empty(victim)
        assert cluster.slots_of(victim) == owned[1]
        assert cluster.keys_on(victim, owned[1]) == 0
        with cluster.client() as fresh:
            assert [fresh.get(k) for k in lost] == [None] * len(lost)
            assert [fresh.get(k) for k in kept] == [k[1:] for k in kept]
            fresh.set(lost[0], "again")
            assert victim.call("GET", lost[0]) == "again"

    cluster.stop()
    assert not any(n.alive or listening(n.port) for n in cluster.nodes)


def test_a_replica_takes_over_its_killed_master(clusters: Callable[..., Cluster]) -> None:
    cluster = clusters(masters_count=3, replicas=1)
    masters = cluster.masters()
    assert len(cluster.nodes) == 6 and len(masters) == 3
    assert all(len(cluster.replicas_of(m)) == 1 for m in masters)
    victim = masters[0]
    replica = cluster.replicas_of(victim)[0]
    owners = cluster.owners()
    keys = [f"{{t{i}}}" for i in range(2000) if owners[slot_of(f"{{t{i}}}")] is victim]
    with cluster.client() as client:
        for key in keys:
            client.set(key, key)
        # Every write has reached the replica before the kill: nothing may be lost.
        assert victim.call("WAIT", 1, 5000) == 1
        cluster.kill(victim)
        promoted = cluster.wait_failover(victim)
        assert promoted is replica
        assert victim not in cluster.masters() and replica in cluster.masters()
        assert cluster.slots_of(replica) == frozenset(
            range(min(cluster.slots_of(replica)), max(cluster.slots_of(replica)) + 1)
        )
        owners = cluster.owners()
        assert all(owners[slot_of(k)] is replica for k in keys)
        assert [client.get(k) for k in keys] == keys
    assert slot_of("{hub}:x") == slot_of("{hub}:y") == slot_of("hub")
    with pytest.raises(AssertionError, match="no longer a master"):
        cluster.restart_empty(victim)
