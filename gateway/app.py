"""The Quart app: routes, lifecycle and the HTTP response; thin wiring.

A request walks down once: app (a `Door` for the request) -> ingress (route,
checks, context) -> runner (deadline, error -> status) -> engine or fan ->
upstream, and its `Result` (the envelope, built by `result.py`) goes back out
through app. `/ws`, the dashboard's run API and jobs enter at the ingress too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from quart import Quart, Response, has_request_context, has_websocket_context, request, websocket
from quart.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing.exceptions import WebsocketMismatch

from . import (
    dashboard,
    envelope,
    guard,
    health,
    jobs,
    lane,
    logs,
    methods,
    openapi,
    proxies,
    reload,
    runner,
    stream,
)
from .config import STRATEGIES, Config, load_config
from .context import HeaderMap, RequestContext
from .errors import RequestError
from .ingress import HTTP, Door, Ingress, wants_body
from .lifecycle import OnCall
from .origin import OriginPolicy
from .plan import compile_plans
from .result import Result, internal_error, refusal, request_id, strategy_of
from .routing import CodeView, Router, Target
from .runtime import Runtime
from .wrappers import GatewayApp, current_request

log = logging.getLogger("gateway")

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DRAIN_TIMEOUT = 5.0  # seconds an unneeded request body may take to arrive before we answer


class OrjsonProvider(DefaultJSONProvider):
    """Quart's `jsonify` through orjson: several times faster than the stdlib."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return envelope.dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


class Gateway:
    """A configured gateway: its Quart app, its plans, its code-defined endpoints.

    `gw = Gateway("gateway.toml")`, then `@gw.aggregate(route)` for endpoints
    written in Python, and serve `gw.app`. Its parts are plain attributes: `config`
    and `router` (swapped whole by `swap_config` on a reload), `ingress`, `app`
    (`gw.app.gateway is gw`), `stream` (`/ws`), `reloader`, and `runtime` while the
    app serves (`current_runtime()`).
    """

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any] | Config,
                 import_name: str = "gateway") -> None:
        self.config = load_config(config)
        self.router = Router(compile_plans(self.config))
        self.ingress = Ingress(self)
        self.runtime: Runtime | None = None
        self._origins: tuple[object, OriginPolicy] | None = None
        self.app = GatewayApp(self, import_name)
        self.app.json = OrjsonProvider(self.app)
        self.app.config["MAX_CONTENT_LENGTH"] = self.config.gateway.max_request_bytes
        self._wire()
        self.lane.seal()  # what the app holds now is the gateway's own (lane.py)

    # -- public API -------------------------------------------------------------------------

    def aggregate(self, route: str, *, methods: tuple[str, ...] = ("GET",),
                  strategy: str | None = None, deadline: float | None = None
                  ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """Register `async def view(fan, **route_params)` as an aggregate endpoint."""
        if strategy is not None and strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")

        def register(func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"{func.__name__} must be an async function")
            view = CodeView(route, tuple(m.upper() for m in methods), func, strategy, deadline)
            self.router = self.router.with_view(view)
            return func

        return register

    async def run(self, target: Target, ctx: RequestContext,
                  on_call: OnCall | None = None) -> Result:
        """Run one matched endpoint for a prepared request; never raises for call failures."""
        runtime = self.current_runtime()
        result = await runner.run(target, ctx, runtime.upstreams, self.config.gateway, on_call)
        runtime.recent.add(target, ctx, result)  # the dashboard's ring: a few scalars per call
        return result

    def going_away(self) -> None:
        """Shutdown has begun (the worker says so, serving.py): `/ws` sockets close with 1001."""
        self.stream.going_away()

    def swap_config(self, config: Config, router: Router) -> None:
        """Serve `config` from now on (a reload; the runtime has switched its upstreams)."""
        self.config = config
        self.router = router
        self.app.config["MAX_CONTENT_LENGTH"] = config.gateway.max_request_bytes

    def current_runtime(self) -> Runtime:
        """The runtime while the app serves; `RuntimeError` before start or after stop."""
        if self.runtime is None:
            raise RuntimeError("the gateway is not serving (no runtime); start the app first")
        return self.runtime

    # -- Quart wiring -------------------------------------------------------------------------

    def _wire(self) -> None:
        app = self.app

        @app.before_serving
        async def start() -> None:
            logs.install(self.config.gateway.log_format)  # served: one log format, escaped
            runtime = Runtime(self.config)
            await runtime.start()
            self.runtime = runtime  # before the jobs: a job may start at once
            await runtime.open_jobs(*jobs.api.new_store(self))

        @app.after_serving
        async def stop() -> None:
            if self.runtime is not None:
                await self.runtime.close()
                self.runtime = None

        async def healthz() -> Response:
            return _json({"status": "ok"}, 200)

        app.add_url_rule("/healthz", "healthz", healthz, methods=["GET"])
        health.register(self)  # /readyz, /metrics, request metrics
        app.add_url_rule("/", "aggregate_root", self._dispatch, methods=_METHODS,
                         provide_automatic_options=False)
        app.add_url_rule("/<path:_path>", "aggregate", self._dispatch, methods=_METHODS,
                         provide_automatic_options=False)
        app.register_error_handler(HTTPException, self._http_error)
        app.make_default_options_response = self._options  # type: ignore[method-assign]
        app.register_error_handler(Exception, self._internal_error)
        self.stream = stream.register(self)  # /ws, raw ASGI in front of Quart
        dashboard.register(self)
        openapi.register(self)  # /_gateway/openapi.json
        # Aggregate requests Quart's machinery adds nothing to are answered in front of it.
        self.lane = lane.Lane(self, app.asgi_app, cors=bool(self.config.gateway.cors_origins))
        app.asgi_app = self.lane  # type: ignore[method-assign]
        # Ambiguous framing (Content-Length + Transfer-Encoding) is refused before Quart runs.
        app.asgi_app = guard.FramingGuard(  # type: ignore[method-assign]
            app.asgi_app, lambda: self.config.gateway.strategy)
        # Outermost: behind a trusted proxy, scope["client"] is the real client for all below.
        app.asgi_app = proxies.ClientAddress(  # type: ignore[method-assign]
            app.asgi_app, lambda: self.config.limits.trusted_proxies)
        jobs.register(self)
        self.reloader = reload.register(self)  # SIGHUP
        if self.config.gateway.cors_origins:
            app.after_request(self._cors)

    async def _dispatch(self, _path: str = "") -> Response:
        incoming = current_request()
        started = incoming.started  # one clock for meta and the request metrics
        headers = request.headers
        if self.origins.is_preflight(request.method, headers):
            return self._preflight()
        door = Door(HTTP, request.method, request.path, request.args, headers, read=_body,
                    started=started, peer=_peer())
        try:
            target, ctx, body = await self.ingress.admit(door)
        except RequestError as error:
            await _drain()
            if door.target is None and error.status in (404, 405):
                return self._unrouted(started)
            return _respond(self.ingress.refusal(door, error))
        finally:
            if door.target is not None:  # the route template labels the request's metrics
                incoming.target = door.target
        try:  # the door holds the client's concurrency slot until the answer is made
            if not wants_body(target):  # inside: a disconnect while draining frees the slot
                await _drain()
            response: Response | None = None
            if "prefer" in headers:  # `Prefer: respond-async`: 202 now, the work as a job
                response = await jobs.respond_async(self, target, ctx, body)
            if response is None:
                response = _respond(await self.run(target, ctx))
        finally:
            door.close()
        if 200 <= response.status_code < 300:  # `RateLimit` on every 2xx (SPEC 9)
            response.headers.update(door.response_headers)
        return response

    def _error(self, status: int, message: str, headers: HeaderMap,
               started: float) -> Response:
        return _respond(refusal(status, message, request_id=request_id(headers),
                                strategy=strategy_of(headers, self.config.gateway.strategy),
                                started=started))

    def _unrouted(self, started: float) -> Response:
        """No route serves this method here: 404, or 405 with `Allow`, or `OPTIONS`' 204."""
        path, method = request.path, request.method
        allowed, target = self.router.allowed(path)
        if target is not None:
            current_request().target = target  # a 405 counts under its route, not unmatched
        allowed |= methods.builtin_methods(self.app.url_map, path)
        if not allowed:
            return self._error(404, f"no endpoint for {method} {path}", request.headers,
                               started)
        allow = methods.allow_header(allowed)
        if method == "OPTIONS":
            return Response(b"", status=204, headers={"Allow": allow})
        response = self._error(405, f"{method} is not allowed on {path} (allowed: {allow})",
                               request.headers, started)
        response.headers["Allow"] = allow
        return response

    async def _options(self) -> Response:
        """Quart's automatic `OPTIONS` for the gateway's own routes, with their own `Allow`."""
        return self._unrouted(time.perf_counter())

    async def _http_error(self, error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, MethodNotAllowed) and has_request_context():
            return self._unrouted(time.perf_counter())  # TRACE, CONNECT, BREW...
        if isinstance(error, WebsocketMismatch):
            path = websocket.path if has_websocket_context() else ""
            return self._error(404, f"no WebSocket endpoint at {path} (streaming is at /ws)",
                               _incoming_headers(), time.perf_counter())
        if status == 413:
            message = f"request body over {self.config.gateway.max_request_bytes} bytes"
        else:
            message = (error.description or error.name or "error").splitlines()[0]
        return self._error(status, message, _incoming_headers(), time.perf_counter())

    async def _internal_error(self, error: Exception) -> Response:
        answer = internal_error(_incoming_headers(), self.config.gateway.strategy)
        log.error("unhandled error (request id %s)", answer.headers["X-Request-ID"],
                  exc_info=error)
        return _respond(answer)

    def _preflight(self) -> Response:
        return Response(b"", status=204, headers=self.origins.preflight_headers(request.headers))

    async def _cors(self, response: Response) -> Response:
        cors = self.origins.reply_headers(request.headers)
        if cors:
            response.headers.update(cors)
            response.vary.add("Origin")
        return response

    @property
    def origins(self) -> OriginPolicy:
        """The origin policy of the current config (HTTP's CORS and `/ws` handshakes)."""
        origins = self.config.gateway.cors_origins
        if self._origins is None or self._origins[0] is not origins:
            self._origins = (origins, OriginPolicy(origins))
        return self._origins[1]


def create_app(config: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Quart:
    """The ASGI app for a config path, a dict of the TOML's shape, or a `Config`."""
    return Gateway(config).app


def _incoming_headers() -> HeaderMap:
    """The headers of what is being handled: error handlers serve HTTP and WebSocket alike."""
    if has_request_context():
        return request.headers
    return websocket.headers if has_websocket_context() else {}


async def _body(_target: Target) -> bytes:
    """The request's body, read only once routing says the endpoint wants one."""
    data = await request.get_data(cache=False, as_text=False)
    return data if isinstance(data, bytes) else data.encode()


async def _drain() -> None:
    """Read what is left of a body the answer does not need, before answering.

    A server that answers and closes with request bytes still unread resets the connection,
    and the reset can overtake the answer: a proxy still sending the body (nginx) then
    reports a 502 instead of, say, the 401 (tests/test_deploy.py saw it). At most
    `max_request_bytes` are read (more is a 413, as it would be), for at most DRAIN_TIMEOUT.
    """
    if request.content_length is None and "transfer-encoding" not in request.headers:
        return
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await request.get_data(cache=False, as_text=False)
    except (HTTPException, TimeoutError):  # too big or too slow: answer now, as before
        return


def _peer() -> str | None:
    """The client's address: the ASGI scope's, which `proxies.ClientAddress` made the real
    client behind a trusted proxy (Quart sets no `remote_addr` of its own)."""
    client = request.scope.get("client")
    return str(client[0]) if client else None


def _respond(result: Result) -> Response:
    return Response(envelope.dumps(result.body), status=result.status, headers=result.headers,
                    content_type="application/json")


def _json(obj: Any, status: int) -> Response:
    return Response(envelope.dumps(obj), status=status, content_type="application/json")
