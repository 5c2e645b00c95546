"""The test upstream: aiohttp.web's low-level server on 127.0.0.1, counting what it saw.

Tests assert on what reached the upstream after the gateway is done with it, so a handler
gets a `Request` snapshot (raw path, the body already read) rather than aiohttp's live
request. It answers with an aiohttp `Response`. Replies no real server would send (garbage,
bad framing, a drip-fed body) come from `support.RawServer` instead.

    requests   requests received (counted once the body is read, before the handler runs)
    cancelled  handlers cancelled because their client (the gateway) hung up
    errors     the tracebacks of handlers that raised (each answered as a 500); the `upstream`
               fixture fails a test that leaves one, so a broken handler cannot pass unseen
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

Response = web.Response

MAX_HEAD_BYTES = 64 * 1024  # a request line or header line; aiohttp's default is 8190
SHUTDOWN_TIMEOUT = 1.0  # seconds for aiohttp to finish a connection once handlers are cancelled


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # raw, still percent-encoded, without the query string
    query: dict[str, str]  # the last value wins
    raw_query: str
    headers: dict[str, str]  # lower-case names, latin-1 values as sent, the last one wins
    body: bytes


Handler = Callable[[Request], Awaitable[web.Response]]


def json_response(
    obj: object,
    status: int = 200,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
) -> web.Response:
    return bytes_response(orjson.dumps(obj), status, headers)


def bytes_response(
    body: bytes,
    status: int = 200,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    """`body` as it is; `content_type` unless `headers` name one."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    if any(name.lower() == "content-type" for name, _ in items):
        return web.Response(body=body, status=status, headers=items)
    return web.Response(body=body, status=status, headers=items, content_type=content_type)


async def _snapshot(request: web.BaseRequest) -> Request:
    path, _, raw_query = request.raw_path.partition("?")
    headers = {name.decode("latin-1").lower(): value.decode("latin-1")
               for name, value in request.raw_headers}
    return Request(request.method, path, dict(parse_qsl(raw_query, keep_blank_values=True)),
                   raw_query, headers, await request.content.read())


class WebServer:
    """Serves `handler` on host:port (0 picks a free port) until `close`.

    A handler's exception is a 500 whose JSON names it (a real server's 500, readable in a
    failing test). `close` cancels running handlers without counting them as `cancelled`.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self.host = host
        self._port = port
        self._runner: web.ServerRunner | None = None
        self._running: set[asyncio.Task[object]] = set()
        self._closing = False
        self.requests = 0
        self.cancelled = 0
        self.errors: list[str] = []

    async def start(self) -> None:
        server = web.Server(self._serve, handler_cancellation=True, access_log=None,
                            max_line_size=MAX_HEAD_BYTES, max_field_size=MAX_HEAD_BYTES)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
        await site.start()
        self._port = self._runner.addresses[0][1]

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def _serve(self, raw: web.BaseRequest) -> web.StreamResponse:
        request = await _snapshot(raw)
        self.requests += 1
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            return await self._handler(request)
        except asyncio.CancelledError:
            if not self._closing:
                self.cancelled += 1
            raise
        except Exception as exc:
            self.errors.append(traceback.format_exc())
            return json_response({"error": f"{type(exc).__name__}: {exc}"}, 500)
        finally:
            self._running.discard(task)

    async def close(self) -> None:
        self._closing = True
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
