"""Redis's eviction policy, checked by the worker before it trusts a missing epoch key.

Under an `allkeys-*` policy Redis may evict any key when it runs out of memory,
the epoch key included: that looks exactly like a data loss, and a restore would
then add the snapshot on top of live counts (and evicted user keys lose counts
silently anyway). `noeviction` (Redis's default) or a `volatile-*` policy (only
keys with a TTL, and the data keys have none) is safe. On a Redis Cluster every
primary must be safe.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from service.counter import as_text

log = logging.getLogger(__name__)

UNSAFE_PREFIX = "allkeys-"


async def eviction_policy(redis: Redis) -> str | None:
    """Redis's maxmemory-policy, or None when CONFIG is not allowed (some managed Redis).

    On a Redis Cluster every primary that answers is asked (each holds some shards'
    epoch keys): the first unsafe policy found, else the first primary's. A primary
    that is down is skipped (its shards cannot be restored until it is back anyway).
    """
    try:
        if isinstance(redis, RedisCluster):
            await redis.initialize()  # learn the primaries (a no-op once known)
            answers = await asyncio.gather(
                *(
                    redis.config_get("maxmemory-policy", target_nodes=node)
                    for node in redis.get_primaries()
                ),
                return_exceptions=True,
            )
            replies = [dict(a) for a in answers if not isinstance(a, BaseException)]
            if not replies:
                failed = [a for a in answers if isinstance(a, BaseException)]
                raise failed[0] if failed else ConnectionError("no Redis Cluster primary")
        else:
            replies = [dict(await redis.config_get("maxmemory-policy"))]
    except ResponseError as exc:
        log.warning("cannot read Redis's maxmemory-policy (%s); make sure it is noeviction", exc)
        return None
    policies = [
        as_text(value)
        for one in replies
        for name, value in one.items()
        if as_text(name) == "maxmemory-policy"
    ]
    return next((p for p in policies if unsafe(p)), policies[0] if policies else None)


def unsafe(policy: str | None) -> bool:
    """True for a policy that can evict the epoch key (or any count)."""
    return policy is not None and policy.startswith(UNSAFE_PREFIX)


def refusal(policy: str) -> str:
    """The sentence an operator reads in the log."""
    return (
        f"Redis's maxmemory-policy is {policy}: it can evict the epoch key, and a restore "
        "would then add the snapshot on top of live counts. Set it to noeviction "
        "(CONFIG SET maxmemory-policy noeviction, and in redis.conf)."
    )
