"""The recent-request ring the dashboard reads: a bounded, per-process record of timings.

Recording is on the hot path, so `Recent.add` only copies a few scalars per
call out of the envelope it is handed (O(calls), no deep copies, no JSON).
Everything the page needs beyond that, such as the critical path, is worked
out when the page asks (`to_json`), by pure functions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .plan import Plan

if TYPE_CHECKING:
    from .context import RequestContext
    from .result import Result
    from .routing import Target

SIZE = 200  # requests kept per process
# Timings in `meta` are rounded to 0.01 ms, so "ended before it started" needs a little slack.
_SLACK_MS = 0.05


# What the page shows for a skipped call (meta `{"skipped": true, "ok": true}`), not "not run".
SKIPPED = "skipped: a request value it needs is missing (or a view never awaited it)"


@dataclass(frozen=True, slots=True)
class CallTiming:
    """One call of a recorded request, in milliseconds from the request's start."""

    name: str
    upstream: str
    status: int | None
    ok: bool
    start_ms: float
    elapsed_ms: float
    deps: tuple[str, ...]
    error: str | None = None
    cached: bool = False
    canceled: bool = False  # started, then stopped because the request had already failed

    @property
    def ran(self) -> bool:
        return self.elapsed_ms > 0.0 or self.status is not None

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.elapsed_ms


@dataclass(frozen=True, slots=True)
class Entry:
    """One aggregate request as the dashboard draws it."""

    seq: int
    at: float  # wall-clock seconds since the epoch, for display
    request_id: str
    method: str
    path: str
    route: str
    kind: str  # "config" (a plan with known dependencies) or "code" (a Python view)
    status: int
    strategy: str
    total_ms: float
    complete: bool
    calls: tuple[CallTiming, ...]

    def to_json(self) -> dict[str, Any]:
        critical = critical_path(self.calls, self.strategy, deps_known=self.kind == "config")
        return {
            "seq": self.seq,
            "at": self.at,
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "kind": self.kind,
            "status": self.status,
            "strategy": self.strategy,
            "total_ms": self.total_ms,
            "complete": self.complete,
            "calls": [
                {
                    "name": c.name,
                    "upstream": c.upstream,
                    "status": c.status,
                    "ok": c.ok,
                    "ran": c.ran,
                    "start_ms": c.start_ms,
                    "elapsed_ms": c.elapsed_ms,
                    "deps": list(c.deps),
                    "error": c.error,
                    "cached": c.cached,
                    "canceled": c.canceled,
                    "critical": c.name in critical,
                }
                for c in self.calls
            ],
        }


class Recent:
    """The last `size` aggregate requests of this process, oldest first."""

    def __init__(self, size: int = SIZE) -> None:
        self._entries: deque[Entry] = deque(maxlen=size)
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_seq(self) -> int:
        return self._seq

    def add(self, target: Target, ctx: RequestContext, result: Result) -> Entry:
        self._seq += 1
        entry = make_entry(self._seq, target, ctx, result)
        self._entries.append(entry)
        return entry

    def since(self, seq: int = 0, limit: int | None = None) -> list[Entry]:
        """Entries newer than `seq`, oldest first; at most the newest `limit` of them."""
        out = [e for e in self._entries if e.seq > seq]
        return out[-limit:] if limit is not None and limit >= 0 else out


def make_entry(seq: int, target: Target, ctx: RequestContext, result: Result) -> Entry:
    """An entry from a finished request; reads the envelope's `meta`, copies only scalars."""
    meta = result.body.get("meta") or {}
    calls_meta: dict[str, dict[str, Any]] = meta.get("calls") or {}
    if isinstance(target, Plan):
        known = {c.name: (c.upstream, c.deps) for c in target.calls}
        kind, method = "config", target.method
    else:
        known = {}
        kind, method = "code", ctx.method
    calls = tuple(
        CallTiming(
            name=name,
            upstream=known.get(name, ("", ()))[0],
            status=m.get("status"),
            ok=bool(m.get("ok")),
            start_ms=float(m.get("start_ms") or 0.0),
            elapsed_ms=float(m.get("elapsed_ms") or 0.0),
            deps=known.get(name, ("", ()))[1],
            error=m.get("error") or (SKIPPED if m.get("skipped") else None),
            cached=bool(m.get("cached")),
            # A call stopped by its request's failure (or deadline) says so in its error.
            canceled=not m.get("ok") and str(m.get("error") or "").startswith("canceled"),
        )
        for name, m in calls_meta.items()
    )
    return Entry(
        seq=seq,
        at=time.time(),
        request_id=ctx.request_id,
        method=method,
        path=ctx.path,
        route=target.route,
        kind=kind,
        status=result.status,
        strategy=ctx.strategy,
        total_ms=float(meta.get("processing_time_ms") or 0.0),
        complete=bool(meta.get("complete")),
        calls=calls,
    )


def critical_path(calls: Sequence[CallTiming], strategy: str, *, deps_known: bool) -> set[str]:
    """Names of the calls on the chain that decided when the last call finished.

    Walk back from the call that ended last (canceled calls never decide).
    With known dependencies and the parallel strategy a call started when
    its last dependency ended, so that dependency is its predecessor.
    Otherwise (sequential, or a Python view whose dependencies are not
    declared) the predecessor is the call that ended last before it
    started, if any.
    """
    ran = [c for c in calls if c.ran and not c.canceled]
    if not ran:
        return set()
    by_name = {c.name: c for c in ran}
    current = max(ran, key=lambda c: c.end_ms)
    path = {current.name}
    while True:
        candidates: Iterable[CallTiming]
        if deps_known and strategy == "parallel":
            candidates = (by_name[d] for d in current.deps if d in by_name)
        else:
            limit = current.start_ms + _SLACK_MS
            candidates = (c for c in ran if c.name not in path and c.end_ms <= limit)
        previous = max(candidates, key=lambda c: c.end_ms, default=None)
        if previous is None or previous.name in path:
            return path
        path.add(previous.name)
        current = previous
