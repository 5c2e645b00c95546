"""A fast fake upstream for the load tests: GET /a/{id}, /b/{id}, /c/{id} -> small JSON.

GET /big/{bytes} answers a JSON object of about that many bytes, made of many small
objects (what makes a parsed body ~10 times its size): the hostile-load job flood and
the payload curve. GET /batch?ids=1,2,3 answers [{"id": 1, ...}, ...]: a batch endpoint.

A raw asyncio.Protocol on uvloop with a minimal HTTP/1.1 parser, so that the
upstream costs as little CPU as possible on the load core and the numbers
measure the server under test, not this process. Keep-alive and pipelining
are supported; request bodies are skipped (the benchmarks only send GET).

    python benchmarks/upstream.py --port 9001 --delay-ms 50
    python benchmarks/upstream.py --port 9001 --delays a=100,b=200,c=300
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import signal
import typing

import uvloop

_SOURCES = (b"a", b"b", b"c")
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


MAX_BIG = 64 * 1024 * 1024


@functools.lru_cache(maxsize=4)
def _big(size: int) -> bytes:
    item = '{"id":%d,"name":"item-%d","tags":["a","b"],"score":%d.5}'
    items: list[str] = []
    total = 12
    while total < size:
        items.append(item % (len(items), len(items), len(items) % 97))
        total += len(items[-1]) + 1
    return ('{"items":[' + ",".join(items) + "]}").encode()


def _batch(query: bytes) -> bytes:
    """GET /batch?ids=1,2 -> [{"id": 1, "name": "item-1"}, ...] (digits-only keys)."""
    params = dict(p.partition(b"=")[::2] for p in query.split(b"&"))
    keys = [k for k in params.get(b"ids", b"").split(b",") if k.isdigit()]
    items = [{"id": int(k), "name": f"item-{int(k)}"} for k in keys]
    return json.dumps(items, separators=(",", ":")).encode()


def _route(target: bytes) -> tuple[bytes | None, int, bytes]:
    """-> (source, status, body) for a request target such as b"/a/7?x=1"."""
    path, _, query = target.partition(b"?")
    if path == b"/batch":
        return b"batch", 200, _batch(query)
    parts = path.split(b"/")
    if len(parts) == 3 and parts[0] == b"" and parts[1] == b"big" and parts[2].isdigit():
        return b"big", 200, _big(min(int(parts[2]), MAX_BIG))
    if len(parts) == 3 and parts[0] == b"" and parts[1] in _SOURCES and parts[2]:
        source, raw_id = parts[1], parts[2]
        item_id: int | str = int(raw_id) if raw_id.isdigit() else raw_id.decode("latin-1")
        name = source.decode()
        body = json.dumps(
            {"id": item_id, "source": name, "name": f"{name}-{item_id}", "value": 42},
            separators=(",", ":"),
        ).encode()
        return source, 200, body
    return None, 404, b'{"error":"not found"}'


class _Reply:
    __slots__ = ("keep_alive", "payload")

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.payload: bytes | None = None


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, delays: dict[bytes, float]) -> None:
        self._delays = delays
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        # Replies go out strictly in request order even when delays differ.
        self._pending: collections.deque[_Reply] = collections.deque()
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not a subclass of asyncio.Transport.
        self._transport = typing.cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while not self._closing:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > 65536:
                    self._reply_now(400, b'{"error":"header too large"}', keep_alive=False)
                return
            head = self._buffer[:end]
            lines = head.split(b"\r\n")
            request_line = lines[0].split(b" ")
            length = 0
            keep_alive = not request_line[-1].endswith(b"1.0")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value.strip() or b"0")
                elif lname == b"connection":
                    v = value.strip().lower()
                    keep_alive = v != b"close" and (keep_alive or v == b"keep-alive")
            if len(self._buffer) < end + 4 + length:
                return
            self._buffer = self._buffer[end + 4 + length :]
            if len(request_line) != 3:
                self._reply_now(400, b'{"error":"bad request line"}', keep_alive=False)
                return
            source, status, body = _route(request_line[1])
            delay = self._delays.get(source or b"", 0.0)
            self._queue(_response(status, body, keep_alive), delay, keep_alive)

    def _queue(self, payload: bytes, delay: float, keep_alive: bool) -> None:
        if not keep_alive:
            self._closing = True
        if delay <= 0 and not self._pending:
            self._write(payload, keep_alive)
            return
        reply = _Reply(keep_alive)
        self._pending.append(reply)
        asyncio.get_running_loop().call_later(delay, self._fill, reply, payload)

    def _fill(self, reply: _Reply, payload: bytes) -> None:
        # Delays may differ per source: send only the in-order prefix that is ready.
        reply.payload = payload
        while self._pending and self._pending[0].payload is not None:
            ready = self._pending.popleft()
            assert ready.payload is not None
            self._write(ready.payload, ready.keep_alive)

    def _write(self, payload: bytes, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(payload)
        if not keep_alive:
            self._transport.close()

    def _reply_now(self, status: int, body: bytes, keep_alive: bool) -> None:
        self._closing = True
        self._write(_response(status, body, keep_alive), keep_alive)


def parse_delays(default_ms: float, spec: str | None) -> dict[bytes, float]:
    delays = {source: default_ms / 1000 for source in _SOURCES}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        if name.strip().encode() not in _SOURCES:
            raise SystemExit(f"--delays: unknown source {name!r} (use a, b, c)")
        delays[name.strip().encode()] = float(value) / 1000
    return delays


async def serve(host: str, port: int, delays: dict[bytes, float]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(delays), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay for every reply")
    parser.add_argument("--delays", help="per source, e.g. a=100,b=200,c=300 (ms)")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, parse_delays(args.delay_ms, args.delays)))


if __name__ == "__main__":
    main()
