"""What enters the gateway, as the ingress and its checks see it: a `Door`, or a `Refusal`.

Apart from `ingress.py` so that the checks (`auth/check.py`, `limits/check.py`) can
build refusals without importing the ingress that runs them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .context import HeaderMap

if TYPE_CHECKING:
    from .routing import Target

HTTP, HANDSHAKE, SOCKET, RUN, JOB = "http", "handshake", "ws", "run", "job"


@dataclass(slots=True)
class Door:
    """One incoming message, whatever brought it; filled in as it goes through.

    A check that holds something for the message's lifetime (a concurrency slot) adds
    its release with `on_close`; the entry point calls `close()` once the message is
    answered, whatever happened (the ingress does it itself for a refused message).
    """

    kind: str  # HTTP, HANDSHAKE, SOCKET, RUN or JOB
    method: str
    path: str  # percent-decoded
    query: Mapping[str, str]
    headers: HeaderMap
    body: bytes = b""
    read: Callable[[Target], Awaitable[bytes]] | None = None  # reads the body, if it is wanted
    started: float = field(default_factory=time.perf_counter)
    target: Target | None = None  # set once routed
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what checks learn -> ctx.extras
    peer: str | None = None  # the client's address (scope['client'], proxies.py), if known
    response_headers: dict[str, str] = field(default_factory=dict)  # for a 2xx answer
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def on_close(self, release: Callable[[], None]) -> None:
        self._closers.append(release)

    def close(self) -> None:
        """Release what the checks hold for this message; safe to call twice."""
        closers, self._closers = self._closers, []
        for release in reversed(closers):
            release()


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a check answers instead of the endpoint: a status, one line, extra headers."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
