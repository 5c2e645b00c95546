"""One `Upstream` per configured upstream: its long-lived client and call policy.

The base URL is fixed by config: callers hand over only an already-encoded
path and query, appended to it, so no value can change scheme, host or port.
The timeout bounds the whole call (connect, pool wait, headers and every
body byte), so a drip-feeding upstream times out too.

A call walks: cache (GET, `cache_ttl`) -> singleflight -> circuit breaker ->
retries within the timeout (retry.py) -> a `max_connections` slot -> `_send`,
whose body is read on the process's memory budget (reader.py, budget.py).
Keyed calls (`load`) are coalesced by batch.py and sent the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from .batch import Batcher
from .body import CappedBody
from .breaker import CircuitBreaker, counts_as_failure
from .budget import Lease, MemoryBudget
from .cache import ReplyCache, SingleFlight, vary_key
from .config import HOP_BY_HOP, GatewaySettings, UpstreamConfig
from .context import HeaderMap
from .errors import (
    CallError,
    CallInputError,
    MemoryBudgetExhausted,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import UpstreamMetrics, outcome
from .reader import BodyReader
from .retry import Retrier, current_call
from .tracing import TRACE_HEADERS, trace_headers
from .transport import AiohttpTransport

USER_AGENT = "quart-aggregation-gateway"


@dataclass(slots=True)
class Reply:
    """A successful call: parsed JSON plus what the call cost."""

    status: int
    data: Any
    attempts: int = 1
    cached: bool = False
    queued_ms: float | None = None
    batch: int | None = None


class Upstream:
    """Sends calls to one upstream; owns its `httpx.AsyncClient` from start to close."""

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
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sender: httpx.AsyncBaseTransport | None = None
        self._resilience(metrics)

    def _resilience(self, metrics: UpstreamMetrics | None) -> None:
        """The optional parts, built once; one that is off is None and costs one check."""
        config = self.config
        self.metrics = metrics
        self.breaker = None if config.breaker is None else CircuitBreaker(
            self.name, config.breaker, on_change=metrics.breaker if metrics else None)
        self.cache = ReplyCache(config.cache_ttl) if config.cache_ttl > 0 else None
        self._flights: SingleFlight[tuple[Reply, bytes]] = SingleFlight()
        self.retrier = Retrier(self.name, self.timeout, config.retries, metrics)
        self._slots = asyncio.Semaphore(config.max_connections)
        self.batcher = None if config.batch is None else Batcher(
            self.name, config.batch, self._batch_call, metrics.batch if metrics else None)
        self._trace = not TRACE_HEADERS.intersection(self._forward)
        self.busy = 0  # calls in flight; a retired upstream is closed once it drops to 0
        self._idle: asyncio.Event | None = None  # set up when retired

    async def start(self) -> None:
        transport = self._transport or AiohttpTransport(self.config.max_connections)
        self._sender = transport
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            cookies=_no_cookies(),
        )

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self._client is not None:
            await self._client.aclose()  # closes the transport and its pool
            self._client = None
            self._sender = None

    def outgoing_headers(self, incoming: HeaderMap, request_id: str,
                         extra: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
        """Static headers, the allowlisted incoming ones, and the request id.

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
                   body: bytes | None = None, *, cache: bool = True) -> Reply:
        """One call within its timeout; raises a `CallError` subclass on any failure.

        `cache=False` goes to the upstream even when a fresh reply is cached, and
        stores nothing: a measurement must not be served, or skewed, by the cache.
        """
        use_cache = cache and self.cache is not None and method == "GET"
        return await self._measured(method, path_and_query, headers, body, use_cache)

    async def _measured(self, method: str, path_and_query: str,
                        headers: list[tuple[str, str]], body: bytes | None,
                        use_cache: bool) -> Reply:
        """A call counted in `busy` (for retirement) and in the metrics, by outcome."""
        started = time.perf_counter()
        self.busy += 1
        try:
            if use_cache:
                reply = await self._cached(path_and_query, headers)
            else:
                reply = (await self._protected(method, path_and_query, headers, body))[0]
        except CallError as error:
            if self.metrics is not None:
                self.metrics.call(outcome(error), time.perf_counter() - started)
            raise
        finally:
            self._leave()
        if self.metrics is not None:
            self.metrics.call("cached" if reply.cached else "ok",
                              time.perf_counter() - started)
        return reply

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
        return await self._measured("GET", path_and_query, headers, None, use_cache=False)

    async def _cached(self, path_and_query: str, headers: list[tuple[str, str]]) -> Reply:
        """A GET through the cache; identical GETs in flight share one upstream call."""
        assert self.cache is not None
        key = (path_and_query, vary_key(headers))
        entry = self.cache.get(key, asyncio.get_running_loop().time())
        if entry is not None:
            if self.metrics is not None:
                self.metrics.cache(True)
            return Reply(entry.status, await self.reader.parse(entry.raw, entry.status),
                         attempts=0, cached=True)
        if self.metrics is not None:
            self.metrics.cache(False)
        (reply, raw), shared = await self._flights.run(
            key, partial(self._fill, key, path_and_query, headers))
        if not shared:
            return reply
        if self.metrics is not None:
            self.metrics.shared()
        # Each request parses its own copy: a hook mutating its data cannot touch another's.
        return Reply(reply.status, await self.reader.parse(raw, reply.status), attempts=0,
                     cached=True)

    async def _fill(self, key: tuple[str, tuple[tuple[str, str], ...]], path_and_query: str,
                    headers: list[tuple[str, str]]) -> tuple[Reply, bytes]:
        assert self.cache is not None
        reply, raw = await self._protected("GET", path_and_query, headers, None)
        self.cache.put(key, reply.status, raw, asyncio.get_running_loop().time())
        return reply, raw

    async def _protected(self, method: str, path_and_query: str,
                         headers: list[tuple[str, str]], body: bytes | None
                         ) -> tuple[Reply, bytes]:
        """Breaker, then the attempts (retries within the timeout); the reply and its bytes."""
        breaker = self.breaker
        trial = breaker.admit() if breaker is not None else False
        try:
            (reply, raw), attempts = await self.retrier.run(
                method, partial(self._attempt, method, path_and_query, headers, body))
        except CallError as error:
            if breaker is not None:
                if isinstance(error, MemoryBudgetExhausted):
                    breaker.cancel(trial)  # says nothing about the upstream's health
                elif counts_as_failure(error):
                    caller = current_call()
                    breaker.failure(trial, caller.label if caller is not None else None)
                else:
                    breaker.success(trial)
            raise
        except BaseException:
            if breaker is not None:
                breaker.cancel(trial)
            raise
        if breaker is not None:
            breaker.success(trial)
        reply.attempts = attempts
        return reply, raw

    async def _attempt(self, method: str, path_and_query: str, headers: list[tuple[str, str]],
                       body: bytes | None) -> tuple[Reply, bytes]:
        """One attempt in a `max_connections` slot; the wait for it is `queued_ms`.

        The reply's bytes are on the memory budget from their first chunk until parsed,
        and only `received` holds them: emptied here when the attempt fails, so neither
        the error nor the frames its traceback keeps can keep the buffer alive.
        """
        slots = self._slots
        queued = None
        if slots.locked():
            waited = time.perf_counter()
            await slots.acquire()
            queued = time.perf_counter() - waited
            if self.metrics is not None:
                self.metrics.queued(queued)
        else:
            await slots.acquire()
        lease = self.budget.lease()
        received: CappedBody | None = None
        try:
            try:
                status, received = await self._send(method, path_and_query, headers, body,
                                                    lease)
            finally:
                slots.release()
            data = await self.reader.parse_held(received, status)
            raw = received.take()
        finally:
            if received is not None:
                received.discard()
            lease.release()
        reply = Reply(status, data, queued_ms=None if queued is None else queued * 1000.0)
        return reply, raw

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

    async def _send(self, method: str, path_and_query: str, headers: list[tuple[str, str]],
                    body: bytes | None, lease: Lease) -> tuple[int, CappedBody]:
        # Requests go straight to the client's transport (httpx's public transport API):
        # `AsyncClient.send` adds auth, redirect, cookie and event-hook handling that a
        # gateway must not use anyway, at ~86 us of CPU per call (BENCHMARKS.md).
        sender = self._sender
        if sender is None:
            raise UpstreamUnavailable(f"upstream '{self.name}' is not started")
        if body is not None:
            headers = [*headers, ("content-type", "application/json")]
        # UTF-8, as aiohttp writes them: a non-ASCII value the client sent must not be a 500.
        try:
            request = httpx.Request(method, self.base + path_and_query,
                                    headers=httpx.Headers(headers, encoding="utf-8"),
                                    content=body)
        except httpx.InvalidURL as exc:  # e.g. over 64 KiB: not an HTTPError, would be a 500
            raise CallInputError(
                f"call to upstream '{self.name}': its URL is unusable ({str(exc)[:80]})"
            ) from None
        try:
            response = await sender.handle_async_request(request)
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"upstream '{self.name}' timed out after {self.timeout:g}s"
            ) from None
        except httpx.RemoteProtocolError as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' sent a malformed reply"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' is unreachable ({type(exc).__name__})"
            ) from exc
        try:
            status = response.status_code
            if not 200 <= status < 300:
                raise UpstreamStatus(f"upstream '{self.name}' answered {status}", status)
            received = await self.reader.read(response, lease)
        finally:
            await response.aclose()
        del response  # a failure raised below keeps this frame, not the connection's buffers
        if isinstance(received, CallError):
            try:
                raise received
            finally:
                del received  # no cycle through this frame: freed without the GC
        return status, received


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one user's upstream cookies must never reach another's call."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


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

