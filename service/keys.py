"""Every Redis key and channel name, in one place, under one prefix.

Keys come in two kinds. A shard's keys hold its players and its share of the
counters everyone shares (global, clicks, minutes, breakdowns, countries); the hub's
keys hold what belongs to the deployment as a whole (the tick clock, presence, the
event channel, the worker's lease). On one Redis there is one shard and no tags, so
the names are plain. On a Redis Cluster every shard's keys carry the hash tag
`{s<N>}` and the hub's `{hub}`, so each group sits in one hash slot and a script may
touch all of it (service/shards.py says which shard a player belongs to).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one deployment; `prefix` separates deployments and test runs.

    `shard_tag` and `hub_tag` are Redis Cluster hash tags ("{s3}:", "{hub}:") placed
    after the prefix, or "" on a single Redis.
    """

    prefix: str
    shard_tag: str = ""
    hub_tag: str = ""

    @property
    def root(self) -> str:
        """What a shard's key names start with."""
        return self.prefix + self.shard_tag

    @property
    def hub_root(self) -> str:
        """What the hub's key names start with."""
        return self.prefix + self.hub_tag

    @property
    def hub(self) -> Keys:
        """These keys as the hub's: their shard keys become the hub slot's too."""
        return Keys(self.prefix, self.hub_tag, self.hub_tag)

    @property
    def shard_count(self) -> str:
        # The number of logical shards the data was laid out with (service/shards.py);
        # an instance started with another number refuses to start.
        # Unsharded and untagged, so a single Redis and a cluster find it in one place.
        return self.prefix + "shards"

    # -- the counts --------------------------------------------------------
    @property
    def global_count(self) -> str:
        return self.root + "global"

    @property
    def clicks_total(self) -> str:
        # Every click ever counted; admin edits leave it alone, so clicks/s is its slope.
        return self.root + "clicks"

    @property
    def board(self) -> str:
        # Sorted set: display name -> count. Rank and paging are O(log n).
        return self.root + "board"

    @property
    def names(self) -> str:
        # Hash: canonical (case-folded) name -> display name.
        return self.root + "names"

    @property
    def nonces(self) -> str:
        # Hash: canonical name -> token nonce. A token is valid only while its nonce is here.
        return self.root + "nonces"

    @property
    def skeletons(self) -> str:
        # Hash: UTS #39 skeleton of a canonical name -> that canonical name, so a name
        # that looks like a taken one is taken too. Derived from `names` (not snapshotted):
        # rebuilt when `skeletons_version` is missing or names another ICU.
        return self.root + "skeletons"

    @property
    def skeletons_version(self) -> str:
        return self.root + "skeletons:version"

    @property
    def lex(self) -> str:
        # Sorted set of canonical names, all with score 0, for prefix search by name.
        return self.root + "lex"

    @property
    def minutes(self) -> str:
        # Hash: unix minute (seconds, multiple of 60) -> clicks in that minute.
        return self.root + "minutes"

    def breakdown(self, dimension: str, day: str) -> str:
        # Hash: value (e.g. "mobile") -> clicks on that UTC day (YYYY-MM-DD).
        return f"{self.root}bd:{dimension}:{day}"

    @property
    def breakdown_pattern(self) -> str:
        return self.root + "bd:*"

    # -- snapshot bookkeeping -----------------------------------------------
    @property
    def dirty(self) -> str:
        # Canonical names changed since the last snapshot (joins, clicks, edits, deletes).
        return self.root + "dirty"

    @property
    def dirty_inflight(self) -> str:
        # Names taken by a snapshot that has not committed yet; merged back if it dies.
        return self.root + "dirty:inflight"

    @property
    def tombstones(self) -> str:
        # Hash: nonce of a deleted user's token -> canonical name, until snapshotted.
        # Keyed by nonce (unique per join): a name deleted twice keeps both dead tokens.
        return self.root + "tombstones"

    @property
    def tombstones_inflight(self) -> str:
        return self.root + "tombstones:inflight"

    @property
    def epoch(self) -> str:
        # Present while Redis holds the whole truth; absent after a data loss until restored.
        return self.root + "epoch"

    @property
    def generation(self) -> str:
        # Incremented by every snapshot cut; SQL keeps the last committed one. A cut
        # whose number is not above SQL's means Redis went back in time (a failover
        # to a lagging replica), and the worker reconciles.
        return self.root + "generation"

    @property
    def inflight_owner(self) -> str:
        # The generation of the cut that last moved changes into the in-flight sets;
        # only that cut's commit may empty them.
        return self.root + "dirty:inflight:owner"

    @property
    def clock(self) -> str:
        # Hash: "last" ms handed out and "offset" ms added to Redis's TIME, so tick
        # ids never go back when Redis's clock does (NTP step, failover).
        return self.hub_root + "clock"

    @property
    def provisional(self) -> str:
        # Users who clicked with a valid signed token after a data loss, before the restore.
        return self.root + "provisional"

    @property
    def restore(self) -> str:
        # Hash: progress of a restore (cursor, owner), so a crashed restore resumes.
        return self.root + "restore"

    @property
    def secret(self) -> str:
        return self.hub_root + "secret"

    # -- rate limits -------------------------------------------------------
    def click_rate(self, canon: str) -> str:
        # List of "ms:n" entries of the last second's accepted clicks (a sliding log).
        return f"{self.root}rate:{canon}"

    def idempotency(self, canon: str, click_id: str) -> str:
        # "n:user:global:rank" of the first answer to a player's click batch with this id.
        return f"{self.root}idem:{canon}:{click_id}"

    @property
    def idempotency_new(self) -> str:
        # Sorted set: "canon\nid\nfirst answer" of batch ids recorded since the last
        # snapshot cut, scored by expiry (ms), for SQL; a restore puts them back.
        return self.root + "idem:new"

    @property
    def idempotency_inflight(self) -> str:
        return self.root + "idem:inflight"

    def join_rate(self, address: str) -> str:
        # Joins from one address in the current minute; expires 60 s after the first.
        return f"{self.hub_root}joinrate:{address}"

    def admin_failures(self, address: str) -> str:
        # Failed admin authentications from one address in the current minute (service/admin.py).
        return f"{self.hub_root}adminfail:{address}"

    # -- presence ----------------------------------------------------------
    @property
    def presence_expiry(self) -> str:
        # Sorted set: instance id -> heartbeat expiry (ms). Killed instances expire.
        return self.hub_root + "presence:expiry"

    @property
    def presence_count(self) -> str:
        # Hash: instance id -> live connections on that instance.
        return self.hub_root + "presence:count"

    # -- cross-instance events ------------------------------------------------
    @property
    def events(self) -> str:
        return self.hub_root + "events"

    @property
    def activity(self) -> str:
        # Stream of the admins' activity feed (service/activity.py), capped at ~5,000 entries.
        return self.hub_root + "activity"

    @property
    def country_board(self) -> str:
        # Sorted set: country code -> clicks, all time.
        return self.root + "countries"

    # -- milestones --------------------------------------------------------
    @property
    def milestone_global(self) -> str:
        # The highest global milestone announced; a value is announced once, ever.
        return self.hub_root + "milestone:global"

    @property
    def milestone_claim(self) -> str:
        # The id of the last global milestone claim (milestone_claim.lua), for retries.
        return self.hub_root + "milestone:global:claim"

    @property
    def milestone_personal(self) -> str:
        # Hash: canonical name -> the highest personal milestone announced.
        return self.root + "milestone:personal"

    # -- the worker ----------------------------------------------------------
    @property
    def lease(self) -> str:
        # The snapshot leader's lease: value is "<worker id>:<fence>", with a TTL.
        return self.hub_root + "worker:lease"

    @property
    def fence(self) -> str:
        # Incremented on every lease acquisition, to tell holders apart. The fence the
        # SQL store checks is claimed from SQL (Store.claim_fence), never from here.
        return self.hub_root + "worker:fence"

    @property
    def snapshot_status(self) -> str:
        # Hash written after every snapshot attempt; /readyz and /metrics read it.
        return self.hub_root + "worker:snapshot"

    def worker_health(self, worker_id: str) -> str:
        # Refreshed by a live worker with a TTL; `python -m worker --check` reads it.
        return f"{self.hub_root}worker:health:{worker_id}"

    @property
    def workers(self) -> str:
        # Sorted set: worker id -> heartbeat expiry (ms), counted by /metrics.
        return self.hub_root + "worker:alive"
