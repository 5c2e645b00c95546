"""`GET /_gateway/openapi.json`: an OpenAPI 3.1 document of the configured endpoints.

Built from the compiled plans (pure: `document(config, router)`), once at
start-up and again only when a reload swaps the router. Each endpoint
becomes one operation:

- route parameters with their converter's type (`int` -> integer with its
  bounds, `uuid` -> string/uuid, `any(a,b)` -> enum, ...);
- `{query.NAME}` and `{header.NAME}` placeholders as required parameters
  (a missing one is a 400);
- `{body.FIELD.SUB}` placeholders as a required JSON request body whose
  object schema names each field (a scalar where it lands in a URL);
- the envelope as the response schema, and every status the endpoint can
  answer: 400, 404, 413 (if it reads a body), passed-through upstream 4xx,
  502, 503 (if a breaker guards one of its upstreams), 504, and 500 only
  where Python code (`combine`, a code view) runs.

It follows `[gateway] dashboard`: with the dashboard off, nothing under
`/_gateway/` is served, this document included (README explains why).
It names no upstream: callers see only what they can already call.

    __init__.py    the route (`register`) and the document (`document`)
    operations.py  one operation per endpoint and method, and each path's OPTIONS
    params.py      route parameters, query/header placeholders, the JSON request body
    responses.py   the statuses an operation answers, with their envelopes
    components.py  the shared schemas and parameters
    access.py      who may call: the security schemes, each operation's requirement
                   and its 401/403/429 answers (SPEC 9)
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from quart import Response

from .. import envelope
from ..config import Config
from ..routing import Router
from . import access
from .components import document_components
from .operations import operation, options_operation, route_of
from .params import openapi_path, route_schemas

if TYPE_CHECKING:
    from ..app import Gateway

__all__ = ["PATH", "document", "openapi_path", "register", "route_schemas"]

PATH = "/_gateway/openapi.json"


def register(gw: Gateway) -> None:
    """Serve the document for `gw`, unless the dashboard (all of `/_gateway/`) is off."""
    if not gw.config.gateway.dashboard:
        return
    built: dict[str, Any] = {}

    def current() -> bytes:
        if built.get("router") is not gw.router:
            built["body"] = envelope.dumps(document(gw.config, gw.router))
            built["router"] = gw.router
        body: bytes = built["body"]
        return body

    async def prime() -> None:
        current()

    async def view() -> Response:
        return Response(current(), content_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    gw.app.before_serving(prime)
    gw.app.add_url_rule(PATH, "gateway_openapi", view, methods=["GET"])


def document(config: Config, router: Router) -> dict[str, Any]:
    """The OpenAPI 3.1 document for these endpoints (pure)."""
    paths: dict[str, dict[str, Any]] = {}
    for target in router.targets:
        route, methods = route_of(target)
        item = paths.setdefault(openapi_path(route), {})
        for method in methods:
            item[method.lower()] = operation(config, target, route, method)
        item.setdefault("options", options_operation(route))
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "API aggregation gateway",
            "version": "",
            "description": (
                "One request in, concurrent upstream calls out, one timed envelope back. "
                "Every response is the envelope; errors carry `error`, one readable line. "
                "A method a path does not list here is a 405 with `Allow` (TRACE always); "
                "OPTIONS is a 204 with `Allow`. A request target over 8 KiB is a 414, "
                "headers over 16 KiB a 431, a path holding CR, LF or NUL a 400."),
        },
        "paths": paths,
        "components": document_components(),
    }
    schemes = access.security_schemes(config.auth)
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    # The version names the contract: it changes exactly when the document does.
    doc["info"]["version"] = hashlib.sha256(envelope.dumps(doc)).hexdigest()[:12]
    return doc
