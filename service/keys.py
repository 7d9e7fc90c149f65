"""Every Redis key and channel name, in one place, under one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names for one deployment; `prefix` separates deployments and test runs."""

    prefix: str

    # -- the counts --------------------------------------------------------
    @property
    def global_count(self) -> str:
        return self.prefix + "global"

    @property
    def clicks_total(self) -> str:
        # Every click ever counted; admin edits leave it alone, so clicks/s is its slope.
        return self.prefix + "clicks"

    @property
    def board(self) -> str:
        # Sorted set: display name -> count. Rank and paging are O(log n).
        return self.prefix + "board"

    @property
    def names(self) -> str:
        # Hash: canonical (case-folded) name -> display name.
        return self.prefix + "names"

    @property
    def nonces(self) -> str:
        # Hash: canonical name -> token nonce. A token is valid only while its nonce is here.
        return self.prefix + "nonces"

    @property
    def lex(self) -> str:
        # Sorted set of canonical names, all with score 0, for prefix search by name.
        return self.prefix + "lex"

    @property
    def minutes(self) -> str:
        # Hash: unix minute (seconds, multiple of 60) -> clicks in that minute.
        return self.prefix + "minutes"

    def breakdown(self, dimension: str, day: str) -> str:
        # Hash: value (e.g. "mobile") -> clicks on that UTC day (YYYY-MM-DD).
        return f"{self.prefix}bd:{dimension}:{day}"

    @property
    def breakdown_pattern(self) -> str:
        return self.prefix + "bd:*"

    # -- snapshot bookkeeping -----------------------------------------------
    @property
    def dirty(self) -> str:
        # Canonical names changed since the last snapshot (joins, clicks, edits, deletes).
        return self.prefix + "dirty"

    @property
    def dirty_inflight(self) -> str:
        # Names taken by a snapshot that has not committed yet; merged back if it dies.
        return self.prefix + "dirty:inflight"

    @property
    def tombstones(self) -> str:
        # Hash: canonical name -> nonce of a deleted user's token, until snapshotted.
        return self.prefix + "tombstones"

    @property
    def tombstones_inflight(self) -> str:
        return self.prefix + "tombstones:inflight"

    @property
    def epoch(self) -> str:
        # Present while Redis holds the whole truth; absent after a data loss until restored.
        return self.prefix + "epoch"

    @property
    def provisional(self) -> str:
        # Users who clicked with a valid signed token after a data loss, before the restore.
        return self.prefix + "provisional"

    @property
    def restore(self) -> str:
        # Hash: progress of a restore (cursor, owner), so a crashed restore resumes.
        return self.prefix + "restore"

    @property
    def secret(self) -> str:
        return self.prefix + "secret"

    # -- rate limits -------------------------------------------------------
    def click_rate(self, canon: str) -> str:
        # List of "ms:n" entries of the last second's accepted clicks (a sliding log).
        return f"{self.prefix}rate:{canon}"

    def idempotency(self, canon: str, click_id: str) -> str:
        # "n:user:global:rank" of the first answer to a player's click batch with this id.
        return f"{self.prefix}idem:{canon}:{click_id}"

    def join_rate(self, address: str) -> str:
        # Joins from one address in the current minute; expires 60 s after the first.
        return f"{self.prefix}joinrate:{address}"

    # -- presence ----------------------------------------------------------
    @property
    def presence_expiry(self) -> str:
        # Sorted set: instance id -> heartbeat expiry (ms). Killed instances expire.
        return self.prefix + "presence:expiry"

    @property
    def presence_count(self) -> str:
        # Hash: instance id -> live connections on that instance.
        return self.prefix + "presence:count"

    # -- cross-instance events ------------------------------------------------
    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def country_board(self) -> str:
        # Sorted set: country code -> clicks, all time.
        return self.prefix + "countries"

    # -- milestones --------------------------------------------------------
    @property
    def milestone_global(self) -> str:
        # The highest global milestone announced; a value is announced once, ever.
        return self.prefix + "milestone:global"

    @property
    def milestone_personal(self) -> str:
        # Hash: canonical name -> the highest personal milestone announced.
        return self.prefix + "milestone:personal"

    # -- the worker ----------------------------------------------------------
    @property
    def lease(self) -> str:
        # The snapshot leader's lease: value is "<worker id>:<fence>", with a TTL.
        return self.prefix + "worker:lease"

    @property
    def fence(self) -> str:
        # Incremented on every lease acquisition; the SQL store refuses older fences.
        return self.prefix + "worker:fence"

    @property
    def snapshot_status(self) -> str:
        # Hash written after every snapshot attempt; /readyz and /metrics read it.
        return self.prefix + "worker:snapshot"

    def worker_health(self, worker_id: str) -> str:
        # Refreshed by a live worker with a TTL; `python -m worker --check` reads it.
        return f"{self.prefix}worker:health:{worker_id}"

    @property
    def workers(self) -> str:
        # Sorted set: worker id -> heartbeat expiry (ms), counted by /metrics.
        return self.prefix + "worker:alive"
