"""Supervised background loops: held tasks that log, back off, and report their health."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from service import metrics
from service.connection import REDIS_ERRORS

log = logging.getLogger(__name__)


class Loop:
    """Runs `step` over and over; an error is logged once, then retried with capped backoff.

    `step` does its own waiting (a tick boundary, an event, a blocking read);
    this class only owns the task, the error handling and the health flag.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[None]],
        *,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.name = name
        self.step = step
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.failures = 0  # in the current streak; 0 while healthy
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel the task and wait for it, but not forever: shutdown must always finish."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            log.error("%s did not stop within %.0fs; abandoning it", self.name, timeout_s)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("%s had failed: %s", self.name, task.exception())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def mark_ok(self) -> None:
        if self.failures:
            log.info("%s recovered after %d failures", self.name, self.failures)
        self.failures = 0
        metrics.LOOP_UP.labels(self.name).set(1)

    async def _run(self) -> None:
        backoff = self.first_backoff_s
        while True:
            try:
                await self.step()
                self.mark_ok()
                backoff = self.first_backoff_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                metrics.LOOP_UP.labels(self.name).set(0)
                metrics.LOOP_ERRORS.labels(self.name).inc()
                # One line per failure; a traceback only for the first of a streak of
                # errors we did not expect (a bug), not for an unreachable Redis.
                expected = isinstance(exc, (*REDIS_ERRORS, OSError))
                log.warning(
                    "%s failed (%s: %s); retrying in %.1fs",
                    self.name,
                    type(exc).__name__,
                    exc,
                    backoff,
                    exc_info=not expected and self.failures == 1,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
