#!/bin/sh
# Creates a Redis Cluster out of empty nodes, once: the compose `cluster` profile's
# one-shot job runs it on every `docker compose up`, and a cluster that exists is left
# alone (exit 0). Usable by hand or from a Kubernetes Job the same way.
#
#   CLUSTER_NODES="10.0.0.1:6379 10.0.0.2:6379 ..."  every node, masters first
#   CLUSTER_REPLICAS=1                                replicas per master (0: none)
#   REDISCLI_AUTH=...                                 the nodes' password, if any (redis-cli reads it)
#
# Exit 0 when the cluster is up with every slot assigned (created now or before), 1 when
# a node does not answer within CLUSTER_WAIT_S (60) seconds or the creation fails.
set -eu

nodes=${CLUSTER_NODES:?set CLUSTER_NODES to the nodes as host:port, separated by spaces}
replicas=${CLUSTER_REPLICAS:-1}
wait_s=${CLUSTER_WAIT_S:-60}

cli() { # cli host:port command...
    node=$1
    shift
    redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

field() { # field host:port name: one field of CLUSTER INFO
    cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

retry() { # retry "what went wrong" command...: once a second, for up to wait_s seconds
    problem=$1
    shift
    waited=0
    until "$@"; do
        if [ "$waited" -ge "$wait_s" ]; then
            echo "create-cluster: $problem after ${wait_s}s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

answers() { cli "$1" ping 2>/dev/null | grep -q PONG; }

is_ok() { [ "$(field "$1" cluster_state)" = ok ]; }

# The nodes start in any order: wait until each answers.
for node in $nodes; do
    retry "$node does not answer" answers "$node"
done

# Slots assigned anywhere means the cluster was created before (this job reruns on every
# `up`, and after a node is replaced): never create it twice. A replaced, empty node is
# joined by hand (docs/cluster.md), not here.
for node in $nodes; do
    assigned=$(field "$node" cluster_slots_assigned)
    if [ "${assigned:-0}" != 0 ]; then
        echo "create-cluster: the cluster exists ($node: $assigned slots assigned," \
            "state $(field "$node" cluster_state)); nothing to do"
        exit 0
    fi
done

# shellcheck disable=SC2086  # one argument per node
redis-cli --cluster create $nodes --cluster-replicas "$replicas" --cluster-yes

# Gossip takes a moment to reach every node: done when each one says ok.
for node in $nodes; do
    retry "$node is not ok" is_ok "$node"
done
echo "create-cluster: created over $(echo $nodes | wc -w) nodes, $replicas replica(s) per master"
