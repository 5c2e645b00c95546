"""The process-wide budget for upstream body bytes in flight (pure, no I/O).

`max_upstream_bytes` bounds one call; this bounds all of them together, so
many concurrent big or hostile replies cannot add up to exhaust memory. Each
call takes a `Lease` and grows it chunk by chunk as its body is decoded; the
chunk that would take the process past `limit` is refused at once (the call
fails with 503) and the call's whole lease goes back when its body has been
parsed or the call failed.

What is counted is the decoded body while it is read and parsed. The parsed
object lives on in the response being built and is not counted here (it is
bounded per call by `max_upstream_bytes`); nor is the transient copy made
when a body's chunks are joined, which happens without an await in between,
so at most one such copy exists in the process at any instant.
"""

from __future__ import annotations

from collections.abc import Callable


class _BudgetExhausted(Exception):
    """Taking these bytes would put the process over its memory budget."""


class MemoryBudget:
    """Bytes held by every call in flight; `on_exhausted` hears each refusal.

    `on_drained` hears the budget drop back to nothing after it held `drained_after`
    bytes or more at once: a burst is over, and its freed memory may go back to the OS
    (runtime.py). `takes` counts takes, so a caller can tell whether any body was read
    since it last looked.
    """

    __slots__ = ("_high", "drained_after", "held", "limit", "on_drained", "on_exhausted",
                 "takes")

    def __init__(self, limit: int, on_exhausted: Callable[[], None] | None = None,
                 on_drained: Callable[[], object] | None = None,
                 drained_after: int = 16 * 1024 * 1024) -> None:
        self.limit = limit  # a reload may change it; leases already taken stay valid
        self.held = 0
        self.on_exhausted = on_exhausted
        self.on_drained = on_drained
        self.drained_after = drained_after
        self.takes = 0
        self._high = 0  # the most held since the budget was last empty

    def lease(self) -> Lease:
        return Lease(self)

    def _take(self, size: int) -> None:
        if self.held + size > self.limit:
            if self.on_exhausted is not None:
                self.on_exhausted()
            raise _BudgetExhausted
        self.held += size
        self.takes += 1
        self._high = max(self._high, self.held)

    def _give_back(self, size: int) -> None:
        self.held -= size
        if not self.held:
            high, self._high = self._high, 0
            if high >= self.drained_after and self.on_drained is not None:
                self.on_drained()


class Lease:
    """One call's share of the budget; `release` returns all of it (idempotent)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        """Grow the lease by `size` bytes, or raise `_BudgetExhausted` (the lease is unchanged)."""
        self._budget._take(size)
        self.size += size

    def hand_over(self) -> Lease:
        """A lease holding all of this one's bytes; this one is empty afterwards.

        For a body a worker thread still reads after its call was cancelled: the
        bytes stay on the budget until the thread lets go of them.
        """
        other = Lease(self._budget)
        other.size, self.size = self.size, 0
        return other

    def release(self) -> None:
        if self.size:
            self._budget._give_back(self.size)
            self.size = 0
