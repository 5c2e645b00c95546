"""What one incoming request brings; handed to `combine` hooks and fan-out views."""

from __future__ import annotations

import time
from collections.abc import Mapping
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
