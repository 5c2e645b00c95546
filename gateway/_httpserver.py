"""A tiny, fast asyncio HTTP/1.1 server for the demo upstreams, test upstreams and benchmarks.

Why not Hypercorn: these upstreams start in-process in milliseconds, count what they saw
(requests, connections, handlers cancelled by a client that went away), can misbehave on
purpose (`Response.raw`), and must never be the bottleneck of a benchmark. One
`asyncio.Protocol` per connection, keep-alive, no pipelining: bytes that arrive while a handler
runs wait in the buffer until its response is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Self, cast
from urllib.parse import parse_qsl

import orjson

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str  # raw, still percent-encoded, without the query string
    query: dict[str, str]
    raw_query: str
    headers: dict[str, str]  # lower-case names, last one wins
    body: bytes


@dataclass(slots=True)
class Response:
    """A response; `raw`, when set, is written verbatim instead, so tests can send garbage."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"
    raw: bytes | None = None
    close_after: bool = False


Handler = Callable[[Request], Awaitable[Response]]


def json_response(
    obj: object,
    status: int = 200,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
) -> Response:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    return Response(status=status, body=orjson.dumps(obj), headers=items)


def _encode(response: Response, keep_alive: bool, head_only: bool) -> bytes:
    if response.raw is not None:
        return response.raw
    lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}"]
    names = {name.lower() for name, _ in response.headers}
    if response.content_type is not None and "content-type" not in names:
        lines.append(f"content-type: {response.content_type}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append(f"content-length: {len(response.body)}")
    if not keep_alive:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at `pos`: (body, end offset), or None if incomplete."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        if size < 0:
            raise ValueError("negative chunk size")
        pos = eol + 2
        if size == 0:  # then optional trailers, ended by an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            return None if end < 0 else (bytes(body), end + 4)
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ValueError("bad chunk terminator")
        body += buf[pos : pos + size]
        pos += size + 2


class _BadRequest(Exception):
    """The bytes on the connection are not a request we can answer; carries the status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connection(asyncio.Protocol):
    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._discard = False  # after a fatal error: drop input until the client hangs up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server._live.add(self)
        self._server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server._live.discard(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            if not self._server._closing:
                self._server.cancelled += 1

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._buffer += data
        if self._task is None:
            self._next_request()
        elif len(self._buffer) > MAX_HEADER_BYTES and self._transport is not None:
            self._transport.pause_reading()  # no pipelining, so no unbounded buffering either

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _next_request(self) -> None:
        try:
            parsed = self._parse()
        except _BadRequest as exc:
            self._fail(exc.status)
            return
        if parsed is None:
            return
        request, keep_alive = parsed
        self._server.requests += 1
        self._task = asyncio.get_running_loop().create_task(self._run(request, keep_alive))
        self._server._tasks.add(self._task)
        self._task.add_done_callback(self._server._tasks.discard)

    def _parse(self) -> tuple[Request, bool] | None:
        buf = self._buffer
        while buf.startswith(b"\r\n"):  # RFC 9112 2.2: ignore empty lines before a request
            del buf[:2]
        end = buf.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES + 4)
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise _BadRequest(431)
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(400) from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(505)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400)
            headers[name.lower()] = value.strip()
        start = end + 4
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                chunked = _parse_chunked(buf, start)
                if chunked is None:
                    if len(buf) - start > MAX_BODY_BYTES:
                        raise _BadRequest(413)
                    return None
                body, stop = chunked
            else:
                length = int(headers.get("content-length", "0"))
                if not 0 <= length <= MAX_BODY_BYTES:
                    raise _BadRequest(413 if length > 0 else 400)
                stop = start + length
                if len(buf) < stop:
                    return None
                body = bytes(buf[start:stop])
        except ValueError:
            raise _BadRequest(400) from None
        del buf[:stop]
        path, _, raw_query = target.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        return Request(method, path, query, raw_query, headers, body), keep_alive

    async def _run(self, request: Request, keep_alive: bool) -> None:
        head_only = request.method == "HEAD"
        try:
            response = await self._server._handler(request)
            keep_alive = keep_alive and not response.close_after
            data = _encode(response, keep_alive, head_only)
        except Exception as exc:  # the handler's bug becomes a 500, as a real server's would
            error = json_response({"error": f"{type(exc).__name__}: {exc}"}, 500)
            data = _encode(error, keep_alive, head_only)
        self._task = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if not keep_alive:
            transport.close()
            return
        transport.resume_reading()
        if self._buffer:
            self._next_request()

    def _fail(self, status: int) -> None:
        """Answer an unparseable request, then half-close so the client reads it before EOF."""
        self._discard = True
        self._buffer.clear()
        transport = self._transport
        if transport is None:
            return
        transport.write(_encode(json_response({"error": _REASONS[status]}, status), False, False))
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()


class HTTPServer:
    """Serves `handler` on host:port (0 picks a free port) until `close`."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.requests = 0  # requests received (counted before the handler runs)
        self.connections = 0  # connections accepted
        self.cancelled = 0  # handlers cancelled because their client went away

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for conn in list(self._live):
            conn.close()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            await self._server.wait_closed()

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
