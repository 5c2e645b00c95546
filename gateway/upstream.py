"""One `Upstream` per configured upstream: its long-lived client and call policy.

The base URL is fixed by config: callers hand over only an already-encoded
path and query, appended to it, so no value can change scheme, host or port.
The timeout bounds the whole call (connect, pool wait, headers and every
body byte), so a drip-feeding upstream times out too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import orjson

from .config import HOP_BY_HOP, GatewaySettings, UpstreamConfig
from .context import HeaderMap
from .errors import (
    CallError,
    UpstreamBadReply,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .guard import TooDeep, loads_reply
from .transport import AiohttpTransport

USER_AGENT = "quart-aggregation-gateway"
# Bodies above this are parsed off the event loop so one big reply cannot stall every request.
_THREAD_PARSE_BYTES = 256 * 1024


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
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = config.name
        self.base = config.url
        self.timeout = config.timeout
        self.max_bytes = settings.max_upstream_bytes
        self._static_headers = [("user-agent", USER_AGENT), ("accept", "application/json"),
                                ("accept-encoding", "gzip, deflate"), *config.headers]
        self._forward = config.forward_headers
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._sender: httpx.AsyncBaseTransport | None = None

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
        out.append(("x-request-id", request_id))
        return out

    async def call(self, method: str, path_and_query: str, headers: list[tuple[str, str]],
                   body: bytes | None = None) -> Reply:
        """One call within its timeout; raises a `CallError` subclass on any failure."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._send(method, path_and_query, headers, body)
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream '{self.name}' timed out after {self.timeout:g}s"
            ) from None

    async def load(self, key: str, headers: list[tuple[str, str]]) -> Reply:
        """A keyed call served through the upstream's batch endpoint."""
        raise UpstreamUnavailable(f"upstream '{self.name}': batching is not available yet")

    async def _send(self, method: str, path_and_query: str, headers: list[tuple[str, str]],
                    body: bytes | None) -> Reply:
        # Requests go straight to the client's transport (httpx's public transport API):
        # `AsyncClient.send` adds auth, redirect, cookie and event-hook handling that a
        # gateway must not use anyway, at ~86 us of CPU per call (BENCHMARKS.md).
        sender = self._sender
        if sender is None:
            raise UpstreamUnavailable(f"upstream '{self.name}' is not started")
        if body is not None:
            headers = [*headers, ("content-type", "application/json")]
        # UTF-8, as aiohttp writes them: a non-ASCII value the client sent must not be a 500.
        request = httpx.Request(method, self.base + path_and_query,
                                headers=httpx.Headers(headers, encoding="utf-8"), content=body)
        try:
            response = await sender.handle_async_request(request)
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"upstream '{self.name}' timed out after {self.timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' is unreachable ({type(exc).__name__})"
            ) from exc
        try:
            status = response.status_code
            if not 200 <= status < 300:
                raise UpstreamStatus(f"upstream '{self.name}' answered {status}", status)
            raw = await self._read_capped(response)
        finally:
            await response.aclose()
        return Reply(status=status, data=await self._parse(raw, status))

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The decoded body, refused as soon as it passes the cap (never fully buffered)."""
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(response.status_code)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise self._too_large(response.status_code)
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"upstream '{self.name}' timed out after {self.timeout:g}s"
            ) from None
        except httpx.DecodingError as exc:
            raise UpstreamBadReply(
                f"upstream '{self.name}' sent a body that cannot be decoded",
                response.status_code,
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"upstream '{self.name}' broke off its reply ({type(exc).__name__})",
                response.status_code,
            ) from exc
        return b"".join(chunks)

    def _too_large(self, status: int) -> CallError:
        return UpstreamBadReply(
            f"upstream '{self.name}' sent a body over {self.max_bytes} bytes", status
        )

    async def _parse(self, raw: bytes, status: int) -> Any:
        if not raw.strip():
            return None
        try:
            if len(raw) > _THREAD_PARSE_BYTES:
                return await asyncio.to_thread(loads_reply, raw)
            return loads_reply(raw)
        except orjson.JSONDecodeError:
            raise UpstreamBadReply(
                f"upstream '{self.name}' answered {status} with a body that is not JSON", status
            ) from None
        except TooDeep as exc:  # the envelope could not carry it (guard.py)
            raise UpstreamBadReply(
                f"upstream '{self.name}' answered {status} with JSON {exc}", status) from None


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


def now_ms() -> float:
    return time.perf_counter() * 1000.0
