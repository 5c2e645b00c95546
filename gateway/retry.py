"""When a failed attempt is tried again, how long to wait first, and how many retries to allow.

Pure policy, no I/O: the retry layer (`layers/retry.py`) runs the loop, its timeouts
and its sleeps. A retry is allowed only for an
idempotent method, only after an error that says nothing was done (connection error,
timeout, 502/503/504), only while time is left before both the call's timeout and the
request's deadline, and only while the upstream's retry budget has room: retries may add
at most `RetryBudget.ratio` of the upstream's recent calls plus a small floor, so a
failing upstream is never sent `retries + 1` times its traffic.
"""

from __future__ import annotations

import math
import random

from .errors import CallError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable

SECONDS = 1.0
# A retry is sent only if, after its backoff, at least this much time is left before the
# timeout or deadline, and (unless the attempt was cut short by its time share) at least
# as much as the failed attempt took.
MIN_ATTEMPT = 0.01 * SECONDS
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})


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


class RetryPolicy:
    """When one upstream's calls are tried again, all within the call's `timeout`.

    While a retry is still possible, an attempt may use half of the time left (the last
    one all of it), so one hung attempt still leaves time to try again; without retries
    the one attempt has the whole timeout.
    """

    def __init__(self, upstream: str, timeout: float, retries: int) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self.retries = retries
        self.budget = RetryBudget() if retries else None
        self.backoff = Backoff()

    def retries_for(self, method: str, now: float) -> int:
        """Retries this call may make; a call that may retry is counted in the budget."""
        budget = self.budget
        if budget is None or method not in IDEMPOTENT:
            return 0
        budget.record_call(now)
        return self.retries

    def attempt_end(self, left: int, now: float, end: float) -> float:
        """When the attempt starting `now` is cut off, `left` retries still possible after it."""
        if left > 0 and self.budget is not None and self.budget.has_room(now):
            return now + (end - now) / 2
        return end

    def delay(self, error: CallError, attempt: int, left: int, began: float, now: float,
              end: float) -> float | None:
        """Seconds to wait before retrying after `error`, or None: it is not tried again.

        Not when no retry is left, the error is not retryable, or the retry could not
        finish before `end`: then the real failure beats a 504.
        """
        if left <= 0 or not retryable(error):
            return None
        delay = self.backoff.delay(attempt)
        needed = MIN_ATTEMPT if isinstance(error, UpstreamTimeout) else now - began
        if now + delay + max(MIN_ATTEMPT, needed) >= end:
            return None
        return delay

    def spend(self, now: float) -> bool:
        """Take one retry from the budget; False when it is spent (nothing is sent)."""
        return self.budget is not None and self.budget.try_spend(now)

    def timeout_message(self, limit: float, end: float) -> str:
        if math.isclose(limit, end):
            return f"upstream '{self.upstream}' timed out after {self.timeout:g}s"
        return f"upstream '{self.upstream}' attempt timed out (timeout {self.timeout:g}s)"
