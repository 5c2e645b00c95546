"""What one incoming request brings; handed to `combine` hooks and fan-out views.

The request's deadline travels on its `RequestContext` (`deadline`, set by whoever
runs the request, read by the upstream calls it makes). The one context variable here
is the `Tally` of the call a task is making: the runner opens it around a call and
the layers under it (retries, breaker, batching) count into it, however deep they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from werkzeug.datastructures import Headers

from .auth.identity import ANONYMOUS, Identity

# Incoming headers: werkzeug's case-insensitive `Headers`, or a plain dict of lower-case names.
HeaderMap: TypeAlias = Mapping[str, str] | Headers

IDENTITY, CLIENT = "identity", "client"  # ctx.extras keys the ingress's checks fill in


@dataclass(slots=True)
class RequestContext:
    """The request as the business logic sees it (read-only by convention)."""

    request_id: str
    method: str
    path: str
    params: Mapping[str, Any]
    query: Mapping[str, str]
    headers: HeaderMap
    body: Any
    strategy: str  # "parallel" or "sequential", after the X-Gateway-Strategy override
    started: float  # time.perf_counter() when the request arrived
    extras: dict[str, Any] = field(default_factory=dict)  # free for hooks and middleware
    cache: bool = True  # False: no reply cache read or filled (the dashboard's Compare)
    # The deadline as event-loop time, once the request runs (`lifecycle.within`): retries
    # never start what it would cut short.
    deadline: float | None = None

    @property
    def identity(self) -> Identity:
        """Who is calling, as authentication saw it (anonymous without `[auth]`)."""
        identity = self.extras.get(IDENTITY)
        return identity if isinstance(identity, Identity) else ANONYMOUS

    @property
    def client(self) -> str | None:
        """The client key the limits count by (`{client}`)."""
        client = self.extras.get(CLIENT)
        return client if isinstance(client, str) else None

    def remaining(self, deadline: float) -> float:
        """Seconds left of a `deadline` counted from the request's arrival (never negative)."""
        return max(deadline - (time.perf_counter() - self.started), 0.0)


@dataclass(slots=True)
class Tally:
    """The call this task is making: who makes it (for the breaker's messages) and the
    attempts started so far, readable when the call is cut off before it can report them."""

    label: str
    attempts: int = 0


_tally: ContextVar[Tally | None] = ContextVar("gateway_call_tally", default=None)


class counting:
    """Count the attempts of the call made inside this block (one call per block).

    A class, not `@contextmanager`: it is entered once per upstream call, and a
    generator-based one was 2-3% of the CPU at 30 calls a request (py-spy).
    """

    __slots__ = ("_token", "tally")
    _token: Token[Tally | None]

    def __init__(self, label: str) -> None:
        self.tally = Tally(label)

    def __enter__(self) -> Tally:
        self._token = _tally.set(self.tally)
        return self.tally

    def __exit__(self, *exc: object) -> None:
        _tally.reset(self._token)


def current_call() -> Tally | None:
    """The `Tally` of the call being made in this task, if its maker keeps one."""
    return _tally.get()
