"""`/ws`: aggregate requests over one WebSocket, each call reported as it finishes.

The client sends `{"id": "r1", "path": "/dashboard/7"}` (optional `method`,
`headers`, `strategy`, `body`); the server answers a `call` message per call
as it finishes, then one `result`. Requests go through the same router and
`Gateway.context` as HTTP, so the 400/404 rules are identical.

Why raw ASGI and not Quart's `websocket`: Quart's connection runs a reader task
that copies every frame into an unbounded `asyncio.Queue`, whatever the
handler does, which defeats Hypercorn's own bound (`max_app_queue_size`): a
client that sends without reading our replies grew a worker by ~850 MB in
37 s. Here the connection's read loop is the only caller of ASGI `receive`
and calls it only when it is ready for the next message, so there is no
queue of ours at all: when the loop waits (on a reply the client does not
read, or on a full set of requests in flight), Hypercorn's queue fills, it
stops reading the socket and TCP slows the client down.

Outgoing, a request keeps its in-flight slot (`[websocket] max_in_flight`)
until its result is on the wire, and every send waits for the socket to take
it, so a client that stops reading stops being served instead of filling
memory. Each request is a task owned by its connection: when the socket
closes, every request is cancelled, and with it its upstream calls.

At shutdown the worker calls `Stream.going_away()` before Hypercorn starts
waiting for connections (serving.py): each socket stops reading, gives its
requests in flight up to `SHUTDOWN_GRACE` to finish and closes with 1001.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope, WebsocketScope
from werkzeug.datastructures import MultiDict

from . import envelope, guard
from .auth.identity import ANONYMOUS, Identity, expires_at
from .config import HEADER_NAME_RE, STRATEGIES, WebsocketSettings
from .context import IDENTITY
from .envelope import CallRecord
from .errors import RequestError
from .ingress import HANDSHAKE, SOCKET, Door

if TYPE_CHECKING:
    from .app import Gateway
    from .context import RequestContext
    from .result import Result
    from .routing import Target

log = logging.getLogger("gateway.stream")

PATH = "/ws"
SECONDS = 1.0
MAX_ID_CHARS = 128
# At shutdown, how long requests in flight may still finish before their socket closes;
# well inside Hypercorn's graceful_timeout (10 s in hypercorn.toml), which cancels the rest.
SHUTDOWN_GRACE = 3 * SECONDS
# Visible ASCII, space and tab: h11 and httpx refuse anything else in a header value.
_HEADER_VALUE_RE = re.compile(r"[\t\x20-\x7e]*\Z")
_CREDENTIALS = ("authorization", "x-api-key")  # the handshake's only, with [auth] on


class _ProtocolError(Exception):
    """A client message we answer with an `error` message (the socket stays open)."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class Stream:
    """ASGI middleware serving `/ws` for one gateway; everything else goes to `app`."""

    def __init__(self, gw: Gateway, app: Any) -> None:
        self.gw = gw
        self.app = app
        self.connections: set[_Connection] = set()  # one per open socket, for going_away
        self.leaving = False

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] != "websocket" or _path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: WebsocketScope, receive: ASGIReceiveCallable,
                     send: ASGISendCallable) -> None:
        headers = _handshake_headers(scope)
        client = scope.get("client")
        peer = str(client[0]) if client else None  # the real client (proxies.py)
        door = Door(HANDSHAKE, "GET", _path(scope), {}, headers, peer=peer)
        try:
            await self.gw.ingress.handshake(door)
        except RequestError as error:  # e.g. a browser origin outside cors_origins: 403
            await _refuse(scope, send, self.gw.ingress.refusal(door, error))
            return
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        connection = _Connection(self.gw, self.gw.config.websocket, headers, receive, send)
        connection.peer = peer
        connection.identity = door.extras.get(IDENTITY, ANONYMOUS)  # the socket's, for good
        if self.leaving:  # accepted in the instant the listener was closing
            await connection.close(1001, "server shutting down")
            return
        self.connections.add(connection)
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)

    def going_away(self) -> None:
        """Shutdown begins: every socket finishes its requests and closes with 1001."""
        self.leaving = True
        for connection in self.connections:
            connection.leave()


class _Connection:
    def __init__(self, gw: Gateway, limits: WebsocketSettings, headers: dict[str, str],
                 receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self.gw = gw
        self.limits = limits  # as when the socket opened: a reload applies to new sockets
        self.headers = headers
        self.peer: str | None = None  # the client's address, for the limits' key = "ip"
        self.identity: Identity = ANONYMOUS  # who the handshake authenticated
        self.expired = False  # the identity's token expired: the socket closes with 1008
        self.receive = receive
        self.send = send
        self.in_flight: dict[Any, asyncio.Task[None]] = {}
        self.send_lock = asyncio.Lock()
        self.closed = False
        self.leaving = asyncio.Event()
        self._waiting: asyncio.Timeout | None = None  # the read loop's wait, while it waits

    async def serve(self) -> None:
        closing: tuple[int, str] | None = None
        ends = expires_at(self.identity, self.gw.config.auth.leeway)
        timer = None if ends is None else asyncio.get_running_loop().call_later(
            max(0.0, ends - time.time()), self.expire)
        async with asyncio.TaskGroup() as tg:
            try:
                closing = await self._read(tg)
                if self.leaving.is_set() and self.in_flight and not self.expired:
                    await asyncio.wait(list(self.in_flight.values()), timeout=SHUTDOWN_GRACE)
            finally:  # the socket is going away: nothing of it may keep running
                if timer is not None:
                    timer.cancel()
                for task in self.in_flight.values():
                    task.cancel()
        if closing is not None:  # after every request is done: nothing sends after a close
            await self.close(*closing)

    def leave(self) -> None:
        self.leaving.set()
        self._wake()

    def expire(self) -> None:
        """The socket's token expired: its requests are cancelled, it closes with 1008."""
        self.expired = True
        self._wake()

    def _wake(self) -> None:
        if self._waiting is not None:  # wake the read loop now
            self._waiting.reschedule(asyncio.get_running_loop().time())

    async def close(self, code: int, reason: str) -> None:
        async with self.send_lock:
            if not self.closed:
                self.closed = True
                await self.send({"type": "websocket.close", "code": code, "reason": reason})

    async def _read(self, tg: asyncio.TaskGroup) -> tuple[int, str] | None:
        """Serve messages until the socket should close: its close code, or None if gone."""
        while not self.leaving.is_set() and not self.expired:
            try:
                async with asyncio.timeout(self.limits.idle_timeout) as self._waiting:
                    event = await self.receive()
            except TimeoutError:
                if self.leaving.is_set() or self.expired:
                    break
                if self.in_flight:
                    continue
                return 1001, "idle timeout"
            finally:
                self._waiting = None
            if event["type"] == "websocket.disconnect":
                return None
            if event["type"] != "websocket.receive":  # websocket.connect
                continue
            raw: str | bytes | None = event.get("text")
            if raw is None:
                raw = event.get("bytes") or b""
            size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode())
            if size > self.limits.max_message_bytes:
                return 1009, f"message over {self.limits.max_message_bytes} bytes"
            try:
                rid, coro, door = await self._start(raw)
            except _ProtocolError as error:
                await self._send({"type": "error", "id": error.request_id, "error": str(error)})
                continue
            task = tg.create_task(coro)
            self.in_flight[rid] = task
            task.add_done_callback(partial(self._done, rid))
            # Its concurrency slot is held until the result is out, or the task cancelled
            # (even before it started, when its finally would never run).
            task.add_done_callback(partial(_close_door, door))
        if self.expired:
            return 1008, "token expired"
        return 1001, "server shutting down"

    def _done(self, rid: Any, task: asyncio.Task[None] | None) -> None:
        """Free `rid`'s slot, unless a newer request already took that id."""
        if self.in_flight.get(rid) is (task or asyncio.current_task()):
            del self.in_flight[rid]

    async def _start(self, raw: str | bytes) -> tuple[Any, Coroutine[Any, Any, None], Door]:
        """Check one message and prepare its request; raises `_ProtocolError` if unusable."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _ProtocolError("message is not valid JSON") from None
        if not isinstance(message, dict):
            raise _ProtocolError("message must be a JSON object")
        rid = message.get("id")
        if rid is None or isinstance(rid, bool) or not isinstance(rid, str | int):
            raise _ProtocolError("message needs an 'id' (a string or an integer)")
        if isinstance(rid, str) and not 0 < len(rid) <= MAX_ID_CHARS:
            raise _ProtocolError(f"'id' must be 1 to {MAX_ID_CHARS} characters")
        if rid in self.in_flight:
            raise _ProtocolError(f"a request with id {rid!r} is already in flight", rid)
        if len(self.in_flight) >= self.limits.max_in_flight:
            raise _ProtocolError(
                f"too many requests in flight on this socket (max {self.limits.max_in_flight})",
                rid)
        try:
            target, ctx, door = await self._prepare(message)
        except RequestError as error:
            raise _ProtocolError(str(error), rid) from None
        return rid, self._request(rid, target, ctx, door), door

    async def _prepare(self, message: dict[str, Any]) -> tuple[Target, RequestContext, Door]:
        rid = message["id"]
        path = message.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise _ProtocolError("message needs a 'path' starting with '/'", rid)
        method = message.get("method", "GET")
        if not isinstance(method, str):
            raise _ProtocolError("'method' must be a string", rid)
        headers = self._headers(message.get("headers"), rid)
        strategy = message.get("strategy")
        if strategy is not None:
            if strategy not in STRATEGIES:
                raise _ProtocolError("'strategy' must be 'parallel' or 'sequential'", rid)
            headers["x-gateway-strategy"] = strategy
        body = (b"" if message.get("body") is None
                else envelope.dumps(guard.bounded_body(message["body"])))
        # Not urlsplit: "//host/x" would lose "host" as a netloc and "//[x" raises ValueError.
        raw_path, _, raw_query = path.partition("?")
        query = MultiDict(parse_qsl(raw_query.partition("#")[0], keep_blank_values=True))
        door = Door(SOCKET, method.upper(), unquote(raw_path), query, headers, body=body,
                    peer=self.peer, extras={IDENTITY: self.identity})
        target, ctx, _ = await self.gw.ingress.admit(door)
        return target, ctx, door

    @property
    def _key_header(self) -> str | None:
        """`limits.key = "header.NAME"`'s NAME (lower-case): messages may not choose it."""
        key = self.gw.config.limits.key
        return key[len("header."):].lower() if key.startswith("header.") else None

    def _headers(self, given: Any, rid: Any) -> dict[str, str]:
        """The handshake's headers, then the message's (lower-case names, strings only)."""
        headers = {k: v for k, v in self.headers.items() if not k.startswith("sec-websocket-")}
        headers.pop("x-gateway-strategy", None)  # a per-message choice, never per socket
        headers.pop("x-request-id", None)
        if given is None:
            return headers
        if not isinstance(given, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in given.items()):
            raise _ProtocolError("'headers' must be an object of string values", rid)
        for name, value in given.items():
            if name.lower() in _CREDENTIALS and self.gw.config.auth.enabled:
                raise _ProtocolError(f"'headers' may not carry {name}: the socket's handshake "
                                    "authenticates every message on it", rid)
            if name.lower() == self._key_header:  # the client key is the handshake's too
                raise _ProtocolError(f"'headers' may not carry {name}: the socket's handshake "
                                    "names the client the limits count", rid)
            # Checked here, not by the HTTP client deep in a call: CR/LF would split a header.
            if not HEADER_NAME_RE.match(name):
                raise _ProtocolError("'headers' names must be HTTP tokens "
                                    "(letters, digits and !#$%&'*+-.^_`|~)", rid)
            if not _HEADER_VALUE_RE.match(value):
                raise _ProtocolError(f"'headers' value of {name!r} must be printable ASCII "
                                    "(no CR, LF, NUL or other control characters)", rid)
            headers[name.lower()] = value
        return headers

    async def _request(self, rid: Any, target: Target, ctx: RequestContext,
                       door: Door) -> None:
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
            door.close()  # the work is done: the client's concurrency slot, before it hears
            pending.put_nowait(envelope.dumps(message))
            pending.put_nowait(None)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(run())
            while (item := await pending.get()) is not None:
                await self._send_raw(item)
            self._done(rid, None)  # the result is out: the client may reuse the id at once

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_raw(envelope.dumps(message))

    async def _send_raw(self, data: bytes) -> None:
        async with self.send_lock:  # waits while the client does not read: backpressure
            if not self.closed:
                await self.send({"type": "websocket.send", "bytes": None, "text": data.decode()})


def _close_door(door: Door, _task: asyncio.Task[None]) -> None:
    door.close()


def _path(scope: WebsocketScope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _handshake_headers(scope: WebsocketScope) -> dict[str, str]:
    """Lower-case names; a repeated header's values joined with ", " (RFC 9110 5.3)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def _refuse(scope: WebsocketScope, send: ASGISendCallable, refused: Result) -> None:
    """Refuse a handshake with the envelope (or a bare close where that is unsupported)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008,
                    "reason": refused.body.get("error", "")})
        return
    body = envelope.dumps(refused.body)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in refused.headers.items()]
    await send({"type": "websocket.http.response.start", "status": refused.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


def register(gw: Gateway) -> Stream:
    """Serve `/ws` for `gw`, in front of its Quart app."""
    stream = Stream(gw, gw.app.asgi_app)
    gw.app.asgi_app = stream  # type: ignore[method-assign]
    return stream
