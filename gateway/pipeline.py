"""The upstream pipeline's interface: a `Call` goes down ordered layers to the wire.

Each upstream builds its chain once, at start (`gateway/layers/` holds the order):

    measure -> cache -> singleflight -> breaker -> retry (or timeout) -> body -> slot -> wire

A layer is an object with `async def __call__(call, next)` that may answer by
itself (a cache hit, an open breaker), call `next(call)` once or several times
(retries), and look at or adjust the `Reply` on its way back up. A feature
that is off (no cache, no breaker, no metrics) is not in the chain at all, so
it costs nothing. A new policy (outgoing limits, client spans) is one class
and one line in the order; wire I/O stays in `gateway/wire.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .body import CappedBody
    from .budget import Lease

Headers = list[tuple[str, str]]


@dataclass(slots=True)
class Reply:
    """A successful call: parsed JSON plus what the call cost.

    `encoded`: `data` as JSON, when parsing produced it anyway (big replies, reader.py);
    the envelope embeds it for a call whose reply it returns unchanged.
    """

    status: int
    data: Any
    attempts: int = 1
    cached: bool = False
    queued_ms: float | None = None
    batch: int | None = None
    encoded: bytes | None = None


@dataclass(slots=True)
class Call:
    """One upstream call on its way down the chain, and what its layers leave on it.

    `deadline` is the request's (event-loop time), or None (a batch call serves many
    requests). The body layer holds the reply's bytes in `received` on `lease` while an
    attempt is read, and hands them over as `raw` once parsed (the cache keeps them).
    """

    method: str
    target: str  # the already-encoded path and query, appended to the upstream's base URL
    headers: Headers
    body: bytes | None = None
    cacheable: bool = False  # a GET that may be served from, and stored in, the cache
    deadline: float | None = None
    key: tuple[str, tuple[tuple[str, str], ...]] | None = None  # the cache's, once computed
    lease: Lease | None = None
    received: CappedBody | None = None
    raw: bytes = b""


Next = Callable[[Call], Awaitable[Reply]]


class Layer(Protocol):
    """One policy around the rest of the chain (`next`)."""

    async def __call__(self, call: Call, next: Next) -> Reply: ...


class _Bound:
    """A layer with its `next` fixed: built once per upstream, so a call allocates no link."""

    __slots__ = ("layer", "next")

    def __init__(self, layer: Layer, next: Next) -> None:
        self.layer = layer
        self.next = next

    def __call__(self, call: Call) -> Awaitable[Reply]:
        return self.layer(call, self.next)


def chain(layers: Sequence[Layer], wire: Next) -> Next:
    """`layers` (outermost first) in front of `wire`, as one callable."""
    handler = wire
    for layer in reversed(layers):
        handler = _Bound(layer, handler)
    return handler
