"""Broadcast by tick: the clicks-per-second math and the Ticker, on the real counter."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from service.counter import Counter
from service.ticker import ClickRate, Ticker, state_body
from service.tokens import Player
from service.validation import canonical
from tests.support import Player as Client
from tests.support import eventually, join

# Long enough that a read delayed by a busy machine still lands in its own tick (reads are
# labelled with the nearest boundary, so jitter above half a tick would repeat one).
TICK_MS = 50

# -- ClickRate ------------------------------------------------------------------------------


def test_no_rate_without_two_samples() -> None:
    rate = ClickRate()
    assert rate.current() == 0.0
    assert rate.add(1_000, 500) == 0.0


def test_rate_is_the_slope_of_the_total() -> None:
    rate = ClickRate()
    rate.add(0, 0)
    assert rate.add(1_000, 50) == 50.0
    assert rate.add(2_000, 150) == 75.0  # 150 clicks over two seconds


def test_rate_only_looks_at_the_last_two_seconds() -> None:
    rate = ClickRate()
    for ms, total in [(0, 0), (1_000, 10), (2_000, 30), (3_000, 60)]:
        rate.add(ms, total)
    # (0, 0) has left the window: (60 - 10) clicks over 2 s.
    assert rate.current() == 25.0
    # A long silence: the rate falls to zero once the window holds only the quiet part.
    rate.add(10_000, 60)
    assert rate.add(12_000, 60) == 0.0


def test_rate_rounds_to_one_decimal() -> None:
    rate = ClickRate()
    rate.add(0, 0)
    assert rate.add(1_500, 1) == 0.7


@pytest.mark.parametrize(
    ("second", "note"), [((2_000, 50), "the total fell"), ((500, 300), "the clock went back")]
)
def test_rate_starts_over_when_redis_lost_data_or_time_jumped(second, note) -> None:
    rate = ClickRate()
    rate.add(0, 100)
    rate.add(1_000, 200)
    assert rate.add(*second) == 0.0, note
    assert rate.add(second[0] + 1_000, second[1] + 10) == 10.0


def test_rate_of_equal_timestamps_is_zero() -> None:
    rate = ClickRate()
    rate.add(1_000, 0)
    assert rate.add(1_000, 10) == 0.0


# -- Ticker on the real counter ----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, body: dict[str, Any]) -> None:
        self.bodies.append(body)

    @property
    def ticks(self) -> list[int]:
        return [b["tick"] for b in self.bodies]


async def _player(counter: Counter, name: str) -> Player:
    nonce = await counter.join(name, canonical(name), "127.0.0.1", 1000)
    return Player(name, canonical(name), nonce)


async def test_ticker_sends_nothing_when_nothing_changed(counter: Counter) -> None:
    await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    await ticker.step()
    assert len(sent.bodies) == 1
    first = sent.bodies[0]
    assert first["users"] == 1 and first["global"] == 0
    for _ in range(5):
        await ticker.step()
    assert len(sent.bodies) == 1


async def test_ticker_sends_changes_with_increasing_ticks(counter: Counter) -> None:
    ann = await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    await ticker.step()
    for i in range(1, 6):
        await counter.click(ann, 2, 1000)
        await ticker.step()
        assert sent.bodies[-1]["global"] == 2 * i
        assert sent.bodies[-1]["top"] == [{"username": "Ann", "count": 2 * i}]
    assert len(sent.bodies) == 6
    ticks = sent.ticks
    assert ticks == sorted(set(ticks)), "a tick id was sent twice or out of order"
    # Tick ids are Redis's (monotonic) clock divided by the interval: instances agree.
    clock_ms = (await counter.state()).clock_ms
    assert ticker.tick_of(clock_ms) >= ticks[-1]
    assert ticker.tick_of(clock_ms) - ticks[-1] < 1000 / TICK_MS * 5


async def _ticks_keep_coming(counter: Counter, ticker: Ticker, player: Player, sent: Any) -> None:
    """Five more changes are broadcast at once, each with a higher tick id."""
    before = len(sent.bodies)
    for _ in range(5):
        await counter.click(player, 1, 1000)
        await ticker.step()
    assert len(sent.bodies) - before >= 4, "ticks stopped"
    assert sent.ticks == sorted(set(sent.ticks)), "a tick id was sent twice or out of order"


async def test_ticks_go_on_when_redis_clock_steps_back(counter: Counter, redis: Any, keys) -> None:
    ann = await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    await _ticks_keep_coming(counter, ticker, ann, sent)
    # Redis's TIME steps back 30 s (NTP, or a failover to a host behind): the same as
    # its clock offset dropping by 30 s. Ids read from TIME alone would stall for 30 s.
    offset = int(await redis.hget(keys.clock, "offset") or 0)
    await redis.hset(keys.clock, "offset", offset - 30_000)
    await _ticks_keep_coming(counter, ticker, ann, sent)


async def test_ticks_go_on_when_redis_loses_the_clock(counter: Counter, redis: Any, keys) -> None:
    ann = await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    await redis.hset(keys.clock, "offset", 60_000)  # after an earlier step back of a minute
    await _ticks_keep_coming(counter, ticker, ann, sent)
    await redis.delete(keys.clock)  # Redis lost its data: TIME alone is a minute behind
    await _ticks_keep_coming(counter, ticker, ann, sent)
    # The instance's floor put the offset back for everyone, not just for itself.
    assert int(await redis.hget(keys.clock, "offset")) >= 59_000


async def test_ticker_never_resends_a_tick_it_already_sent(counter: Counter) -> None:
    ann = await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    await ticker.step()
    # As if a slow read had spilled over: the tick it reads is not newer than the last one.
    ticker.last_tick = sent.ticks[-1] + 10_000
    await counter.click(ann, 1, 1000)
    await ticker.step()
    assert len(sent.bodies) == 1


async def test_welcome_is_labelled_with_the_last_tick(counter: Counter) -> None:
    ann = await _player(counter, "Ann")
    sent = Recorder()
    ticker = Ticker(counter, TICK_MS, sent)
    early = await ticker.welcome()
    assert early is not None
    assert early["tick"] < ticker.tick_of((await counter.state()).server_ms)
    await ticker.step()
    await counter.click(ann, 3, 1000)
    welcome = await ticker.welcome()
    assert welcome is not None
    assert welcome["global"] == 3
    assert welcome["tick"] == sent.ticks[-1], "a new client gets a tick it never saw"
    await ticker.step()
    assert sent.ticks[-1] > welcome["tick"]


async def test_state_body_matches_the_contract(counter: Counter) -> None:
    await _player(counter, "Ann")
    body = state_body(await counter.state(), 1.5, 42)
    expected = {
        "global": 0,
        "online": 0,
        "cps": 1.5,
        "users": 1,
        "top": [{"username": "Ann", "count": 0}],
        "tick": 42,
    }
    # The contract is a minimum: more fields may come, these must be there as they are.
    assert {key: body.get(key) for key in expected} == expected


async def test_clients_joining_mid_broadcast_never_get_a_tick_twice(serve, counter) -> None:
    """The welcome state and the broadcasts race; a client must still see each tick id once."""
    server = await serve(broadcast_interval_ms=20, rate_limit_cps=1000)
    async with server.client() as client:
        token = await join(client, "Ann")
    clicker = await Client(server.url, token).connect()
    watchers: list[Client] = []
    stop = asyncio.Event()

    async def keep_changing() -> None:
        while not stop.is_set():
            await clicker.click(1)
            await asyncio.sleep(0.005)

    changing = asyncio.create_task(keep_changing())
    try:
        for _ in range(3):  # waves of clients connecting at once, while every tick changes
            watchers += await asyncio.gather(*(Client(server.url).connect() for _ in range(30)))
        for watcher in watchers:
            await eventually(lambda w=watcher: len(w.states) >= 3, timeout=5)
    finally:
        stop.set()
        await changing
        for player in (clicker, *watchers):
            await player.close()
    repeated = [
        ticks
        for ticks in ([s["tick"] for s in w.states] for w in watchers)
        if any(b <= a for a, b in itertools.pairwise(ticks))
    ]
    assert repeated == [], f"{len(repeated)} of {len(watchers)} clients saw a tick twice"
