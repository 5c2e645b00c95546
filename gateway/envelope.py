"""The aggregate response: data/meta/error, timing headers, status policy (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .errors import CallError, CircuitOpen


class ReplyFacts(Protocol):
    """What a successful call reports about itself (`upstream.Reply`)."""

    status: int
    attempts: int
    cached: bool
    batch: int | None
    queued_ms: float | None


@dataclass(slots=True)
class CallRecord:
    """What happened to one call; becomes `meta.calls[name]` and a Server-Timing entry."""

    name: str
    upstream: str
    status: int | None = None
    ok: bool = False
    start_ms: float = 0.0  # offset from the request's start, for waterfalls
    elapsed_ms: float = 0.0
    attempts: int = 0
    cached: bool = False
    error: str | None = None
    batch: int | None = None
    queued_ms: float | None = None
    finished: bool = False
    skipped: bool = False

    def skip(self) -> None:
        """The call was not made (an optional call without a request value it needs)."""
        self.ok = True
        self.finished = True
        self.skipped = True

    def fail(self, error: CallError) -> None:
        self.ok = False
        self.status = error.status
        self.error = str(error)

    def finish_failed(self, error: CallError, elapsed_ms: float) -> None:
        """The call ended with `error` after `elapsed_ms`."""
        self.elapsed_ms = elapsed_ms
        self.attempts = error.attempts
        self.finished = True
        self.fail(error)

    def finish_ok(self, reply: ReplyFacts, elapsed_ms: float) -> None:
        """The call succeeded; what it cost comes from the upstream's reply."""
        self.elapsed_ms = elapsed_ms
        self.ok = True
        self.finished = True
        self.status = reply.status
        self.attempts = reply.attempts
        self.cached = reply.cached
        self.batch = reply.batch
        self.queued_ms = reply.queued_ms

    def to_meta(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": True, "ok": True}
        meta: dict[str, Any] = {
            "status": self.status,
            "ok": self.ok,
            "elapsed_ms": round(self.elapsed_ms, 2),
            "attempts": self.attempts,
            "cached": self.cached,
            "start_ms": round(self.start_ms, 2),
        }
        if self.error is not None:
            meta["error"] = self.error
        if self.batch is not None:
            meta["batch"] = self.batch
        if self.queued_ms is not None:
            meta["queued_ms"] = round(self.queued_ms, 2)
        return meta


def body(
    data: Any,
    *,
    strategy: str,
    records: Iterable[CallRecord],
    processing_ms: float,
    complete: bool,
    error: str | None = None,
) -> dict[str, Any]:
    """The envelope every aggregate response carries, success or not."""
    out: dict[str, Any] = {
        "data": data,
        "meta": {
            "processing_time_ms": round(processing_ms, 2),
            "strategy": strategy,
            "complete": complete,
            "calls": {r.name: r.to_meta() for r in records},
        },
    }
    if error is not None:
        out["error"] = error
    return out


def server_timing(records: Iterable[CallRecord], total_ms: float) -> str:
    """`Server-Timing` value: one entry per call that ran, then `total`.

    A call cut off in flight (deadline, a failed sibling) ran too: its time until then is
    what explains a 504, so it is listed; only calls that never started (or were skipped)
    are left out.
    """
    parts = [f"{r.name};dur={r.elapsed_ms:.1f}" for r in records
             if not r.skipped and (r.attempts or r.finished or r.elapsed_ms > 0)]
    parts.append(f"total;dur={total_ms:.1f}")
    return ", ".join(parts)


def headers(request_id: str, records: Iterable[CallRecord], total_ms: float) -> dict[str, str]:
    return {
        "Server-Timing": server_timing(records, total_ms),
        "X-Processing-Time-Ms": f"{total_ms:.2f}",
        "X-Request-ID": request_id,
    }


def failure_status(error: CallError) -> tuple[int, dict[str, str]]:
    """The request's status when a required call failed, with any extra headers."""
    if isinstance(error, CircuitOpen):
        return 503, {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return error.gateway_status, {}


def dumps(obj: Any) -> bytes:
    """JSON for the wire; non-JSON values from hooks become strings, never a 500."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS)
