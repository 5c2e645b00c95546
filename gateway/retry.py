"""When a failed attempt is tried again, how long to wait first, and how many retries to allow.

Pure policy, no I/O: `Upstream.call` runs the loop. A retry is allowed only for an
idempotent method, only after an error that says nothing was done (connection error,
timeout, 502/503/504), only while time is left before both the call's timeout and the
request's deadline, and only while the upstream's retry budget has room: retries may add
at most `RetryBudget.ratio` of the upstream's recent calls plus a small floor, so a
failing upstream is never sent `retries + 1` times its traffic.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .errors import CallError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from .metrics import UpstreamMetrics

T = TypeVar("T")
SECONDS = 1.0
# A retry is sent only if, after its backoff, at least this much time is left before the
# timeout or deadline, and (unless the attempt was cut short by its time share) at least
# as much as the failed attempt took.
MIN_ATTEMPT = 0.01 * SECONDS
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})

# The request's deadline as an event-loop time; set once per request by whoever runs it
# (engine, code views), read by the retry loop. Tasks copy it from the request's task.
_deadline: ContextVar[float | None] = ContextVar("gateway_deadline", default=None)


def start_deadline(seconds: float) -> None:
    """Mark the current request's deadline as `seconds` from now."""
    _deadline.set(asyncio.get_running_loop().time() + seconds)


def deadline() -> float | None:
    """The current request's deadline (loop time), or None outside a request."""
    return _deadline.get()


@dataclass(slots=True)
class Tally:
    """The call this task is making: who makes it (for the breaker's messages) and the
    attempts started so far, readable when the call is cut off before it can report them."""

    label: str
    attempts: int = 0


_tally: ContextVar[Tally | None] = ContextVar("gateway_call_tally", default=None)


@contextmanager
def counting(label: str) -> Iterator[Tally]:
    """Count the attempts of the call made inside this block (one call per block)."""
    tally = Tally(label)
    token = _tally.set(tally)
    try:
        yield tally
    finally:
        _tally.reset(token)


def current_call() -> Tally | None:
    """The `Tally` of the call being made in this task, if its maker keeps one."""
    return _tally.get()


def retryable(error: CallError) -> bool:
    """True for failures where the upstream did nothing we could see: safe to try again."""
    if isinstance(error, UpstreamStatus):
        return error.status in RETRY_STATUSES
    return isinstance(error, UpstreamUnavailable | UpstreamTimeout)


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    base = 0.05 * SECONDS
    cap = 2.0 * SECONDS

    def __init__(self, base: float | None = None, cap: float | None = None) -> None:
        if base is not None:
            self.base = base
        if cap is not None:
            self.cap = cap

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        return random.uniform(0.0, min(self.cap, self.base * (2 ** (retry - 1))))


class RetryBudget:
    """Retries allowed per upstream over a sliding window, counted in one-second buckets.

    Within the last `window` seconds, retries may number at most
    `minimum + ratio * calls`: 20% extra load at most, and a floor so that an upstream
    with little traffic can still retry now and then.
    """

    ratio = 0.2
    window = 10  # seconds
    minimum = 10  # retries per window always allowed (one a second)

    def __init__(self, ratio: float | None = None, window: int | None = None,
                 minimum: int | None = None) -> None:
        if ratio is not None:
            self.ratio = ratio
        if window is not None:
            self.window = window
        if minimum is not None:
            self.minimum = minimum
        n = self.window
        self._second = [-1] * n
        self._calls = [0] * n
        self._retries = [0] * n

    def _slot(self, now: float) -> int:
        second = int(now)
        i = second % self.window
        if self._second[i] != second:
            self._second[i] = second
            self._calls[i] = 0
            self._retries[i] = 0
        return i

    def record_call(self, now: float) -> None:
        """Count a first attempt (called once per call, so it must stay cheap)."""
        self._calls[self._slot(now)] += 1

    def has_room(self, now: float) -> bool:
        calls, retries = self._totals(now)
        return retries < self.minimum + self.ratio * calls

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        if not self.has_room(now):
            return False
        self._retries[self._slot(now)] += 1
        return True

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self.window + 1
        calls = retries = 0
        for i, second in enumerate(self._second):
            if second >= oldest:
                calls += self._calls[i]
                retries += self._retries[i]
        return calls, retries


class Retrier:
    """The attempt loop of one upstream's calls, all within the call's `timeout`.

    While a retry is still possible, an attempt may use half of the time left (the last
    one all of it), so one hung attempt still leaves time to try again; without retries
    the one attempt has the whole timeout.
    """

    def __init__(self, upstream: str, timeout: float, retries: int,
                 metrics: UpstreamMetrics | None = None) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self.retries = retries
        self.budget = RetryBudget() if retries else None
        self.backoff = Backoff()
        self._metrics = metrics

    async def run(self, method: str, attempt: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """`attempt()`'s result and the number of attempts; raises the last `CallError`."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        end = now + self.timeout
        budget = self.budget
        retries = self.retries if budget is not None and method in IDEMPOTENT else 0
        if retries:
            assert budget is not None
            budget.record_call(now)
            request_end = _deadline.get()
            if request_end is not None:
                end = min(end, request_end)
        tally = _tally.get()
        n = 0
        while True:
            n += 1
            if tally is not None:
                tally.attempts = n  # counted as it starts: a cut-off attempt was still made
            left = retries - n + 1  # retries still possible after this attempt
            limit = end
            if left > 0 and budget is not None and budget.has_room(loop.time()):
                now = loop.time()
                limit = now + (end - now) / 2
            error: CallError
            began = loop.time()
            try:
                async with asyncio.timeout_at(limit):
                    return await attempt(), n
            except TimeoutError:
                error = UpstreamTimeout(self._timeout_message(limit, end))
            except CallError as exc:
                error = exc
            error.attempts = n
            if left <= 0 or not retryable(error):
                raise error
            delay = self.backoff.delay(n)
            now = loop.time()
            needed = MIN_ATTEMPT if isinstance(error, UpstreamTimeout) else now - began
            if now + delay + max(MIN_ATTEMPT, needed) >= end:
                raise error  # it could not finish in time: the real failure beats a 504
            assert budget is not None
            if not budget.try_spend(loop.time()):
                if self._metrics is not None:
                    self._metrics.retry_refused()
                raise error
            if self._metrics is not None:
                self._metrics.retry()
            await asyncio.sleep(delay)

    def _timeout_message(self, limit: float, end: float) -> str:
        if math.isclose(limit, end):
            return f"upstream '{self.upstream}' timed out after {self.timeout:g}s"
        return f"upstream '{self.upstream}' attempt timed out (timeout {self.timeout:g}s)"
