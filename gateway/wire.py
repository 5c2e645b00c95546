"""The bottom of the upstream pipeline: one HTTP exchange, apart from every policy.

Builds the `httpx.Request` (the base URL fixed by config, the caller's
already-encoded path and query appended, so no value can change scheme, host
or port), sends it through the upstream's long-lived `httpx.AsyncClient`'s
transport, maps httpx's errors to ours, and reads the body with reader.py
into `call.received`, on the lease the body layer took. Parsing, timeouts,
retries and slots are the layers' (pipeline.py).
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from .errors import CallError, CallInputError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from .pipeline import Call, Reply
from .reader import BodyReader
from .transport import AiohttpTransport


class Wire:
    """Sends one upstream's attempts; owns its `httpx.AsyncClient` from start to close."""

    def __init__(self, name: str, base: str, timeout: float, max_connections: int,
                 reader: BodyReader, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.base = base
        self.timeout = timeout
        self.reader = reader
        self._max_connections = max_connections
        self._transport = transport
        self.client: httpx.AsyncClient | None = None
        self._sender: httpx.AsyncBaseTransport | None = None

    async def start(self) -> None:
        transport = self._transport or AiohttpTransport(self._max_connections)
        self._sender = transport
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
            cookies=_no_cookies(),
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()  # closes the transport and its pool
            self.client = None
            self._sender = None

    async def __call__(self, call: Call) -> Reply:
        """The reply's status (its data still unparsed); the body is left in `call.received`."""
        # Requests go straight to the client's transport (httpx's public transport API):
        # `AsyncClient.send` adds auth, redirect, cookie and event-hook handling that a
        # gateway must not use anyway, at ~86 us of CPU per call (BENCHMARKS.md).
        sender = self._sender
        if sender is None:
            raise UpstreamUnavailable(f"upstream '{self.name}' is not started")
        assert call.lease is not None
        headers = call.headers
        if call.body is not None:
            headers = [*headers, ("content-type", "application/json")]
        # UTF-8, as aiohttp writes them: a non-ASCII value the client sent must not be a 500.
        try:
            request = httpx.Request(call.method, self.base + call.target,
                                    headers=httpx.Headers(headers, encoding="utf-8"),
                                    content=call.body)
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
            received = await self.reader.read(response, call.lease)
        finally:
            await response.aclose()
        del response  # a failure raised below keeps this frame, not the connection's buffers
        if isinstance(received, CallError):
            try:
                raise received
            finally:
                del received  # no cycle through this frame: freed without the GC
        call.received = received
        return Reply(status, None)


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one user's upstream cookies must never reach another's call."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
