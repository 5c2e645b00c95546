"""What a request comes to: a `Result`, built here and nowhere else (pure).

Every entry point (HTTP, `/ws`, the dashboard's run API, a job) turns its
request into a `Result`, and every refusal, whoever refuses (the framing
guard, the router, a bad body, the job store, later authentication and rate
limits), is `refusal(...)`: the envelope with no data, one error line and the
timing headers. The request-id rule lives here too, so the headers, the job
capture and the OpenAPI document agree on it.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import envelope
from .config import STRATEGIES
from .context import HeaderMap
from .envelope import CallRecord

# An `X-Request-ID` the gateway keeps (echoes and forwards); any other is replaced.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


@dataclass(slots=True)
class Result:
    """One aggregate request's outcome, before it becomes an HTTP, job or WebSocket reply."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def request_id(headers: HeaderMap) -> str:
    """The client's `X-Request-ID` if it is a sane token, else a fresh one."""
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def strategy_of(headers: HeaderMap, default: str) -> str:
    """The strategy a refused request asked for, if it is one; else `default` (no error)."""
    asked = (headers.get("x-gateway-strategy") or "").strip().lower()
    return asked if asked in STRATEGIES else default


def internal_error(headers: HeaderMap, default_strategy: str) -> Result:
    """The 500 for a bug outside any endpoint's own handling (the caller logs it): the
    request id is the one line's, so the log and the client can be matched."""
    rid = request_id(headers)
    return refusal(500, f"internal error (request id {rid})", request_id=rid,
                   strategy=strategy_of(headers, default_strategy), started=time.perf_counter())


def result(status: int, data: Any, *, request_id: str, strategy: str, started: float,
           records: Iterable[CallRecord] = (), error: str | None = None,
           extra: Mapping[str, str] | None = None, complete: bool = False) -> Result:
    """The envelope and its headers for a request that arrived at `started` (perf_counter)."""
    records = list(records)
    total = (time.perf_counter() - started) * 1000.0
    body = envelope.body(data, strategy=strategy, records=records, processing_ms=total,
                         complete=complete and error is None, error=error)
    headers = envelope.headers(request_id, records, total)
    if extra:
        headers.update(extra)
    return Result(status, body, headers)


def refusal(status: int, message: str, *, request_id: str, strategy: str, started: float,
            records: Iterable[CallRecord] = (), extra: Mapping[str, str] | None = None
            ) -> Result:
    """The one refusal: no data, `message` as the error line, the timing headers."""
    return result(status, None, request_id=request_id, strategy=strategy, started=started,
                  records=records, error=message, extra=extra)
