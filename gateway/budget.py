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


class BudgetExhausted(Exception):
    """Taking these bytes would put the process over its memory budget."""


class MemoryBudget:
    """Bytes held by every call in flight; `on_exhausted` hears each refusal."""

    __slots__ = ("held", "limit", "on_exhausted")

    def __init__(self, limit: int, on_exhausted: Callable[[], None] | None = None) -> None:
        self.limit = limit  # a reload may change it; leases already taken stay valid
        self.held = 0
        self.on_exhausted = on_exhausted

    def lease(self) -> Lease:
        return Lease(self)

    def _take(self, size: int) -> None:
        if self.held + size > self.limit:
            if self.on_exhausted is not None:
                self.on_exhausted()
            raise BudgetExhausted
        self.held += size

    def _give_back(self, size: int) -> None:
        self.held -= size


class Lease:
    """One call's share of the budget; `release` returns all of it (idempotent)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        """Grow the lease by `size` bytes, or raise `BudgetExhausted` (the lease is unchanged)."""
        self._budget._take(size)
        self.size += size

    def release(self) -> None:
        if self.size:
            self._budget._give_back(self.size)
            self.size = 0
