"""One `Upstream` per configured upstream: its pipeline, built once, and its header rules.

A call goes down the upstream's chain of policy layers (pipeline.py: the
interface; layers/: the order) to the wire (wire.py: the one HTTP exchange,
with the long-lived client). The timeout bounds the whole call (connect,
pool wait, headers and every body byte), so a drip-feeding upstream times
out too. Keyed calls (`load`) are coalesced by batch.py and sent the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import httpx

from . import layers
from .batch import Batcher
from .breaker import CircuitBreaker
from .budget import MemoryBudget
from .cache import ReplyCache
from .config import HOP_BY_HOP, GatewaySettings, UpstreamConfig
from .context import HeaderMap
from .errors import UpstreamUnavailable
from .metrics import UpstreamMetrics
from .pipeline import Call, Reply, chain
from .reader import BodyReader
from .tracing import TRACE_HEADERS, trace_headers
from .wire import Wire

__all__ = ["USER_AGENT", "Reply", "Upstream"]

USER_AGENT = "quart-aggregation-gateway"


class Upstream:
    """Sends calls to one upstream, from `start` to `close`."""

    def __init__(self, config: UpstreamConfig, settings: GatewaySettings,
                 transport: httpx.AsyncBaseTransport | None = None,
                 metrics: UpstreamMetrics | None = None,
                 budget: MemoryBudget | None = None,
                 inflating: asyncio.Semaphore | None = None) -> None:
        self.config = config
        self.name = config.name
        self.base = config.url
        self.timeout = config.timeout
        self.max_bytes = settings.max_upstream_bytes
        self.reader = BodyReader(self.name, self.max_bytes, self.timeout, inflating)
        # The runtime's, shared by every upstream; one of its own when built alone (tests).
        self.budget = budget or MemoryBudget(settings.max_buffered_bytes)
        self._static_headers = [("user-agent", USER_AGENT), ("accept", "application/json"),
                                ("accept-encoding", "gzip, deflate"), *config.headers]
        self._forward = config.forward_headers
        self._trace = not TRACE_HEADERS.intersection(self._forward)
        self.metrics = metrics
        # The optional parts, built once; one that is off is None and not in the chain.
        self.breaker = None if config.breaker is None else CircuitBreaker(
            self.name, config.breaker, on_change=metrics.breaker if metrics else None)
        self.cache = ReplyCache(config.cache_ttl) if config.cache_ttl > 0 else None
        self.batcher = None if config.batch is None else Batcher(
            self.name, config.batch, self._batch_call, metrics.batch if metrics else None)
        self.wire = Wire(self.name, self.base, self.timeout, config.max_connections,
                         self.reader, transport)
        self._send = chain(layers.stack(config, self.reader, self.budget, metrics,
                                        self.cache, self.breaker), self.wire)
        self.busy = 0  # calls in flight; a retired upstream is closed once it drops to 0
        self._idle: asyncio.Event | None = None  # set up when retired

    @property
    def _client(self) -> httpx.AsyncClient | None:
        """The wire's client: None before start and once closed."""
        return self.wire.client

    async def start(self) -> None:
        await self.wire.start()

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        await self.wire.close()

    def outgoing_headers(self, incoming: HeaderMap, request_id: str,
                         extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Static headers, the allowlisted incoming ones, and the request id.

        Built once per request and upstream and shared by its calls: never changed after.

        A header the client named in its own `Connection` header is hop-by-hop
        for that request and is dropped even if allowlisted.
        """
        out = list(self._static_headers)
        if self._forward:
            hop = _connection_tokens(incoming.get("connection", ""))
            for name in self._forward:
                value = incoming.get(name)
                if value is not None and name not in hop:
                    out.append((name, value if value.isascii() else _as_sent(value)))
        if extra:
            out += [(k, v) for k, v in extra.items() if k.lower() not in HOP_BY_HOP]
        if self._trace:
            out += trace_headers(incoming)
        out.append(("x-request-id", request_id))
        return out

    async def call(self, method: str, path_and_query: str, headers: list[tuple[str, str]],
                   body: bytes | None = None, *, cache: bool = True,
                   deadline: float | None = None) -> Reply:
        """One call within its timeout; raises a `CallError` subclass on any failure.

        `cache=False` goes to the upstream even when a fresh reply is cached, and
        stores nothing: a measurement must not be served, or skewed, by the cache.
        `deadline` is the request's (event-loop time): retries never start past it.
        """
        cacheable = cache and self.cache is not None and method == "GET"
        return await self._run(Call(method, path_and_query, headers, body, cacheable,
                                    deadline))

    async def load(self, key: str, headers: list[tuple[str, str]]) -> Reply:
        """A keyed call served through the upstream's batch endpoint."""
        if self.batcher is None:
            raise UpstreamUnavailable(f"upstream '{self.name}' has no batch endpoint")
        self.busy += 1
        try:
            return await self.batcher.load(key, headers)
        finally:
            self._leave()

    async def _batch_call(self, path_and_query: str, headers: list[tuple[str, str]]) -> Reply:
        """The one upstream call of a batch (never cached: each key set is new)."""
        return await self._run(Call("GET", path_and_query, headers))

    async def _run(self, call: Call) -> Reply:
        """`call` down the chain, counted in `busy` (for retirement)."""
        self.busy += 1
        try:
            return await self._send(call)
        finally:
            self._leave()

    async def close_when_idle(self, grace: float) -> None:
        """Close once no call is in flight (or after `grace` seconds): a retired upstream."""
        if self.busy:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        await self.close()

    def _leave(self) -> None:
        self.busy -= 1
        if not self.busy and self._idle is not None:
            self._idle.set()


def _as_sent(value: str) -> str:
    """The client's header bytes again: the server decoded them as latin-1, aiohttp writes UTF-8.

    Exact for UTF-8 (and ASCII) bytes; other bytes arrive as their latin-1 text in UTF-8.
    """
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _connection_tokens(value: str) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())

