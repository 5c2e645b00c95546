"""httpx's interface over aiohttp's connection pool: the transport under every upstream client.

Chosen by measurement (BENCHMARKS.md): httpcore's pool costs several times
more CPU per call than aiohttp's on this workload. httpx stays the interface
(`httpx.AsyncClient`, its Request/Response, timeouts and streaming), so the
rest of the gateway does not know which pool is underneath. `open` is the
same exchange without httpx's Request/Response models (~75 us of CPU per
call): wire.py takes it for a URL httpx would send unchanged.

The pool is built for a gateway, not a browser: no cookie jar (a reply for
one user must never leak into another user's call), no proxies from the
environment, no redirects, no decompression here (body.py decodes, so the body
cap counts decoded bytes), and the URL passed through exactly as encoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import aiohttp
import httpx
from yarl import URL


async def chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The raw body's chunks as they arrive; aiohttp's errors raised as httpx's.

    Each is one piece aiohttp's parser buffered (at most a socket read, ~256 KiB), handed
    over as it is: `iter_chunked(n)` would copy every piece larger than `n` into slices.
    """
    try:
        async for chunk, _ in response.content.iter_chunks():
            if chunk:  # (b"", True) marks the end of an HTTP chunk
                yield chunk
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__) from exc


class _Body(httpx.AsyncByteStream):
    """Streams an aiohttp response into httpx; closing it returns the connection."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return chunks(self._response)

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
            # No `skip_auto_headers`: it copies every request's headers to look them up
            # (~5% of the CPU at 30 calls a request), and aiohttp adds its defaults only
            # where a header is missing, while our calls (and httpx's) always send
            # User-Agent, Accept and Accept-Encoding.
        )
        return self._session

    async def open(self, method: str, url: URL, headers: Sequence[tuple[str, str]],
                   body: bytes | None) -> aiohttp.ClientResponse:
        """The response (headers read, body not yet); errors raised as httpx's.

        The fast path under `handle_async_request`: the wire calls it directly for a URL
        httpx would send unchanged, without httpx's Request and Response models.
        The caller releases the response.
        """
        session = self._session or self._open()
        try:
            return await session.request(method, url, headers=headers, data=body,
                                         allow_redirects=False, compress=None)
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.open(request.method, URL(str(request.url), encoded=True),
                                   request.headers.multi_items(), request.content or None)
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
