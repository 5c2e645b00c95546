"""A circuit breaker per upstream: stop calling an upstream that keeps failing.

    closed ──(failures in a row)──> open ──(reset seconds)──> half-open
       ^                              ^                           │
       └────────(trial succeeds)──────┼───────────────────────────┤
                                      └──────(trial fails)────────┘

Closed: calls pass; `failures` consecutive failed calls open it. Open: calls fail at once
with `CircuitOpen` (503 + Retry-After for a required call, the default for an optional
one) and the upstream is not touched. After `reset` seconds it is half-open: exactly one
trial call passes, the others still fail fast; the trial's success closes it, its failure
opens it again for another `reset`. A trial that is canceled gives no verdict and frees
the slot. Pure: time comes from `clock`, so tests need not sleep.

The breaker belongs to the upstream, not to a call: every call to the upstream counts,
optional ones included. So that a 503 is never a riddle, it remembers which calls' failures
opened it (`opened_by`, at most `MAX_CULPRITS` names) and says so in `CircuitOpen`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .config import Breaker as BreakerConfig
from .errors import CallError, CallInputError, CircuitOpen, UpstreamStatus

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
log = logging.getLogger("gateway.breaker")
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the gauge's numbers

# While a trial is in flight, callers are told to come back soon (Retry-After: 1).
_TRIAL_RETRY_AFTER = 0.5
MAX_CULPRITS = 3  # distinct callers named in the open breaker's message


def counts_as_failure(error: CallError) -> bool:
    """An upstream 4xx is a verdict on the request, not a sign the upstream is unwell."""
    if isinstance(error, UpstreamStatus):
        return not (error.status is not None and 400 <= error.status < 500)
    # Nor is a call that could not even be built (CallInputError): it never left the gateway.
    return not isinstance(error, CircuitOpen | CallInputError)


class CircuitBreaker:
    """The breaker of one upstream; `on_change(state)` hears every transition."""

    def __init__(self, upstream: str, config: BreakerConfig,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.upstream = upstream
        self.threshold = config.failures
        self.reset = config.reset
        self._clock = clock
        self._on_change = on_change
        self._state = CLOSED
        self.failures = 0  # consecutive failed calls while closed
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self._culprits: dict[str, None] = {}  # callers of the current run of failures
        self.opened_by: tuple[str, ...] = ()  # ... and of the run that opened it last

    @property
    def state(self) -> str:
        """closed, open or half_open, as of now (an open breaker past `reset` is half-open)."""
        if self._state == OPEN and self._clock() - self._opened_at >= self.reset:
            return HALF_OPEN
        return self._state

    def retry_after(self) -> float:
        """Seconds until a call may be tried again; 0 when it may be now."""
        state = self.state
        if state == OPEN:
            return max(0.0, self._opened_at + self.reset - self._clock())
        if state == HALF_OPEN and self._trial:
            return _TRIAL_RETRY_AFTER
        return 0.0

    def admit(self) -> bool:
        """Let one call through or raise `CircuitOpen`; True if the call is the trial."""
        if self._state == CLOSED:
            return False
        if self.state == HALF_OPEN and not self._trial:
            self._set(HALF_OPEN)
            self._trial = True
            return True
        raise CircuitOpen(self.open_message(), self.retry_after())

    def open_message(self) -> str:
        """The one line a call refused by the open breaker reports."""
        message = f"circuit breaker of upstream '{self.upstream}' is open"
        if self.opened_by:
            message += f" (opened by failures of {', '.join(self.opened_by)})"
        return message

    def success(self, trial: bool) -> None:
        if trial:
            self._trial = False
            self._set(CLOSED)
        self.failures = 0
        self._culprits.clear()

    def failure(self, trial: bool, by: str | None = None) -> None:
        """A call failed; `by` names who made it (e.g. "optional call 'recs' of GET /x")."""
        if trial:
            self._trial = False
            self._culprits = {by: None} if by else {}
            self._open()
            return
        if self._state != CLOSED:
            return  # a call admitted before the breaker opened: nothing more to learn
        self.failures += 1
        if by and by not in self._culprits:
            if len(self._culprits) < MAX_CULPRITS:
                self._culprits[by] = None
            else:
                self._culprits["other calls"] = None
        if self.failures >= self.threshold:
            self._open()

    def cancel(self, trial: bool) -> None:
        """The call was canceled before its outcome was known: no verdict."""
        if trial:
            self._trial = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self.failures = 0
        self.opened_by = tuple(self._culprits)
        self._culprits = {}
        self._set(OPEN)

    def _set(self, state: str) -> None:
        if state != self._state:
            if state == OPEN:
                why = ("its trial call failed" if self._state == HALF_OPEN
                       else f"{self.threshold} failures in a row")
                if self.opened_by:
                    why += f": {', '.join(self.opened_by)}"
                log.warning("circuit breaker of upstream %r opened (%s); calls fail fast for "
                            "%.1f s", self.upstream, why, self.reset)
            else:
                log.info("circuit breaker of upstream %r is %s", self.upstream,
                         state.replace("_", "-"))
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
