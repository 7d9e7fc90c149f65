#!/bin/sh
# Moves one logical shard (its hash slot) of a live Redis Cluster to another master, key by
# key, while the game runs: what `redis-cli --cluster reshard` does for a number of slots,
# for the one slot you choose (reshard and rebalance pick slots by count, not by load).
#
#   move-shard.sh ANY-NODE:PORT SHARD TARGET-MASTER:PORT      SHARD: 0..REDIS_SHARDS-1, or hub
#   REDISCLI_AUTH=...                                          the nodes' password, if any
#
# The steps are Redis's own (CLUSTER SETSLOT ... IMPORTING / MIGRATING, MIGRATE, SETSLOT
# ... NODE on every master), so clients see ASK, TRYAGAIN and then MOVED, and a click is
# never run twice (docs/cluster.md, "Adding a master while the game runs"). Keys are moved
# one MIGRATE each: player names may hold spaces. Run it again after an interruption: a
# slot left importing/migrating is taken up where it stopped.
# Exit 0 when the slot is served by the target (moved now or before), 1 on an error.
set -eu

[ $# -eq 3 ] || {
    echo "usage: move-shard.sh ANY-NODE:PORT SHARD TARGET-MASTER:PORT" >&2
    exit 1
}
any=$1
target=$3
case $2 in
hub) tag="{hub}" ;;
*[!0-9]* | "")
    echo "move-shard: SHARD is a number or hub, not '$2'" >&2
    exit 1
    ;;
*) tag="{s$2}" ;;
esac

cli() { # cli host:port command...
    node=$1
    shift
    redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

slot=$(cli "$any" cluster keyslot "$tag")
target_id=$(cli "$target" cluster myid)

# The master serving the slot, from CLUSTER NODES: "id addr flags master ... slots".
owner() {
    cli "$any" cluster nodes | awk -v slot="$slot" '
        $3 ~ /master/ && $3 !~ /fail/ {
            for (i = 9; i <= NF; i++) {
                if ($i ~ /^\[/) continue
                n = split($i, r, "-")
                if (slot >= r[1] && slot <= r[n]) { print $1, $2; exit }
            }
        }'
}
# shellcheck disable=SC2046  # two words: the id and the address
set -- $(owner)
source_id=${1:-}
source_addr=${2:-}
if [ -z "$source_id" ]; then
    echo "move-shard: no live master serves slot $slot ($tag)" >&2
    exit 1
fi
if [ "$source_id" = "$target_id" ]; then
    echo "move-shard: $tag (slot $slot) is already on $target"
    exit 0
fi
source=${source_addr%@*}
source=${source%,*}

echo "move-shard: $tag is slot $slot: from $source to $target"
cli "$target" cluster setslot "$slot" importing "$source_id" >/dev/null
cli "$source" cluster setslot "$slot" migrating "$target_id" >/dev/null

moved=0
while :; do
    keys=$(cli "$source" --raw cluster getkeysinslot "$slot" 100)
    [ -n "$keys" ] || break
    # One key per line; a name may hold spaces but never a newline.
    echo "$keys" | while IFS= read -r key; do
        reply=$(cli "$source" --raw migrate "${target%:*}" "${target##*:}" "$key" 0 5000)
        case $reply in
        OK | NOKEY) ;;
        *)
            echo "move-shard: MIGRATE of a key of slot $slot failed: $reply" >&2
            exit 1
            ;;
        esac
    done || exit 1
    moved=$((moved + $(echo "$keys" | wc -l)))
done

# Hand the slot over: the target first (it stops asking for ASKING), then the source, then
# every other master, so none of them sends clients to the old owner.
cli "$target" cluster setslot "$slot" node "$target_id" >/dev/null
cli "$source" cluster setslot "$slot" node "$target_id" >/dev/null
cli "$any" cluster nodes | awk '$3 ~ /master/ && $3 !~ /fail/ { print $2 }' |
    while IFS= read -r addr; do
        addr=${addr%@*}
        addr=${addr%,*}
        cli "$addr" cluster setslot "$slot" node "$target_id" >/dev/null
    done
echo "move-shard: moved $moved key(s); slot $slot is served by $target"
