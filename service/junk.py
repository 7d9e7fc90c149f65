"""Data read back from Redis that is not what we wrote: counted, logged sparingly, dropped.

Redis is shared with operators and other programs (and anyone who can PUBLISH on our
channel), so every message or field we parse may be junk. A reader that meets junk
drops it and goes on; `clickky_redis_junk_total{where,reason}` counts each one, and
the log gets at most one line per `where` every `LOG_EVERY_S` seconds, with the
number dropped since the last line, so a junk flood cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from service import metrics

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
_SAMPLE_CHARS = 80

T = TypeVar("T", int, float)


class Junk(ValueError):
    """Raised by a parser when what it read is not what it expects; `reason` is a label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JunkLog:
    """Counts dropped junk by where and why; logs at most one line per where per period."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def drop(self, where: str, reason: str, sample: object) -> None:
        """Count one dropped item; log it unless this place logged within the period."""
        metrics.REDIS_JUNK.labels(where, reason).inc()
        now = time.monotonic()
        if now - self._last.get(where, -self.every_s) < self.every_s:
            self._quiet[where] = self._quiet.get(where, 0) + 1
            return
        self._last[where] = now
        also = self._quiet.pop(where, 0)
        text = repr(sample)
        if len(text) > _SAMPLE_CHARS:
            text = text[:_SAMPLE_CHARS] + "…"
        log.warning(
            "dropped junk read from Redis (%s: %s): %s; %d more dropped since the last line",
            where,
            reason,
            text,
            also,
        )


JUNK = JunkLog()


def number(raw: str | None, cast: Callable[[str], T], where: str) -> T | None:
    """A number stored as text in Redis, or None (counted as junk) when it is not one."""
    if raw is None or raw == "":
        return None
    try:
        value = cast(raw)
    except (ValueError, OverflowError):
        JUNK.drop(where, "not_a_number", raw)
        return None
    if value != value or value in (float("inf"), float("-inf")):  # NaN or infinite
        JUNK.drop(where, "not_a_number", raw)
        return None
    return value
