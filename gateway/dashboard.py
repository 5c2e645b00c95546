"""`/_gateway/`: the dashboard page (package data, no build step) and the JSON API it reads.

    GET  /_gateway/                 the page (index.html, dashboard.js, style.css)
    GET  /_gateway/api/overview     gateway settings, endpoints with their calls, upstreams
    GET  /_gateway/api/upstreams    upstreams with their breaker state
    GET  /_gateway/api/recent       the recent-request ring (`?after=SEQ&limit=N`)
    POST /_gateway/api/run          run one endpoint: {"path", "method", "strategy", "body",
                                    "cache"}; `"cache": false` bypasses the reply cache

`[gateway] dashboard = false` registers none of it, so every path answers 404.
The API shows upstream URLs and runs endpoints, so `gateway.dashboard_auth`
guards every `api/` path (the page's own files hold no data): `"off"` (anyone),
`"auth"` (a token or API key that `[auth]` accepts), `"key"` (`X-Dashboard-Key`
equal to `gateway.dashboard_key`, compared in constant time). Refused: 401 with
`dashboard_auth` in the JSON, which the page reads to ask for the credential.
A run then meets the endpoint's own checks as the page's caller, like any request.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from quart import Response, redirect, request
from werkzeug.datastructures import MultiDict

from . import envelope
from .auth.authenticator import _AuthFailure
from .auth.check import KEYS_RETRY_AFTER, challenge
from .auth.identity import ANONYMOUS
from .auth.jwks import _KeysUnavailable
from .config import STRATEGIES, route_params
from .context import HeaderMap
from .errors import RequestError
from .ingress import RUN, Door
from .plan import CallPlan, Plan
from .recent import make_entry
from .routing import CodeView, Target
from .template import UrlTemplate

if TYPE_CHECKING:
    from .app import Gateway
    from .runtime import Runtime

PREFIX = "/_gateway"
MAX_RECENT = 200
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Everything the page loads is its own; data from requests is only ever set as text.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# Taken from the page's own request, never forwarded as given.
_RUN_DROP = frozenset({"x-gateway-strategy", "x-request-id", "content-length", "content-type",
                       "x-dashboard-key"})
KEY_HEADER = "X-Dashboard-Key"
_REFUSED_STATUSES = (401, 403, 429, 503)  # the ingress's checks: passed on as they are


def register(gw: Gateway) -> None:
    """Add the page and its API to `gw.app`, unless the config turns the dashboard off."""
    if not gw.config.gateway.dashboard:
        return
    app = gw.app
    loaded: dict[str, bytes] = {}  # read on first use, off the event loop

    def asset(name: str) -> Callable[[], Any]:
        ctype = _ASSETS[name]

        async def view() -> Response:
            body = loaded.get(name)
            if body is None:
                body = loaded[name] = await asyncio.to_thread(_read_asset, name)
            return Response(body, content_type=ctype, headers=_PAGE_HEADERS)

        return view

    async def bare() -> Any:
        return redirect(PREFIX + "/", 308)

    async def overview() -> Response:
        return _json(overview_json(gw))

    async def upstreams() -> Response:
        return _json({"upstreams": upstreams_json(gw)})

    async def recent() -> Response:
        after = _int_arg("after", 0)
        limit = min(_int_arg("limit", MAX_RECENT), MAX_RECENT)
        ring = gw.current_runtime().recent
        # Each worker process has its own ring; `process` lets the page notice a switch.
        return _json({"entries": [e.to_json() for e in ring.since(after, limit)],
                      "last": ring.last_seq, "process": os.getpid()})

    async def run() -> Response:
        if request.mimetype != "application/json":  # also keeps cross-site forms out
            return _json({"error": "send a JSON object with Content-Type: application/json"},
                         415)
        message = await request.get_json(silent=True)
        try:
            client = request.scope.get("client")
            answer, fields = await run_json(gw, message, request.headers,
                                            peer=str(client[0]) if client else None)
            response = _json(answer)
            response.headers.update(fields)  # `RateLimit`
            return response
        except RequestError as error:
            status = error.status if error.status in _REFUSED_STATUSES else 400
            response = _json({"error": str(error), "status": error.status}, status)
            response.headers.update(getattr(error, "headers", {}))  # WWW-Authenticate...
            return response

    def guarded(view: Callable[[], Awaitable[Response]]) -> Callable[[], Awaitable[Response]]:
        async def check_then_view() -> Response:
            return await _refusal(gw) or await view()

        check_then_view.__name__ = view.__name__
        return check_then_view

    app.add_url_rule(PREFIX, "gateway_page_bare", bare, methods=["GET"])
    app.add_url_rule(PREFIX + "/", "gateway_page", asset("index.html"), methods=["GET"])
    for name in ("dashboard.js", "style.css"):
        app.add_url_rule(f"{PREFIX}/{name}", f"gateway_page_{name}", asset(name), methods=["GET"])
    app.add_url_rule(PREFIX + "/api/overview", "gateway_api_overview", guarded(overview),
                     methods=["GET"])
    app.add_url_rule(PREFIX + "/api/upstreams", "gateway_api_upstreams", guarded(upstreams),
                     methods=["GET"])
    app.add_url_rule(PREFIX + "/api/recent", "gateway_api_recent", guarded(recent), methods=["GET"])
    app.add_url_rule(PREFIX + "/api/run", "gateway_api_run", guarded(run), methods=["POST"])


async def _refusal(gw: Gateway) -> Response | None:
    """None if `gateway.dashboard_auth` lets this request use the API, else its 401/503."""
    settings = gw.config.gateway
    mode = settings.dashboard_auth
    if mode == "off":
        return None
    metrics = gw.current_runtime().metrics
    if mode == "key":
        given = request.headers.get(KEY_HEADER)
        key = (settings.dashboard_key or "").encode()
        if given is not None and key and hmac.compare_digest(
                given.encode("utf-8", "surrogateescape"), key):
            return None
        metrics.auth_failure("missing" if given is None else "invalid_api_key")
        return _denied(f"the dashboard API needs its key in {KEY_HEADER}", mode, challenge())
    authenticator = gw.current_runtime().authenticator
    try:
        identity = ANONYMOUS if authenticator is None else await authenticator.identify(
            request.headers)
    except _AuthFailure as failure:
        metrics.auth_failure(failure.metric)
        value = challenge("invalid_token", failure.reason) if failure.token else challenge()
        return _denied(failure.reason, mode, value)
    except _KeysUnavailable as error:
        metrics.auth_failure("keys_unavailable")
        response = _json({"error": str(error)}, 503)
        response.headers["Retry-After"] = str(KEYS_RETRY_AFTER)
        return response
    if identity.kind == "anonymous":
        metrics.auth_failure("missing")
        kinds = authenticator.kinds() if authenticator is not None else "credentials"
        return _denied(f"the dashboard API needs {kinds}", mode, challenge())
    return None


def _denied(message: str, mode: str, www_authenticate: str) -> Response:
    response = _json({"error": message, "dashboard_auth": mode}, 401)
    response.headers["WWW-Authenticate"] = www_authenticate
    return response


def overview_json(gw: Gateway) -> dict[str, Any]:
    settings = gw.config.gateway
    return {
        "gateway": {"strategy": settings.strategy, "timeout": settings.timeout,
                    "deadline": settings.deadline, "recent_size": MAX_RECENT},
        "endpoints": [endpoint_json(t, settings.strategy) for t in gw.router.targets],
        "upstreams": upstreams_json(gw),
    }


def endpoint_json(target: Target, default_strategy: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "route": target.route,
        "params": list(route_params(target.route)),
        "strategy": target.strategy or default_strategy,
    }
    if isinstance(target, CodeView):
        out.update(kind="code", method=target.methods[0], methods=list(target.methods),
                   view=target.func.__qualname__, calls=[], needs_body=True)
        return out
    out.update(kind="config", method=target.method, methods=[target.method],
               calls=[_call_json(c) for c in target.calls], needs_body=target.needs_body,
               combine=_hook_name(target))
    return out


def upstreams_json(gw: Gateway) -> list[dict[str, Any]]:
    runtime = gw.runtime
    out = []
    for name, cfg in gw.config.upstreams.items():
        out.append({
            "name": name,
            "url": cfg.url,
            "timeout": cfg.timeout,
            "retries": cfg.retries,
            "max_connections": cfg.max_connections,
            "cache_ttl": cfg.cache_ttl,
            "batch": cfg.batch is not None,
            "breaker": None if cfg.breaker is None else {"failures": cfg.breaker.failures,
                                                         "reset": cfg.breaker.reset},
            "state": breaker_state(runtime, name),
        })
    return out


def breaker_state(runtime: Runtime | None, name: str) -> str:
    """`closed`, `open` or `half-open`; an upstream without a breaker is always closed."""
    upstream = runtime.upstreams.get(name) if runtime is not None else None
    breaker = upstream.breaker if upstream is not None else None
    return "closed" if breaker is None else breaker.state.replace("_", "-")


async def run_json(gw: Gateway, message: Any, incoming: HeaderMap,
                   peer: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Run one endpoint as the page asks: the answer (the entry to draw and the body), and
    the limits' `RateLimit` fields its 200 carries (SPEC 9: every 2xx).

    Compare sends `"cache": false` for both strategies: with the cache on, whichever
    run came second would be served from the replies the first one stored.
    """
    if not isinstance(message, dict):
        raise RequestError("send a JSON object like {\"path\": \"/route\"}")
    path, method = message.get("path"), message.get("method", "GET")
    strategy, body = message.get("strategy"), message.get("body")
    cache = message.get("cache", True)
    if not isinstance(path, str) or not path.startswith("/"):
        raise RequestError("'path' must start with '/'")
    if not isinstance(method, str):
        raise RequestError("'method' must be a string")
    if not isinstance(cache, bool):
        raise RequestError("'cache' must be true or false")
    headers = {k.lower(): v for k, v in incoming.items() if k.lower() not in _RUN_DROP}
    if strategy is not None:
        if strategy not in STRATEGIES:
            raise RequestError("'strategy' must be 'parallel' or 'sequential'")
        headers["x-gateway-strategy"] = strategy
    url = urlsplit(path)
    route_path, method = unquote(url.path), method.upper()
    door = Door(RUN, method, route_path, MultiDict(parse_qsl(url.query, keep_blank_values=True)),
                headers, body=b"" if body is None else envelope.dumps(body), peer=peer)
    target, ctx, _ = await gw.ingress.admit(door)
    ctx.cache = cache
    try:
        result = await gw.run(target, ctx)
    finally:
        door.close()  # the client's concurrency slot
    entry = make_entry(0, target, ctx, result)
    return ({"status": result.status, "entry": entry.to_json(), "body": result.body,
             "cache": cache}, door.response_headers)


def _read_asset(name: str) -> bytes:
    return resources.files("gateway").joinpath("page", name).read_bytes()


def _call_json(call: CallPlan) -> dict[str, Any]:
    if call.batch_key is not None:
        path = "batch " + _template_text(call.batch_key)
    else:
        assert call.path is not None
        path = _template_text(call.path)
        if call.query:
            path += "?" + "&".join(f"{k}={_template_text(v)}" for k, v in call.query)
    return {"name": call.name, "upstream": call.upstream, "method": call.method, "path": path,
            "optional": call.optional, "deps": list(call.deps)}


def _template_text(template: UrlTemplate) -> str:
    return "".join(p if isinstance(p, str) else p.text for p in template.parts)


def _hook_name(plan: Plan) -> str | None:
    hook = plan.combine
    if hook is None:
        return None
    return f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', '?')}"


def _int_arg(name: str, default: int) -> int:
    try:
        return max(0, int(request.args.get(name, default)))
    except ValueError:
        return default


def _json(obj: Any, status: int = 200) -> Response:
    return Response(envelope.dumps(obj), status=status, content_type="application/json",
                    headers={"Cache-Control": "no-store"})
