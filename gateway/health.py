"""`/readyz` and `/metrics`, and the incoming-request metrics; `register(gw)` wires them.

An upstream is *required* when some config endpoint has a non-optional call to it; the
gateway is ready when it is serving and no required upstream's breaker is open (a
half-open breaker is ready: its trial call is how it closes again), and, with
`auth.jwks_url`, the identity provider's keys were fetched once. Code-defined views
say per call what is optional, so their upstreams do not count as required.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from quart import Response, request

from .breaker import OPEN
from .envelope import dumps
from .jobs import publish_counts
from .logs import ROUTE_SCOPE_KEY
from .metrics import CONTENT_TYPE, UNMATCHED
from .wrappers import GatewayRequest, current_request

if TYPE_CHECKING:
    from .app import Gateway
    from .runtime import Runtime

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_AGGREGATE_ENDPOINTS = frozenset({"aggregate", "aggregate_root"})


def readiness(runtime: Runtime | None) -> tuple[bool, dict[str, Any]]:
    """Whether to take traffic, and each upstream's breaker state for the body."""
    if runtime is None:
        return False, {"ready": False, "reason": "not serving", "upstreams": {}}
    ready = True
    upstreams: dict[str, Any] = {}
    for name, upstream in runtime.upstreams.items():
        breaker = upstream.breaker
        required = name in runtime.required
        entry: dict[str, Any] = {"required": required, "breaker": breaker is not None,
                                 "state": "closed" if breaker is None else breaker.state}
        if breaker is not None:
            entry["failures"] = breaker.failures
            if entry["state"] == OPEN:
                entry["retry_after"] = round(breaker.retry_after(), 2)
                entry["opened_by"] = list(breaker.opened_by)  # whose failures: breaker.py
                ready = ready and not required
        upstreams[name] = entry
    body: dict[str, Any] = {"ready": ready, "upstreams": upstreams}
    jwks = runtime.jwks
    if jwks is not None:  # the identity provider's keys: endpoints that need them 503 without
        body["auth"] = {"jwks_url": jwks.url, "keys_loaded": jwks.loaded,
                        "problem": jwks.problem}
        if not jwks.loaded:
            ready = body["ready"] = False
            body["reason"] = f"identity provider keys unavailable: {jwks.problem}"
    return ready, body


def register(gw: Gateway) -> None:
    """Add `/readyz`, `/metrics` and the request metrics to the gateway's app."""
    app = gw.app

    async def readyz() -> Response:
        ready, body = readiness(gw.runtime)
        return Response(dumps(body), status=200 if ready else 503,
                        content_type="application/json")

    async def metrics() -> Response:
        runtime = gw.runtime
        if runtime is None:
            return Response(b"not serving\n", status=503, content_type="text/plain")
        for upstream in runtime.upstreams.values():
            if upstream.breaker is not None and upstream.metrics is not None:
                upstream.metrics.breaker_now(upstream.breaker.state)
        await publish_counts(runtime)  # gateway_jobs_in_store{state}, from the job store
        text = await asyncio.to_thread(runtime.metrics.exposition)
        return Response(text, status=200, content_type=CONTENT_TYPE)

    async def observe(response: Response) -> Response:
        runtime = gw.runtime
        incoming = current_request()
        endpoint = _endpoint(incoming)
        request.scope[ROUTE_SCOPE_KEY] = endpoint  # type: ignore[literal-required]  # logs.py
        if runtime is not None:
            runtime.metrics.request(endpoint, _method(), response.status_code,
                                    time.perf_counter() - incoming.started)
        return response

    app.add_url_rule("/readyz", "readyz", readyz, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
    app.after_request(observe)


def _endpoint(incoming: GatewayRequest) -> str:
    """The route template (bounded label values), never the path the client sent."""
    if incoming.target is not None:
        return str(incoming.target.route)
    rule = incoming.url_rule
    if rule is None or rule.endpoint in _AGGREGATE_ENDPOINTS:
        return UNMATCHED
    return rule.rule


def _method() -> str:
    method = request.method
    return method if method in _KNOWN_METHODS else "other"
