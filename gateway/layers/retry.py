"""The attempts of one call within its timeout: retried (`retries`) or once.

retry.py decides (which failures, how long to wait, the budget); this layer
runs the loop: the attempt's timeout, the count in the caller's `Tally`, the
backoff's sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..context import current_call
from ..errors import CallError, UpstreamTimeout
from ..metrics import UpstreamMetrics
from ..pipeline import Call, Next, Reply
from ..retry import RetryPolicy

T = TypeVar("T")


class RetryLayer(RetryPolicy):
    """Attempts until one succeeds or the policy says stop; the reply says how many."""

    def __init__(self, upstream: str, timeout: float, retries: int,
                 metrics: UpstreamMetrics | None = None) -> None:
        super().__init__(upstream, timeout, retries)
        self._metrics = metrics

    async def __call__(self, call: Call, next: Next) -> Reply:
        loop = asyncio.get_running_loop()
        now = loop.time()
        end = now + self.timeout
        retries = self.retries_for(call.method, now)
        if retries and call.deadline is not None:
            end = min(end, call.deadline)  # a retry never starts what the deadline cuts short
        tally = current_call()
        n = 0
        while True:
            n += 1
            if tally is not None:
                tally.attempts = n  # counted as it starts: a cut-off attempt was still made
            left = retries - n + 1  # retries still possible after this attempt
            limit = self.attempt_end(left, loop.time(), end)
            error: CallError
            began = loop.time()
            try:
                async with asyncio.timeout_at(limit):
                    reply = await next(call)
                reply.attempts = n
                return reply
            except TimeoutError:
                error = UpstreamTimeout(self.timeout_message(limit, end))
            except CallError as exc:
                error = exc
            error.attempts = n
            delay = self.delay(error, n, left, began, loop.time(), end)
            if delay is None:
                raise error
            if not self.spend(loop.time()):
                if self._metrics is not None:
                    self._metrics.retry_refused()
                raise error
            if self._metrics is not None:
                self._metrics.retry()
            await asyncio.sleep(delay)

    async def run(self, method: str, attempt: Callable[[], Awaitable[T]],
                  deadline: float | None = None) -> tuple[T, int]:
        """The same loop around any `attempt()`: its result and the number of attempts."""
        results: list[T] = []

        async def once(call: Call) -> Reply:
            results.append(await attempt())
            return Reply(0, None)

        reply = await self(Call(method, "", [], deadline=deadline), once)
        return results[-1], reply.attempts


class TimeoutLayer:
    """One attempt within the call's timeout (an upstream without `retries`)."""

    __slots__ = ("message", "timeout")

    def __init__(self, upstream: str, timeout: float) -> None:
        self.timeout = timeout
        self.message = f"upstream '{upstream}' timed out after {timeout:g}s"

    async def __call__(self, call: Call, next: Next) -> Reply:
        tally = current_call()
        if tally is not None:
            tally.attempts = 1
        try:
            async with asyncio.timeout(self.timeout):
                return await next(call)
        except TimeoutError:
            error = UpstreamTimeout(self.message)
        raise error
