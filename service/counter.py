"""The Redis data model: the only module that knows the keys and runs the Lua scripts.

On several shards (service/shards.py) a player's scripts run on their shard, and every
read that spans players (the tick's state, the leaderboard, stats, breakdowns,
countries) reads each shard and sums or merges: per-shard reads are each atomic and
each shard keeps global == sum of its users, so the sums keep it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from service.admission import Admission
from service.breakdown import DIMENSIONS, Profile
from service.connection import REDIS_ERRORS
from service.errors import ApiError, count_limit, invalid_token, restoring, unavailable
from service.keys import Keys
from service.names import SKELETON_VERSION, canonical, skeleton
from service.shards import Shards
from service.tokens import Player
from service.validation import WINDOWS

RATE_WINDOW_MS = 1000
# A click batch's id is remembered this long: the contract promises at least 10 minutes.
IDEMPOTENCY_TTL_MS = 15 * 60 * 1000
TOP_N = 10
# Script calls in flight per instance for reads that span the shards (the tick, the
# leaderboard): well below the cluster client's per-node pool (service/connection.py).
FANOUT_CALLS = 16
# A shard's part of a tick that takes longer is shown as last read: a primary that
# hangs (not one that refuses) would otherwise hold every tick for the socket timeout.
SHARD_READ_TIMEOUT_S = 0.5
# Leaderboard pages this shallow are merged from each shard's first offset + limit rows;
# deeper ones are found by bisection on the counts (Counter._deep_page).
MAX_MERGED_ROWS = 2000
ANONYMOUS = Profile()
T = TypeVar("T")


class Script(AsyncScript):
    """A Lua script called by its SHA (EVALSHA), sent whole (EVAL) to a node that lacks it.

    redis-py's own fallback loads the script with SCRIPT LOAD, which a cluster client
    sends to every primary: with one primary down, scripts would then fail on the healthy
    ones too, and a restarted or newly promoted primary starts without any (replicas do
    not inherit the script cache). EVAL goes to the keys' node only, and caches it there.
    Either way the script runs once: NOSCRIPT means it did not run.
    """

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        keys = list(keys or [])
        flat = (*keys, *(args or []))
        client = self.registered_client if client is None else client
        try:
            return await client.evalsha(self.sha, len(keys), *flat)
        except NoScriptError:
            return await client.eval(self.script, len(keys), *flat)


def load_script(redis: Redis, name: str) -> Script:
    """A Lua script from service/lua, called by SHA and resent whole where it is missing."""
    source = resources.files("service").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(redis, source)


def as_text(value: Any) -> str:
    """A Redis reply as str (replies are bytes; a missing value is "")."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _monotonic_ms() -> int:
    """This host's monotonic clock in ms: elapsed time that a clock step cannot bend."""
    return int(time.monotonic() * 1000)


async def _stamped(call: Awaitable[T]) -> tuple[T, int]:
    """The call's reply and _monotonic_ms() when it came."""
    reply = await call
    return reply, _monotonic_ms()


def _pairs(flat: list[Any]) -> list[tuple[str, int]]:
    """[name, score, name, score, ...] from WITHSCORES into (name, int count) pairs."""
    return [(as_text(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


def utc_day(epoch_s: float) -> str:
    """The UTC day (YYYY-MM-DD) a moment falls in: the unit of the breakdown counters."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_s))


@dataclass(frozen=True)
class ClickResult:
    user: int
    global_count: int
    rank: int
    # The round numbers this click crossed first, or 0.
    global_milestone: int = 0
    personal_milestone: int = 0
    # True when this answers a batch id seen before: nothing was counted this time.
    repeated: bool = False


@dataclass(frozen=True)
class _Queued:
    """A click entry waiting for the next call of the click script."""

    rate_key: str
    idempotency_key: str
    entry: tuple[str | int, ...]
    limit_cps: int
    future: asyncio.Future[list[Any]]
    # When the click (most likely) arrived, on the admission clock; see service.admission.
    arrived: float = 0.0


@dataclass(frozen=True)
class AdminResult:
    username: str
    global_count: int
    nonce: str | None
    count: int = 0
    # The user's count before the edit or delete, for the audit log.
    before: int = 0


@dataclass(frozen=True)
class State:
    """One instant of the whole counter, as a tick shows it."""

    global_count: int
    users: int
    clicks_total: int
    online: int
    restored: bool
    server_ms: int
    top: list[tuple[str, int]] = field(default_factory=list)
    # Redis's clock made monotonic (state.lua): what tick ids are taken from.
    clock_ms: int = 0
    # Each shard's share of global_count, in shard order (one entry on a single Redis).
    shard_globals: tuple[int, ...] = ()
    # False while the hub's own memory (the global milestone) awaits its restore.
    hub_restored: bool = True
    # Shards shown as last read because their primary could not be reached.
    unreachable: int = 0
    # On several shards: the hub's primary could not be reached, so online, the clock
    # and server_ms are its last reading moved on by this host's clock (Counter.state).
    hub_unreachable: bool = False


@dataclass(frozen=True)
class Entry:
    rank: int
    username: str
    count: int

    def as_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "username": self.username, "count": self.count}


class Counter:
    """Atomic counting, identity, rate limits, presence and reads, on one Redis or a cluster."""

    def __init__(
        self,
        redis: Redis,
        shards: Shards,
        *,
        max_batch: int = 100,
        max_pending: int = 5000,
        admission: Admission | None = None,
        peer: Counter | None = None,
    ) -> None:
        self.redis = redis
        self.shards = shards
        # The hub's keys (presence, clock, secret, worker status); on one Redis, all keys.
        self.keys: Keys = shards.hub
        # Each shard's share of the global count as last read (state(), here or by `peer`,
        # which shares this list); a click's answer on several shards adds the other
        # shards' shares to its own shard's exact count.
        self._shard_globals: list[int] = peer._shard_globals if peer else [0] * shards.count
        # Each shard's last tick reading, shown while its primary cannot be reached.
        self._last_parts: list[Any] = peer._last_parts if peer else [None] * shards.count
        # The hub's last tick reading and this host's time of it (ms), for the same use.
        self._last_hub: list[tuple[Any, int]] = peer._last_hub if peer else []
        self._fanout: asyncio.Semaphore = peer._fanout if peer else asyncio.Semaphore(FANOUT_CALLS)
        # The highest global milestone known to be claimed (claim_global_milestone).
        self._milestone_known = 0
        # Refuses queued clicks that waited too long, and picks the queue's order.
        self.admission = admission
        # A call of 100 entries keeps Redis busy for a few ms at most.
        self.max_batch = max_batch
        # Beyond this many waiting clicks the instance refuses at once (503) instead
        # of letting every click wait seconds for Redis.
        self.max_pending = max_pending
        # One queue and one flusher per shard: a shard whose primary hangs holds up its
        # own players only, and each shard has at most one click call in flight.
        self._queues: dict[int, list[_Queued]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._click = load_script(redis, "click")
        self._shard_state = load_script(redis, "shard_state")
        self._milestone_claim = load_script(redis, "milestone_claim")
        self._counter_window = load_script(redis, "admin_fail")
        self._join = load_script(redis, "join")
        self._set_count = load_script(redis, "set_count")
        self._delete = load_script(redis, "delete")
        self._state = load_script(redis, "state")
        self._leaderboard = load_script(redis, "leaderboard")
        self._user = load_script(redis, "user")
        self._heartbeat = load_script(redis, "heartbeat")

    # -- players -----------------------------------------------------------
    async def join(self, display: str, canon: str, address: str, limit_per_minute: int) -> str:
        """Reserve the name and return the nonce its token will carry."""
        k = self.shards.keys_of(canon)
        nonce = secrets.token_hex(8)
        if self.shards.sharded:
            # The address's counter is a hub key: counted here, and the script skips it.
            used, ttl_ms = await self._counter_window(
                keys=[self.keys.join_rate(address)], args=[60_000]
            )
            if int(used) > limit_per_minute:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"Too many joins from your address; at most {limit_per_minute} a minute.",
                    retry_after_s=max(1, int(ttl_ms) // 1000),
                )
            limit_per_minute = 0
        for _ in range(3):
            reply = await self._join(
                keys=[
                    k.nonces,
                    k.names,
                    k.board,
                    k.lex,
                    k.dirty,
                    k.epoch,
                    k.join_rate(address) if limit_per_minute else k.nonces,
                    k.skeletons,
                    k.skeletons_version,
                ],
                args=[canon, display, nonce, limit_per_minute, skeleton(canon), SKELETON_VERSION],
            )
            if as_text(reply[0]) != "unindexed":
                break
            await self.index_skeletons(k)
        outcome = as_text(reply[0])
        if outcome == "taken":
            owner = as_text(reply[1])
            if canonical(owner) == canon:
                raise ApiError(409, "name_taken", f"The name {display!r} is taken; pick another.")
            raise ApiError(
                409,
                "name_taken",
                f"The name {display!r} looks too much like {owner!r}, which is taken;"
                " pick another.",
            )
        if outcome == "rate":
            raise ApiError(
                429,
                "rate_limited",
                f"Too many joins from your address; at most {limit_per_minute} a minute.",
                retry_after_s=max(1, int(reply[1])),
            )
        if outcome == "restoring":
            raise restoring()
        if outcome == "unindexed":
            raise unavailable("The name index is being rebuilt; try again in a moment.")
        return nonce

    async def index_skeletons(self, k: Keys, batch: int = 1000) -> int:
        """Index every name stored in a shard by its skeleton (first come keeps a shared
        one); how many.

        Runs when the index is missing (a new deployment, a Redis loss) or was built with
        another ICU. Idempotent and safe to run on several instances at once.
        """
        indexed, cursor = 0, 0
        while True:
            cursor, rows = await self.redis.hscan(k.names, cursor, count=batch)
            pipe = self.redis.pipeline(transaction=False)
            for raw in rows:
                canon = as_text(raw)
                pipe.hsetnx(k.skeletons, skeleton(canon), canon)
            indexed += len(rows)
            await pipe.execute()
            if cursor == 0:
                break
        await self.redis.set(k.skeletons_version, SKELETON_VERSION)
        return indexed

    async def click(
        self,
        player: Player,
        n: int,
        limit_cps: int,
        profile: Profile = ANONYMOUS,
        *,
        click_id: str = "",
        arrived: float = 0.0,
    ) -> ClickResult:
        """Count n clicks for a player, or raise: revoked token, over the rate limit, a
        reused id with another n, or (with admission control) waited too long.

        Clicks that arrive while a call to Redis is out wait for the next one, which
        carries all of them: no added delay when idle, one round trip for many when busy.
        A batch with an id that was counted before counts nothing and gets the first answer.
        """
        if sum(map(len, self._queues.values())) >= self.max_pending:
            raise ApiError(
                503, "overloaded", "This instance is saturated; try again.", retry_after_s=1
            )
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        entry = (player.canon, player.display, player.nonce, n, *profile.values(), click_id)
        shard = self.shards.of(player.canon)
        k = self.shards.shard(shard)
        self._queues.setdefault(shard, []).append(
            _Queued(
                k.click_rate(player.canon),
                k.idempotency(player.canon, click_id),
                entry,
                limit_cps,
                future,
                arrived,
            )
        )
        flusher = self._flushers.get(shard)
        if flusher is None or flusher.done():
            self._flushers[shard] = asyncio.create_task(self._flush(shard), name="click-flush")
        reply = await future
        outcome = as_text(reply[0])
        if outcome == "token":
            raise invalid_token()
        if outcome == "restoring":
            raise restoring()
        if outcome == "limit":
            raise count_limit()
        if outcome == "mismatch":
            raise ApiError(
                422,
                "idempotency_mismatch",
                f"This id was first used with n={int(reply[1])}, not n={n}; use a new id.",
            )
        if outcome == "rate":
            wait_ms = int(reply[1])
            if wait_ms < 0:  # the callers' validation refuses such an n before it gets here
                raise ApiError(
                    429,
                    "rate_limited",
                    f"n={n} is more than the {limit_cps} clicks a second a player may make.",
                    retry_after_s=1,
                )
            raise ApiError(
                429,
                "rate_limited",
                f"Slow down: at most {limit_cps} clicks a second.",
                retry_after_s=max(wait_ms, 1) / 1000,
            )
        return ClickResult(
            user=int(reply[1]),
            global_count=int(as_text(reply[2])),
            rank=int(reply[3]),
            global_milestone=int(reply[4]) if outcome == "ok" else 0,
            personal_milestone=int(reply[5]) if outcome == "ok" else 0,
            repeated=outcome == "dup",
        )

    async def _flush(self, shard: int) -> None:
        """Send a shard's queued clicks in calls of at most max_batch until it is empty."""
        while self._queues.get(shard):
            batch = self._next_batch(shard)
            if not batch:
                continue
            with contextlib.suppress(Exception):  # handed to the callers' futures
                await self._call_click(shard, batch)

    async def _call_click(self, shard: int, batch: list[_Queued]) -> None:
        """One call of the click script on one shard; its replies (or error) to the callers."""
        sharded = self.shards.sharded
        others = sum(self._shard_globals) - self._shard_globals[shard] if sharded else 0
        try:
            replies = await self._click(
                keys=[
                    *self._click_keys(self.shards.shard(shard)),
                    *(key for q in batch for key in (q.rate_key, q.idempotency_key)),
                ],
                args=[
                    batch[0].limit_cps,
                    RATE_WINDOW_MS,
                    IDEMPOTENCY_TTL_MS,
                    int(sharded),
                    others,
                    *(value for q in batch for value in q.entry),
                ],
            )
        except BaseException as exc:
            for queued in batch:
                if not queued.future.done():
                    queued.future.set_exception(exc)
            raise
        for queued, reply in zip(batch, replies, strict=True):
            if not queued.future.done():
                queued.future.set_result(reply)
        if sharded and (counted := [r for r in replies if r[0] == b"ok"]):
            # This shard's global after the call, fresher than the tick's reading.
            self._shard_globals[shard] = int(counted[-1][2]) - others

    def _next_batch(self, shard: int) -> list[_Queued]:
        """Take a shard's clicks for its next Redis call, refusing those that waited too long.

        Oldest first normally; newest first while admission control sees a standing
        queue (adaptive LIFO). A caller that gave up (cancelled) is not counted.
        """
        admission = self.admission
        queue = self._queues[shard]
        if admission is None:
            batch, self._queues[shard] = queue[: self.max_batch], queue[self.max_batch :]
            return [queued for queued in batch if not queued.future.done()]
        live: list[_Queued] = []
        for queued in queue:
            if queued.future.done():
                continue
            if admission.expired(queued.arrived):
                queued.future.set_exception(admission.refusal_for(queued.arrived))
            else:
                live.append(queued)
        if admission.congested():
            batch, self._queues[shard] = live[-self.max_batch :], live[: -self.max_batch]
        else:
            batch, self._queues[shard] = live[: self.max_batch], live[self.max_batch :]
        for queued in batch:
            admission.served(queued.arrived)
        if not any(self._queues.values()):
            admission.drained()
        return batch

    def _click_keys(self, k: Keys) -> list[str]:
        day = utc_day(time.time())
        return [
            k.nonces,
            k.names,
            k.board,
            k.global_count,
            k.clicks_total,
            k.minutes,
            k.dirty,
            k.epoch,
            k.provisional,
            k.lex,
            *(k.breakdown(dimension, day) for dimension in DIMENSIONS),
            k.country_board,
            # A hub key, which a shard's script may not name; on several shards the
            # script leaves global milestones to the ticker and never reads it.
            k.milestone_global if not self.shards.sharded else k.milestone_personal,
            k.milestone_personal,
            k.idempotency_new,
        ]

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for queued clicks to reach Redis, at shutdown."""
        running = {task for task in self._flushers.values() if not task.done()}
        if running:
            await asyncio.wait(running, timeout=timeout_s)

    async def nonce_is_live(self, player: Player) -> bool:
        """True when the token's nonce is current, or Redis lost it and awaits a restore."""
        k = self.shards.keys_of(player.canon)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(k.nonces, player.canon)
        pipe.exists(k.epoch)
        stored, epoch = await pipe.execute()
        if stored is None:
            return not epoch
        return as_text(stored) == player.nonce

    # -- admin -------------------------------------------------------------
    async def set_count(self, canon: str, count: int) -> AdminResult:
        k = self.shards.keys_of(canon)
        reply = await self._set_count(
            keys=[k.names, k.board, k.global_count, k.dirty, k.epoch, k.nonces],
            args=[canon, count],
        )
        return self._admin_result(canon, reply, count)

    async def delete(self, canon: str, nonce: str | None = None) -> AdminResult:
        """Delete the user (only the one holding `nonce`, if given); 404 when missing."""
        k = self.shards.keys_of(canon)
        reply = await self._delete(
            keys=[
                k.names,
                k.board,
                k.global_count,
                k.dirty,
                k.epoch,
                k.nonces,
                k.lex,
                k.provisional,
                k.tombstones,
                k.milestone_personal,
                k.skeletons,
            ],
            args=[canon, skeleton(canon)] + ([] if nonce is None else [nonce]),
        )
        return self._admin_result(canon, reply, 0)

    def _admin_result(self, canon: str, reply: list[Any], count: int) -> AdminResult:
        """The script's answer; on several shards its global is the user's shard's, plus
        the other shards' as last read (the edit is done: no read may fail it now)."""
        outcome = as_text(reply[0])
        if outcome == "missing":
            raise ApiError(404, "not_found", "No user by that name.")
        if outcome == "restoring":
            raise restoring()
        if outcome == "limit":
            raise count_limit()
        nonce = as_text(reply[3]) if reply[3] is not None else None
        global_count = int(reply[2])
        if self.shards.sharded:
            mine = self.shards.of(canon)
            self._shard_globals[mine] = global_count  # exact now: fresher than the tick's
            global_count += sum(self._shard_globals) - self._shard_globals[mine]
        return AdminResult(
            username=as_text(reply[1]),
            global_count=global_count,
            nonce=nonce,
            count=count,
            before=int(reply[4]),
        )

    # -- reads -------------------------------------------------------------
    async def state(self, top_n: int = TOP_N, floor_ms: int = 0) -> State:
        """The whole counter (each shard at one instant); its clock_ms is never below floor_ms.

        One script call on a single Redis. On several shards: the hub's call (clock and
        presence) and one per shard, together; the shares are summed and the tops merged.
        """
        hub = self.keys
        hub_call = self._state(
            keys=[
                hub.global_count,
                hub.board,
                hub.clicks_total,
                hub.presence_expiry,
                hub.presence_count,
                hub.epoch,
                hub.clock,
            ],
            args=[top_n, floor_ms],
        )
        if not self.shards.sharded:
            reply = await hub_call
            state = State(
                global_count=int(reply[0]),
                users=int(reply[1]),
                clicks_total=int(reply[2]),
                online=int(reply[3]),
                restored=bool(reply[4]),
                server_ms=int(reply[5]),
                top=_pairs(reply[6]),
                clock_ms=int(reply[7]),
                shard_globals=(int(reply[0]),),
            )
            self._shard_globals[:] = state.shard_globals
            return state
        hub, *read = await asyncio.gather(
            asyncio.wait_for(_stamped(hub_call), SHARD_READ_TIMEOUT_S),
            *(
                asyncio.wait_for(
                    self._fanned(
                        self._shard_state(
                            keys=[k.global_count, k.board, k.clicks_total, k.epoch],
                            args=[top_n],
                        )
                    ),
                    SHARD_READ_TIMEOUT_S,
                )
                for k in self.shards.all()
            ),
            return_exceptions=True,
        )
        late_hub = isinstance(hub, (*REDIS_ERRORS, TimeoutError)) and bool(self._last_hub)
        if isinstance(hub, BaseException) and not late_hub:
            raise hub
        # A shard whose primary cannot be reached shows its last reading, so everyone
        # else's clicks keep moving the ticks (its own players get `unavailable`).
        parts, unreachable = [], 0
        for shard, part in enumerate(read):
            late = isinstance(part, (*REDIS_ERRORS, TimeoutError))
            if late and self._last_parts[shard] is not None:
                part, unreachable = self._last_parts[shard], unreachable + 1
            elif isinstance(part, BaseException):
                raise part
            self._last_parts[shard] = part
            parts.append(part)
        if isinstance(hub, BaseException):
            if unreachable == len(parts):
                raise hub  # nothing answered: Redis is down for us, not one primary
            reply, hub_unreachable = self._hub_estimate(floor_ms), True
        else:
            self._last_hub[:] = [hub]
            reply, hub_unreachable = hub[0], False
        shard_globals = tuple(int(part[0]) for part in parts)
        self._shard_globals[:] = shard_globals
        return State(
            global_count=sum(shard_globals),
            users=sum(int(part[1]) for part in parts),
            clicks_total=sum(int(part[2]) for part in parts),
            online=int(reply[3]),
            restored=all(int(part[3]) for part in parts),
            server_ms=int(reply[5]),
            top=_merge_top([_pairs(part[4]) for part in parts], top_n),
            clock_ms=int(reply[7]),
            shard_globals=shard_globals,
            hub_restored=bool(reply[4]),
            unreachable=unreachable,
            hub_unreachable=hub_unreachable,
        )

    def _hub_estimate(self, floor_ms: int) -> list[Any]:
        """The hub's last state.lua reply, its clocks moved on by the time since it came."""
        # Losing the hub's primary then freezes the online count, not every tick: tick ids
        # stay monotonic (never below floor_ms) and within this host's clock drift of the
        # other instances', and the shards' counts keep moving.
        last, read_ms = self._last_hub[0]
        elapsed = max(0, _monotonic_ms() - read_ms)
        reply = list(last)
        reply[5] = int(last[5]) + elapsed
        reply[7] = max(floor_ms, int(last[7]) + elapsed)
        return reply

    async def claim_global_milestone(self, state: State) -> int:
        """On several shards: the global milestone this state reached first, or 0.

        Judged on the summed global (a power of ten, from 1,000) and claimed by a
        compare-and-set on the hub, so one instance announces it, once. On a single
        Redis the click script does this itself and this returns 0.
        """
        if (
            not self.shards.sharded
            or not state.restored
            or not state.hub_restored
            or state.hub_unreachable
        ):
            return 0
        reached = _power_of_ten(state.global_count, 1000)
        if reached <= self._milestone_known:
            return 0  # claimed already, by us or another instance
        claimed = await self._milestone_claim(
            keys=[self.keys.milestone_global, self.keys.epoch, self.keys.milestone_claim],
            args=[str(reached), secrets.token_hex(8)],
        )
        self._milestone_known = reached
        return int(as_text(claimed) or 0)

    async def leaderboard(self, offset: int, limit: int) -> tuple[int, list[Entry]]:
        """One page of the leaderboard and the number of players, ranks shared by equal counts.

        On several shards the order is count descending, then shard, then name descending
        (ZREVRANGE's order within a shard): equal counts share a rank, whatever their order.
        A page within the first MAX_MERGED_ROWS rows merges each shard's first
        offset + limit rows; a deeper one is found by bisection (_deep_page).
        """
        if not self.shards.sharded:
            total, first_rank, flat = await self._leaderboard(
                keys=[self.keys.board], args=[offset, limit]
            )
            rows = _pairs(flat)
        elif offset + limit > MAX_MERGED_ROWS:
            total, first_rank, rows = await self._deep_page(offset, limit)
        else:
            parts = await asyncio.gather(
                *(
                    self._fanned(self._leaderboard(keys=[k.board], args=[0, offset + limit]))
                    for k in self.shards.all()
                )
            )
            total = sum(int(part[0]) for part in parts)
            merged = _merge_top([_pairs(part[2]) for part in parts], offset + limit)
            rows = merged[offset:]
            first_rank = 1 + sum(1 for _, count in merged if rows and count > rows[0][1])
        entries: list[Entry] = []
        for i, (name, count) in enumerate(rows):
            # Equal counts share a rank; where the count drops, everyone above has more
            # clicks, so the rank is the position. The first row's is counted above it.
            if not entries:
                rank = int(first_rank)
            elif count == entries[-1].count:
                rank = entries[-1].rank
            else:
                rank = offset + i + 1
            entries.append(Entry(rank, name, count))
        return int(total), entries

    async def _deep_page(self, offset: int, limit: int) -> tuple[int, int, list[tuple[str, int]]]:
        """(players, rank of the first row, rows) of a page at any depth on several shards."""
        # The count c of the row at `offset` is the least c that at most `offset` players
        # exceed: a bisection on c, each step one ZCOUNT per shard in one pipeline (about
        # log2 of the top count steps: 20 for a million clicks). Each shard is then read
        # from its own position of that row: past its players who count more than c, and
        # past its players with c that come before the row in shard order; the merge of
        # those reads is the page. Clicks between the steps shift a deep page by a row or
        # so, as they shift any page between two requests.
        boards = [k.board for k in self.shards.all()]

        async def counting(low: int, high: float) -> list[int]:
            """Players of each shard with low < count <= high."""
            replies = await self._piped(boards, lambda pipe, b: pipe.zcount(b, f"({low}", high))
            return [int(n) for n in replies]

        totals = [int(n) for n in await self._piped(boards, lambda pipe, b: pipe.zcard(b))]
        total = sum(totals)
        if offset >= total:
            return total, 0, []
        tops = await self._piped(boards, lambda pipe, b: pipe.zrevrange(b, 0, 0, withscores=True))
        low, high = 0, max((int(top[0][1]) for top in tops if top), default=0)
        while low < high:  # the least c with sum(more than c) <= offset
            middle = (low + high) // 2
            if sum(await counting(middle, float("inf"))) <= offset:
                high = middle
            else:
                low = middle + 1
        c = low
        above = await counting(c, float("inf"))
        equal = await counting(c - 1, c)
        skip = min(max(0, offset - sum(above)), sum(equal))  # of the ties, in shard order
        starts = []
        for more, ties in zip(above, equal, strict=True):
            taken = min(skip, ties)
            starts.append(more + taken)
            skip -= taken
        reads = await self._piped(
            list(zip(boards, starts, strict=True)),
            lambda pipe, at: pipe.zrevrange(at[0], at[1], at[1] + limit - 1, withscores=True),
        )
        rows = _merge_top([[(as_text(n), int(k)) for n, k in read] for read in reads], limit)
        first = rows[0][1] if rows else c
        first_rank = 1 + sum(above if first == c else await counting(first, float("inf")))
        return total, first_rank, rows

    async def users(self, canons: list[str]) -> list[Entry]:
        """Rank, display name and count for the users that exist among these names.

        On several shards a rank adds, to the rank in the user's shard, how many players
        of every other shard count more.
        """
        if not canons:
            return []
        by_shard: dict[int, list[str]] = {}
        for canon in canons:
            by_shard.setdefault(self.shards.of(canon), []).append(canon)
        rows: list[tuple[int, Entry]] = []
        for shard, names in by_shard.items():
            k = self.shards.shard(shard)
            for name, count, rank in await self._user(keys=[k.names, k.board], args=names):
                rows.append((shard, Entry(int(rank), as_text(name), int(float(count)))))
        if not self.shards.sharded:
            return [entry for _, entry in rows]
        # Who counts more in each other shard, for every user: one pipeline for them all.
        boards = [k.board for k in self.shards.all()]
        asks = [
            (board, entry.count)
            for shard, entry in rows
            for i, board in enumerate(boards)
            if i != shard
        ]
        above = await self._piped(asks, lambda pipe, ask: pipe.zcount(ask[0], f"({ask[1]}", "+inf"))
        others = len(boards) - 1
        found = []
        for n, (_, entry) in enumerate(rows):
            more = sum(int(count) for count in above[n * others : (n + 1) * others])
            found.append(Entry(entry.rank + more, entry.username, entry.count))
        order = {canon: i for i, canon in enumerate(canons)}
        return sorted(found, key=lambda e: order.get(canonical(e.username), len(order)))

    async def search(self, prefix: str, limit: int) -> list[Entry]:
        """Users whose name starts with prefix (ignoring case), in name order."""
        # Bytes: 0xff sorts after every UTF-8 byte; the str "\xff" would be c3 bf.
        low = b"[" + prefix.encode() if prefix else b"-"
        high = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
        found = await self._piped(
            [k.lex for k in self.shards.all()],
            lambda pipe, lex: pipe.zrangebylex(lex, low, high, start=0, num=limit),
        )
        canons = sorted(c for part in found for c in part)[:limit]
        return await self.users([as_text(c) for c in canons])

    async def stats(self, window_name: str, now: float | None = None) -> dict[str, Any]:
        """Clicks per bucket over a window, oldest first, empty buckets as 0 (shards summed)."""
        span, bucket = WINDOWS[window_name]
        now = time.time() if now is None else now
        last = int(now // bucket) * bucket
        starts = [last - i * bucket for i in range(span // bucket - 1, -1, -1)]
        minutes = [str(start + m * 60) for start in starts for m in range(bucket // 60)]
        parts = await self._piped(
            [k.minutes for k in self.shards.all()], lambda pipe, key: pipe.hmget(key, minutes)
        )
        per_minute = [sum(int(part[i] or 0) for part in parts) for i in range(len(minutes))]
        per_bucket = bucket // 60
        points = [
            [start, sum(per_minute[i * per_bucket : (i + 1) * per_bucket])]
            for i, start in enumerate(starts)
        ]
        return {"window": window_name, "bucket_seconds": bucket, "points": points}

    async def breakdown(self, dimension: str, days: int, now: float | None = None) -> list[Entry]:
        """Clicks per value of one dimension over the last `days` UTC days, most first."""
        now = time.time() if now is None else now
        keys = [
            k.breakdown(dimension, utc_day(now - back * 86400))
            for k in self.shards.all()
            for back in range(days)
        ]
        totals: dict[str, int] = {}
        for day in await self._piped(keys, lambda pipe, key: pipe.hgetall(key)):
            for value, clicks in day.items():
                totals[as_text(value)] = totals.get(as_text(value), 0) + int(clicks)
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return [Entry(i + 1, value, clicks) for i, (value, clicks) in enumerate(ranked)]

    async def countries(self, limit: int) -> list[tuple[str, int]]:
        """The country leaderboard (all time), summed over shards."""
        if not self.shards.sharded:
            flat = await self.redis.zrevrange(
                self.keys.country_board, 0, limit - 1, withscores=True
            )
            return [(as_text(row[0]), int(row[1])) for row in flat]
        # A shard's board holds at most a few hundred countries: read them whole and sum.
        parts = await self._piped(
            [k.country_board for k in self.shards.all()],
            lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True),
        )
        totals: dict[str, int] = {}
        for part in parts:
            for code, clicks in part:
                totals[as_text(code)] = totals.get(as_text(code), 0) + int(clicks)
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]

    async def _piped(self, keys: Sequence[T], queue: Callable[[Any, T], Any]) -> list[Any]:
        """queue(pipeline, key) for every key, then the replies in order: one round trip
        on a single Redis, one per node on a cluster (one connection each, so reads
        that span the shards cannot exhaust the cluster client's per-node pool)."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            queue(pipe, key)
        return list(await pipe.execute())

    async def _fanned(self, call: Awaitable[Any]) -> Any:
        """A script call of a read that spans the shards, at most FANOUT_CALLS at a time
        per instance (scripts do not go in cluster pipelines)."""
        async with self._fanout:
            return await call

    # -- presence ----------------------------------------------------------
    async def heartbeat(self, instance_id: str, connections: int, ttl_ms: int) -> None:
        k = self.keys
        await self._heartbeat(
            keys=[k.presence_expiry, k.presence_count], args=[instance_id, connections, ttl_ms]
        )

    async def leave(self, instance_id: str) -> None:
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(k.presence_expiry, instance_id)
        pipe.hdel(k.presence_count, instance_id)
        await pipe.execute()

    # -- bootstrap -----------------------------------------------------------
    async def mark_fresh(self) -> bool:
        """Declare an empty Redis authoritative (nothing to restore); True if we set any.

        On several shards: every shard's epoch and the hub's.
        """
        marked = await self._piped(
            self.shards.epochs, lambda pipe, key: pipe.set(key, secrets.token_hex(8), nx=True)
        )
        return any(marked)

    async def is_restored(self) -> bool:
        """True when every shard (and, on several, the hub) holds the whole truth."""
        return all(await self._piped(self.shards.epochs, lambda pipe, key: pipe.exists(key)))

    # -- worker status, for /readyz and /metrics ----------------------------
    async def snapshot_status(self) -> dict[str, str]:
        """What the snapshot leader last reported (see worker/snapshot.py for the fields)."""
        raw = await self.redis.hgetall(self.keys.snapshot_status)
        return {as_text(k): as_text(v) for k, v in raw.items()}

    async def workers_alive(self) -> int:
        """Workers whose heartbeat has not expired (a sorted set: no keyspace scan)."""
        now_ms = int(time.time() * 1000)
        return int(await self.redis.zcount(self.keys.workers, now_ms, "+inf"))


def _merge_top(tops: list[list[tuple[str, int]]], n: int) -> list[tuple[str, int]]:
    """The first n of the shards' (name, count) lists, each in ZREVRANGE's order, by count
    descending, then shard (heapq.merge is stable: equal counts keep the lists' order),
    then each list's own order. Every page of the leaderboard uses this order."""
    merged = heapq.merge(*tops, key=lambda row: row[1], reverse=True)
    return list(itertools.islice(merged, n))


def _power_of_ten(count: int, first: int) -> int:
    """The highest power of ten (from `first`) that count has reached, or 0."""
    if count < first:
        return 0
    return 10 ** (len(str(count)) - 1)
