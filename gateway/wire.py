"""The bottom of the upstream pipeline: one HTTP exchange, apart from every policy.

Builds the `httpx.Request` (the base URL fixed by config, the caller's
already-encoded path and query appended, so no value can change scheme, host
or port), sends it through the upstream's long-lived `httpx.AsyncClient`'s
transport, maps httpx's errors to ours, and reads the body with reader.py
into `call.received`, on the lease the body layer took. Parsing, timeouts,
retries and slots are the layers' (pipeline.py).
"""

from __future__ import annotations

import re
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING

import httpx
from yarl import URL

from .body import CappedBody
from .errors import CallError, CallInputError, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from .pipeline import Call, Reply
from .reader import BodyReader
from .transport import AiohttpTransport, chunks

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

BODY_HEADERS = ("content-length", "content-encoding")  # what reader.BodyReader.read looks up


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
        self._fast: AiohttpTransport | None = None

    async def start(self) -> None:
        transport = self._transport or AiohttpTransport(self._max_connections)
        self._sender = transport
        # Our own transport also takes calls without httpx's models, for URLs it would
        # send unchanged; any other transport (a test's) gets httpx's Request.
        if isinstance(transport, AiohttpTransport) and _stable(self.base):
            self._fast = transport
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
            self._fast = None

    async def __call__(self, call: Call) -> Reply:
        """The reply's status (its data still unparsed); the body is left in `call.received`."""
        sender = self._sender
        if sender is None:
            raise UpstreamUnavailable(f"upstream '{self.name}' is not started")
        assert call.lease is not None
        headers = call.headers
        if call.body is not None:
            headers = [*headers, ("content-type", "application/json")]
        url = self.base + call.target
        if self._fast is not None and _sent_as_is(url, call.target):
            return await self._open(self._fast, call, URL(url, encoded=True), headers)
        # UTF-8, as aiohttp writes them: a non-ASCII value the client sent must not be a 500.
        try:
            request = httpx.Request(call.method, url,
                                    headers=httpx.Headers(headers, encoding="utf-8"),
                                    content=call.body)
        except httpx.InvalidURL as exc:  # e.g. over 64 KiB: not an HTTPError, would be a 500
            raise CallInputError(
                f"call to upstream '{self.name}': its URL is unusable ({str(exc)[:80]})"
            ) from None
        # Requests go straight to the client's transport (httpx's public transport API):
        # `AsyncClient.send` adds auth, redirect, cookie and event-hook handling that a
        # gateway must not use anyway, at ~86 us of CPU per call (BENCHMARKS.md).
        try:
            response = await sender.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise self._failed(exc) from _cause(exc)
        try:
            status = self._accepted(response.status_code)
            received = await self.reader.read(status, response.headers, response.aiter_raw(),
                                              call.lease)
        finally:
            await response.aclose()
        del response  # a failure raised below keeps this frame, not the connection's buffers
        return _received(call, status, received)

    async def _open(self, transport: AiohttpTransport, call: Call, url: URL,
                    headers: list[tuple[str, str]]) -> Reply:
        """The same exchange on aiohttp's objects, without httpx's Request and Response."""
        assert call.lease is not None
        try:
            response = await transport.open(call.method, url, headers, call.body or None)
        except httpx.HTTPError as exc:
            raise self._failed(exc) from _cause(exc)
        try:
            status = self._accepted(response.status)
            received = await self.reader.read(status, _joined(response.headers),
                                              chunks(response), call.lease)
        finally:
            response.release()
        del response  # a failure raised below keeps this frame, not the connection's buffers
        return _received(call, status, received)

    def _accepted(self, status: int) -> int:
        """The status of a reply whose body is worth reading: a 2xx; any other fails the call."""
        if not 200 <= status < 300:
            raise UpstreamStatus(f"upstream '{self.name}' answered {status}", status)
        return status

    def _failed(self, exc: httpx.HTTPError) -> CallError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(f"upstream '{self.name}' timed out after {self.timeout:g}s")
        if isinstance(exc, httpx.RemoteProtocolError):
            return UpstreamUnavailable(f"upstream '{self.name}' sent a malformed reply")
        return UpstreamUnavailable(
            f"upstream '{self.name}' is unreachable ({type(exc).__name__})")


def _joined(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The headers the reader looks at, repeated ones joined by ", " as httpx joins them.

    aiohttp's `get` gives the first value only: `Content-Encoding: gzip` then
    `Content-Encoding: identity` would be decoded here yet refused on httpx's path.
    """
    out = {}
    for name in BODY_HEADERS:
        values = headers.getall(name, ())
        if values:
            out[name] = ", ".join(values)
    return out


def _cause(exc: httpx.HTTPError) -> httpx.HTTPError | None:
    """A timeout is reported without its cause (as before); other failures keep theirs."""
    return None if isinstance(exc, httpx.TimeoutException) else exc


def _received(call: Call, status: int, received: CappedBody | CallError) -> Reply:
    if isinstance(received, CallError):
        try:
            raise received
        finally:
            del received  # no cycle through this frame: freed without the GC
    call.received = received
    return Reply(status, None)


# What httpx sends exactly as given (checked against httpx's URL parser): unreserved and
# reserved characters and valid percent escapes, no dot segment, within httpx's 64 KiB.
_AS_IS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:/?@\[\]]|%[0-9A-Fa-f]{2})*")
_MAX_URL = 65536


def _sent_as_is(url: str, target: str) -> bool:
    return (len(url) <= _MAX_URL and "/." not in target
            and _AS_IS.fullmatch(target) is not None)


def _stable(base: str) -> bool:
    """Whether httpx leaves `base` as written (else every call takes httpx's path)."""
    try:
        return str(httpx.URL(base + "/x")) == base + "/x"
    except httpx.InvalidURL:
        return False


def _no_cookies() -> CookieJar:
    """A jar that keeps nothing: one user's upstream cookies must never reach another's call."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
