"""`/ws`: aggregate requests over one WebSocket, each call reported as it finishes.

The client sends `{"id": "r1", "path": "/dashboard/7"}` (optional `method`,
`headers`, `strategy`, `body`); the server answers a `call` message per call
as it finishes, then one `result`. Requests go through the same router and
`Gateway.context` as HTTP, so the 400/404 rules are identical.

Each request is a task owned by its connection: when the socket closes,
Quart cancels the handler, the handler's task group cancels every request,
and that cancels their upstream calls. Messages of one request are queued
only for that request (one per call, so bounded) and sent by its own task;
a request keeps its in-flight slot until its result is on the wire, so a
client that stops reading stops being served instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from quart import Response, websocket
from werkzeug.datastructures import MultiDict

from . import envelope, guard
from .config import STRATEGIES
from .context import HeaderMap
from .envelope import CallRecord
from .errors import RequestError

if TYPE_CHECKING:
    from quart.wrappers import Websocket

    from .app import Gateway
    from .context import RequestContext
    from .routing import Target

log = logging.getLogger("gateway.stream")

KIB = 1024
SECONDS = 1.0
EXTENSION_KEY = "gateway.stream"


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds for one `/ws` connection; Hypercorn's `websocket_max_message_size` is outside."""

    max_message_bytes: int = 64 * KIB  # a larger message closes the socket with 1009
    max_in_flight: int = 16  # requests running at once on one socket; more get an error
    idle_timeout: float = 60 * SECONDS  # closed (1001) after this long with nothing to do
    max_id_chars: int = 128


class ProtocolError(Exception):
    """A client message we answer with an `error` message (the socket stays open)."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class Stream:
    """The `/ws` endpoint of one gateway; its limits can be replaced before serving."""

    def __init__(self, gw: Gateway, limits: StreamLimits | None = None) -> None:
        self.gw = gw
        self.limits = limits or StreamLimits()

    async def __call__(self) -> Response | None:
        origin = websocket.headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, websocket.headers):
            return Response("origin not allowed", status=403, content_type="text/plain")
        await websocket.accept()
        # `websocket` is a context-local proxy; the connection keeps the object itself.
        await _Connection(self, websocket._get_current_object()).serve()  # type: ignore[attr-defined]
        return None

    def _origin_allowed(self, origin: str, headers: HeaderMap) -> bool:
        allowed = self.gw.config.gateway.cors_origins
        if not allowed or "*" in allowed or origin in allowed:
            return True
        host = headers.get("host")  # same-origin pages are always allowed
        return host is not None and urlsplit(origin).netloc == host


class _Connection:
    def __init__(self, stream: Stream, ws: Websocket) -> None:
        self.gw = stream.gw
        self.limits = stream.limits
        self.ws = ws
        self.in_flight: dict[Any, asyncio.Task[None]] = {}
        self.send_lock = asyncio.Lock()

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            try:
                await self._read(tg)
            finally:  # the socket is going away: nothing of it may keep running
                for task in self.in_flight.values():
                    task.cancel()

    async def _read(self, tg: asyncio.TaskGroup) -> None:
        while True:
            try:
                async with asyncio.timeout(self.limits.idle_timeout):
                    raw = await self.ws.receive()
            except TimeoutError:
                if self.in_flight:
                    continue
                await self.ws.close(1001, "idle timeout")
                return
            size = len(raw.encode() if isinstance(raw, str) else raw)
            if size > self.limits.max_message_bytes:
                await self.ws.close(1009, f"message over {self.limits.max_message_bytes} bytes")
                return
            try:
                rid, coro = self._start(raw)
            except ProtocolError as error:
                await self._send({"type": "error", "id": error.request_id, "error": str(error)})
                continue
            task = tg.create_task(coro)
            self.in_flight[rid] = task
            task.add_done_callback(partial(self._done, rid))

    def _done(self, rid: Any, _task: asyncio.Task[None]) -> None:
        self.in_flight.pop(rid, None)

    def _start(self, raw: str | bytes) -> tuple[Any, Coroutine[Any, Any, None]]:
        """Check one message and prepare its request; raises `ProtocolError` if unusable."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProtocolError("message is not valid JSON") from None
        if not isinstance(message, dict):
            raise ProtocolError("message must be a JSON object")
        rid = message.get("id")
        if rid is None or isinstance(rid, bool) or not isinstance(rid, str | int):
            raise ProtocolError("message needs an 'id' (a string or an integer)")
        if isinstance(rid, str) and not 0 < len(rid) <= self.limits.max_id_chars:
            raise ProtocolError(f"'id' must be 1 to {self.limits.max_id_chars} characters")
        if rid in self.in_flight:
            raise ProtocolError(f"a request with id {rid!r} is already in flight", rid)
        if len(self.in_flight) >= self.limits.max_in_flight:
            raise ProtocolError(
                f"too many requests in flight on this socket (max {self.limits.max_in_flight})",
                rid)
        try:
            target, ctx = self._prepare(message)
        except RequestError as error:
            raise ProtocolError(str(error), rid) from None
        return rid, self._request(rid, target, ctx)

    def _prepare(self, message: dict[str, Any]) -> tuple[Target, RequestContext]:
        rid = message["id"]
        path = message.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ProtocolError("message needs a 'path' starting with '/'", rid)
        method = message.get("method", "GET")
        if not isinstance(method, str):
            raise ProtocolError("'method' must be a string", rid)
        headers = self._headers(message.get("headers"), rid)
        strategy = message.get("strategy")
        if strategy is not None:
            if strategy not in STRATEGIES:
                raise ProtocolError("'strategy' must be 'parallel' or 'sequential'", rid)
            headers["x-gateway-strategy"] = strategy
        body = (b"" if message.get("body") is None
                else envelope.dumps(guard.bounded_body(message["body"])))
        url = urlsplit(path)
        query = MultiDict(parse_qsl(url.query, keep_blank_values=True))
        target, params = self.gw.router.match(unquote(url.path), method.upper())
        ctx = self.gw.context(target, params, method=method.upper(), path=unquote(url.path),
                              query=query, headers=headers, body=body)
        return target, ctx

    def _headers(self, given: Any, rid: Any) -> dict[str, str]:
        """The handshake's headers, then the message's (lower-case names, strings only)."""
        headers = {k.lower(): v for k, v in self.ws.headers.items()
                   if not k.lower().startswith("sec-websocket-")}
        headers.pop("x-gateway-strategy", None)  # a per-message choice, never per socket
        headers.pop("x-request-id", None)
        if given is None:
            return headers
        if not isinstance(given, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise ProtocolError("'headers' must be an object of string values", rid)
        headers.update((k.lower(), v) for k, v in given.items())
        return headers

    async def _request(self, rid: Any, target: Target, ctx: RequestContext) -> None:
        pending: asyncio.Queue[bytes | None] = asyncio.Queue()  # one per call, then the result

        def on_call(record: CallRecord, data: Any) -> None:
            # Serialized now: a `combine` hook may change `data` after this call.
            message = {"id": rid, "type": "call", "name": record.name, "status": record.status,
                       "ok": record.ok, "elapsed_ms": round(record.elapsed_ms, 2),
                       "start_ms": round(record.start_ms, 2), "data": data}
            if record.error is not None:
                message["error"] = record.error
            if record.skipped:
                message["skipped"] = True
            pending.put_nowait(envelope.dumps(message))

        async def run() -> None:
            try:
                result = await self.gw.run(target, ctx, on_call)
                message = {"id": rid, "type": "result", "status": result.status,
                           "body": result.body}
            except Exception:
                log.exception("websocket request failed (request id %s)", ctx.request_id)
                message = {"type": "error", "id": rid,
                           "error": f"internal error (request id {ctx.request_id})"}
            pending.put_nowait(envelope.dumps(message))
            pending.put_nowait(None)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(run())
            while (item := await pending.get()) is not None:
                await self._send_raw(item)

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_raw(envelope.dumps(message))

    async def _send_raw(self, data: bytes) -> None:
        async with self.send_lock:
            await self.ws.send(data.decode())


def register(gw: Gateway, limits: StreamLimits | None = None) -> Stream:
    """Serve `/ws` for `gw`; the `Stream` is kept in `app.extensions` for tests and tuning."""
    stream = Stream(gw, limits)
    gw.app.extensions[EXTENSION_KEY] = stream

    async def ws_view() -> Response | None:  # Quart wants a coroutine function, not an object
        return await stream()

    gw.app.add_websocket("/ws", "gateway_ws", ws_view)
    return stream
