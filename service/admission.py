"""Admission control: how long a click may wait, and refusing at once the ones that cannot.

The algorithm is controlled delay with adaptive LIFO, as Facebook's "Fail at Scale"
(ACM Queue, 2015) describes it for its RPC queues. Normally a click may wait up to
MAX_WAIT_MS. When the queue has not been empty (no clicks waiting, and the event
loop on time: lag under `target`, a quarter of MAX_WAIT_MS) for a whole `interval`, or
a click had to be refused within the last interval (frames stand in socket buffers the
counter's queue never sees), the queue is standing, not absorbing a burst: the wait
allowed at the door drops to `door` (a fortieth of MAX_WAIT_MS) until an interval
passes without either, and the queue is served newest first (older clicks are the
likeliest to miss their deadline anyway, and their senders the likeliest to have given
up). As in Netflix's concurrency-limits, the algorithm (`ControlledDelay`)
is apart from the limiter that applies it (`Admission`), so either can be swapped or
tested alone.

A click's wait starts when its frame most likely arrived: the shedder judges a raw
frame as it is read (arrived now, less the loop's lag), `ClickGate` stamps each
websocket message as it is received (frames found already queued inherit the stamp of
the one before), and `LagProbe`, a timer that notes how late it wakes, measures the
event loop's lag (used for HTTP clicks and to date a frame the loop was late to see).
The wait ends with the click's Redis call. A click that has waited longer than
allowed is refused where it is found (at the door: the shedder, the gate or an HTTP
click's handler; past it, only beyond MAX_WAIT_MS: in the socket handler or the
counter's queue), from these numbers alone: a refusal never touches Redis.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import ApiError

# The probe wakes this often; a smaller period finds lag sooner and costs more wake-ups.
PROBE_PERIOD_S = 0.02
# The allowed wait under a standing queue is MAX_WAIT_MS divided by this.
TARGET_DIVISOR = 4
# ...and, at the door, where refusing is cheap, MAX_WAIT_MS divided by this: 12.5 ms by
# default, an eighth of the default 100 ms tick. A tick's Redis read waits behind one turn
# of the loop (about the loop's lag), and a read half a tick late takes the next tick's id.
DOOR_DIVISOR = 40
# A standing queue must last this long before the allowed wait drops (CoDel's interval).
INTERVAL_S = 0.1
# Clients are told to come back after this many times the current wait, within bounds.
RETRY_FACTOR = 4
MIN_RETRY_S = 0.5
MAX_RETRY_S = 5.0


class ControlledDelay:
    """The limit algorithm: how long a click may wait now, from when the queue was empty.

    `empty(now)` whenever nothing is waiting; `allowed_s(now)` before admitting.
    Times are seconds on one monotonic clock.
    """

    def __init__(
        self, max_wait_s: float, *, interval_s: float = INTERVAL_S, now: float | None = None
    ) -> None:
        self.max_wait_s = max_wait_s
        # The loop is on time (a queue may count as empty) while it lags less than this.
        # Facebook uses 5 ms of 100 for RPC queues; a quarter here, because a process on a
        # CPU quota is held back for tens of ms per period however little it queues.
        self.target_s = max_wait_s / TARGET_DIVISOR
        # The wait allowed at the door under a standing queue (see Admission). When every
        # refusal went through Socket.IO (a third of a served click) and the short limit
        # applied everywhere, a tenth of MAX_WAIT_MS refused nearly all (goodput 1 %); a
        # refusal at the door now costs about an eighth of one (README, Benchmarks), and
        # past the door only MAX_WAIT_MS applies, so the door can be strict and keep the
        # loop's turns short.
        self.door_s = max_wait_s / DOOR_DIVISOR
        self.interval_s = interval_s
        # When the queue was last seen empty, and when a click last had to be refused.
        self.last_empty_s = time.monotonic() if now is None else now
        self.last_refusal_s = -interval_s

    def congested(self, now: float) -> bool:
        """True while the queue has not been empty for a whole interval, or a click had to
        be refused within the last interval (so the door's short limit holds while it
        drains)."""
        return (
            now - self.last_empty_s > self.interval_s or now - self.last_refusal_s < self.interval_s
        )

    def refused(self, now: float) -> None:
        """A click waited longer than allowed: a queue stands somewhere."""
        self.last_refusal_s = now

    def allowed_s(self, now: float) -> float:
        """How long a click may have waited when it reaches the door."""
        return self.door_s if self.congested(now) else self.max_wait_s

    def empty(self, now: float) -> None:
        """Nothing is waiting (the click queue is empty and the loop is on time)."""
        self.last_empty_s = now


class LagProbe:
    """Measures the event loop's lag: how late a timer that should fire every period fires.

    `step` is one iteration of a supervised loop (service.loops.Loop).
    """

    def __init__(
        self, period_s: float = PROBE_PERIOD_S, clock: Callable[[], float] = time.monotonic
    ):
        self.period_s = period_s
        self.clock = clock
        self.last_lag_s = 0.0
        self.previous_lag_s = 0.0
        self._due_s: float | None = None  # when the sleeping probe should wake

    async def step(self) -> None:
        due = self.clock() + self.period_s
        self._due_s = due
        await asyncio.sleep(self.period_s)
        self.previous_lag_s = self.last_lag_s
        self.last_lag_s = max(0.0, self.clock() - due)
        self._due_s = None
        metrics.LOOP_LAG.set(self.last_lag_s)

    def lag_s(self) -> float:
        """The standing lag: the smaller of the last two measures, or how overdue the probe
        is right now if that is more. One stall that is over (a pause of the whole process,
        a long collection) is not a standing queue and should not turn clicks away."""
        overdue = self.clock() - self._due_s if self._due_s is not None else 0.0
        return max(overdue, min(self.previous_lag_s, self.last_lag_s))


# What a refused click is told (service/shedder.py sends it pre-formatted).
CLICK_DETAIL = "This instance is too busy to count your click in time; it was not counted."
_DETAILS = {
    "join": "This instance is too busy to take a join now; try again shortly.",
    "connect": "This instance is too busy to take a connection now; try again shortly.",
}


def retry_after_s(wait_s: float) -> float:
    """The retry hint of a refusal after this wait: it grows with the wait, within bounds."""
    return min(MAX_RETRY_S, max(MIN_RETRY_S, RETRY_FACTOR * wait_s))


def overloaded(reason: str, wait_s: float) -> ApiError:
    """The refusal: 503 `overloaded`, with a retry hint that grows with the wait."""
    retry = retry_after_s(wait_s)
    detail = _DETAILS.get(reason, CLICK_DETAIL)
    return ApiError(503, "overloaded", detail, retry_after_s=retry)


class Admission:
    """The limiter: decides, from the loop's lag and the algorithm, whether work may wait.

    The algorithm's limit applies at the door, where a refusal costs little: a websocket
    click's raw frame (`shed`, service/shedder.py), or its message at the ClickGate
    (`late`), or an HTTP click (`arrive()`). Past the door a click has cost most of what
    serving it costs, so it is refused only beyond MAX_WAIT_MS: when its handler starts
    (`arrive(stamp)`, its estimated arrival time, or an `overloaded` ApiError) and when
    its Redis call is about to be made (`expired`); `served(arrived)` records its wait.
    Joins and connections call `check()`.

    Ticks first: while a queue stands, the door's limit (12.5 ms by default, an eighth of
    the default tick) keeps the loop's turns short, so that the ticker, which waits
    behind one of them before it reads Redis, reads within its tick.
    """

    def __init__(
        self,
        max_wait_s: float,
        *,
        probe: LagProbe | None = None,
        limit: ControlledDelay | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.probe = probe or LagProbe(clock=clock)
        self.limit = limit or ControlledDelay(max_wait_s, now=clock())
        self._refusals: dict[str, Any] = {}
        # A refusal below Socket.IO counts as one at the gate ("backlog").
        self._shed_refused = metrics.OVERLOAD_REFUSED.labels("backlog")
        self._shed_overloaded = metrics.REFUSED.labels("overloaded")

    @property
    def max_wait_s(self) -> float:
        return self.limit.max_wait_s

    def arrive(self, stamp: Arrival | None = None) -> float:
        """The click's estimated arrival time (its connection's stamp, else now less the
        loop's lag); refuses it if its wait is already too long: beyond MAX_WAIT_MS for
        a websocket click (it passed the door already), beyond the door's limit else."""
        now = self.clock()
        if stamp is not None:
            arrived, allowed = stamp.at, self.max_wait_s
        else:
            arrived, allowed = now - self.probe.lag_s(), self.limit.allowed_s(now)
        if now - arrived > allowed:
            raise self.refuse("lag", now - arrived)
        return arrived

    def late(self, arrived: float) -> ApiError | None:
        """The refusal for a click frame that arrived then, if it waited too long already."""
        now = self.clock()
        if now - arrived > self.limit.allowed_s(now):
            return self.refuse("backlog", now - arrived)
        return None

    def shed(self, arrived: float) -> int:
        """For a click frame that arrived then, read below Socket.IO (service/shedder.py):
        0 if it may wait, else its refusal's retry_after_ms (the refusal is counted)."""
        now = self.clock()
        wait = now - arrived
        if wait <= self.limit.allowed_s(now):
            return 0
        self.limit.refused(now)
        self._shed_refused.inc()
        self._shed_overloaded.inc()
        return math.ceil(retry_after_s(wait) * 1000)

    def check(self, what: str) -> None:
        """Refuse a join or connection while the loop lags more than MAX_WAIT_MS."""
        lag = self.probe.lag_s()
        if lag > self.max_wait_s:
            raise self.refuse(what, lag)

    def expired(self, arrived: float) -> bool:
        """True when a queued click has waited longer than MAX_WAIT_MS."""
        return self.clock() - arrived > self.max_wait_s

    def congested(self) -> bool:
        return self.limit.congested(self.clock())

    def served(self, arrived: float) -> None:
        """A click's Redis call is being made: record its wait."""
        metrics.CLICK_WAIT.observe(max(0.0, self.clock() - arrived))

    def drained(self) -> None:
        """The click queue ran empty: if the loop is on time too, nothing is standing."""
        if self.probe.lag_s() < self.limit.target_s:
            self.limit.empty(self.clock())

    def refuse(self, reason: str, wait_s: float) -> ApiError:
        if reason in ("lag", "backlog", "queue"):
            self.limit.refused(self.clock())
        counter = self._refusals.get(reason)
        if counter is None:  # labels() costs a lock and a lookup: keep each child
            counter = self._refusals[reason] = metrics.OVERLOAD_REFUSED.labels(reason)
        counter.inc()
        return overloaded(reason, wait_s)

    def refusal_for(self, arrived: float) -> ApiError:
        """The refusal of a queued click that waited too long."""
        return self.refuse("queue", self.clock() - arrived)

    def overloaded(self) -> bool:
        """For /readyz: the loop lags more than MAX_WAIT_MS, so send new work elsewhere."""
        return self.probe.lag_s() > self.max_wait_s


# The Engine.IO text frame of a Socket.IO `click` event with an ack id, default namespace.
_CLICK_FRAME = re.compile(r'42(\d{1,12})\["click"')
# Where a websocket's Arrival travels: python-engineio hands the scope to the handlers
# as environ["asgi.scope"].
ARRIVAL_KEY = "clickky.arrival"


class Arrival:
    """When the message a connection's handlers see now most likely arrived (monotonic s)."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class ClickGate:
    """ASGI wrapper of the Socket.IO app: stamps each websocket message's arrival, and
    answers a click that waited too long with `overloaded` at once, before Engine.IO and
    Socket.IO decode it or Redis sees it.

    Under overload most of the waiting happens before the event loop can see it: frames
    queue in the server's and the kernel's buffers. A receive that had to wait means the
    connection's queue was empty, so that message arrived about then; a receive that
    found its message already queued means it arrived after the one before it, so it
    keeps that stamp. The gap to now is an upper bound on the wait, as in CoDel's "the
    queue has not been empty for this long". Refusing here costs a regex and a send, plus
    everything uvicorn did to get the message here: a click the shedder could judge
    (service/shedder.py) was refused before that already; this is the door for the rest
    (permessage-deflate, wsproto) and stamps the messages the handlers will see.
    """

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        admission = self.admission
        refused = metrics.REFUSED.labels("overloaded")
        arrival = Arrival(admission.clock())
        scope[ARRIVAL_KEY] = arrival
        loop = asyncio.get_running_loop()

        async def gated() -> Message:
            while True:
                turned = [False]  # set by the loop's next turn: the receive had to wait
                marker = loop.call_soon(turned.__setitem__, 0, True)
                message = await receive()
                marker.cancel()
                if turned[0]:
                    arrival.at = admission.clock() - admission.probe.lag_s()
                text = message.get("text")
                if text is None or not text.startswith("42"):
                    return message
                frame = _CLICK_FRAME.match(text)
                if frame is None:
                    return message
                refusal = admission.late(arrival.at)
                if refusal is None:
                    return message
                refused.inc()
                body = json.dumps([refusal.body()], separators=(",", ":"))
                await send({"type": "websocket.send", "text": f"43{frame.group(1)}{body}"})

        await self.app(scope, gated, send)
