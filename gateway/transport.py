"""httpx's interface over aiohttp's connection pool: the transport under every upstream client.

Chosen by measurement (BENCHMARKS.md): httpcore's pool costs several times
more CPU per call than aiohttp's on this workload. httpx stays the interface
(`httpx.AsyncClient`, its Request/Response, timeouts and streaming), so the
rest of the gateway does not know which pool is underneath.

The pool is built for a gateway, not a browser: no cookie jar (a reply for
one user must never leak into another user's call), no proxies from the
environment, no redirects, no decompression here (httpx decodes, so the body
cap counts decoded bytes), and the URL passed through exactly as encoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from yarl import URL

_CHUNK = 64 * 1024


class _Body(httpx.AsyncByteStream):
    """Streams an aiohttp response into httpx; closing it returns the connection."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk
        except aiohttp.ClientPayloadError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool; created lazily inside the running event loop."""

    def __init__(self, max_connections: int = 100, keepalive_expiry: float = 30.0) -> None:
        self._limit = max_connections
        self._keepalive = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0,
                                         keepalive_timeout=self._keepalive, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),  # the caller's asyncio.timeout bounds calls
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        body = request.content or None
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientResponseError as exc:  # malformed status line or headers
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(str(exc) or type(exc).__name__) from exc
        except TimeoutError as exc:  # aiohttp's own socket timeouts (not set by us)
            raise httpx.ReadTimeout(str(exc)) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
