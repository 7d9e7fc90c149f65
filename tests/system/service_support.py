"""Helpers for system tests that run several real instances and many clients."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.checks import bearer
from tests.support import Instance, Player, Stack, wait_ready


def start_instances(stack: Stack, count: int, extra: Mapping[str, str] | None = None) -> list[Any]:
    """Start `count` instances at once, then wait until every one is ready."""
    instances: list[Instance] = [stack.instance(extra, wait=False) for _ in range(count)]
    for instance in instances:
        wait_ready(instance.url, instance.proc)
    return instances


def strictly_increasing(values: Sequence[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def assert_no_duplicate_ticks(clients: Sequence[Player]) -> None:
    for client in clients:
        ticks = [state["tick"] for state in client.states]
        if not strictly_increasing(ticks):
            shown = [(s["tick"], s["global"], s["online"]) for s in client.states[:6]]
            raise AssertionError(
                f"duplicate or backward tick ids for a client of {client.url} "
                f"(token: {client.token is not None}): {ticks}; first (tick, global, online): "
                f"{shown}"
            )


@dataclass
class HttpPlayer:
    """A player that clicks over HTTP and remembers every acknowledgement."""

    client: httpx.AsyncClient
    name: str
    token: str
    acks: list[dict[str, Any]] = field(default_factory=list)

    async def click(self, n: int) -> dict[str, Any]:
        response = await self.client.post("/api/click", json={"n": n}, headers=bearer(self.token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        self.acks.append(body)
        return body


async def first_state_time(player: Player, predicate: Any, timeout: float = 10) -> float:
    """When (monotonic) the player received the first state matching `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state, received in zip(player.states, player.state_times, strict=True):
            if predicate(state):
                return received
        await asyncio.sleep(0.005)
    last = player.states[-1] if player.states else None
    raise AssertionError(f"no matching state within {timeout}s; last={last!r}")
