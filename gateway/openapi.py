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
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from quart import Response
from werkzeug.routing import AnyConverter, IntegerConverter, Map
from werkzeug.routing.rules import parse_converter_args

from . import envelope, openapi_access
from .config import STRATEGIES, Config
from .plan import CallPlan, Plan
from .result import REQUEST_ID_PATTERN
from .routing import CodeView, Router, Target
from .template import Ref

if TYPE_CHECKING:
    from .app import Gateway

PATH = "/_gateway/openapi.json"

_PARAM = re.compile(r"<(?:([A-Za-z_]\w*)(?:\((.*?)\))?:)?([A-Za-z_]\w*)>")
_CONVERTERS = Map().converters
# Not described as header parameters by OpenAPI (3.1.0, "Parameter Object").
_RESERVED_HEADERS = frozenset({"accept", "content-type", "authorization"})
_SCALAR = {"type": ["string", "number", "boolean"]}
_NOT_NULL = {"not": {"type": "null"}}
# What the gateway refuses with a 400, as patterns (ECMA 262 and Python alike): CR, LF or
# NUL anywhere in a value or path; in a path value, a '.' or '..' between slashes.
_NO_CONTROL = r"(?![\s\S]*[\r\n\x00])"  # no `$` here: Python's matches before a final \n
_NO_DOT_SEGMENT = r"(?!(?:.*/)?\.\.?(?:/|$))"
_TEXT_IN_URL = f"^{_NO_CONTROL}"
_TEXT_IN_PATH = f"^{_NO_CONTROL}{_NO_DOT_SEGMENT}."
# h11 strips a header value's outer spaces and tabs: ' ..' arrives as '..'.
_HEADER_IN_PATH = rf"^{_NO_CONTROL}(?!(?:[ \t]*|.*/)\.\.?(?:/|[ \t]*$))(?=.*[^ \t])"


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
        route, methods = _route_of(target)
        item = paths.setdefault(openapi_path(route), {})
        for method in methods:
            item[method.lower()] = _operation(config, target, route, method)
        item.setdefault("options", _options_operation(route))
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
        "components": _components(),
    }
    schemes = openapi_access.security_schemes(config.auth)
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    # The version names the contract: it changes exactly when the document does.
    doc["info"]["version"] = hashlib.sha256(envelope.dumps(doc)).hexdigest()[:12]
    return doc


def openapi_path(route: str) -> str:
    """`/users/<int:id>` -> `/users/{id}`."""
    return _PARAM.sub(lambda m: "{" + m.group(3) + "}", route)


def route_schemas(route: str, in_path: frozenset[str] = frozenset()
                  ) -> dict[str, dict[str, Any]]:
    """Each route parameter's JSON schema, from its werkzeug converter and arguments.

    Text never holds CR, LF or NUL (a 400); a parameter named in `in_path` fills a path
    placeholder, where a '.' or '..' segment is a 400 too.
    """
    out = {}
    for m in _PARAM.finditer(route):
        kind, raw_args, name = m.group(1) or "default", m.group(2), m.group(3)
        args, kwargs = parse_converter_args(raw_args) if raw_args else ((), {})
        converter = _CONVERTERS[kind](Map(), *args, **kwargs)
        if isinstance(converter, IntegerConverter):
            schema: dict[str, Any] = {"type": "integer"}
            low = converter.min if converter.min is not None else (
                None if converter.signed else 0)
            if low is not None:
                schema["minimum"] = low
            if converter.max is not None:
                schema["maximum"] = converter.max
        elif kind == "uuid":
            schema = {"type": "string", "format": "uuid"}
        elif isinstance(converter, AnyConverter):
            schema = {"type": "string", "enum": sorted(converter.items)}
        else:  # string, path, float: the converter's own regex says it exactly
            checks = _NO_CONTROL + (_NO_DOT_SEGMENT if name in in_path else "")
            schema = {"type": "string", "pattern": f"^{checks}(?:{converter.regex})$"}
            if kind == "float":
                schema["format"] = "decimal"
        out[name] = schema
    return out


def _route_of(target: Target) -> tuple[str, tuple[str, ...]]:
    if isinstance(target, Plan):
        return target.route, (target.method,)
    return target.route, target.methods


def _operation(config: Config, target: Target, route: str, method: str) -> dict[str, Any]:
    in_path = frozenset(c.ref.name for c in target.checks
                        if c.ref.source == "param" and c.in_path) if isinstance(
        target, Plan) else frozenset()
    params = [{"name": name, "in": "path", "required": True, "schema": schema}
              for name, schema in route_schemas(route, in_path).items()]
    op: dict[str, Any] = {
        "operationId": _operation_id(method, route),
        "tags": ["aggregate"],
    }
    code = True
    reads_body = True  # a code view reads any body it is sent
    data: dict[str, Any] = {}
    if isinstance(target, Plan):
        code = target.combine is not None
        refs = _request_refs(target)
        params += _placeholder_params(refs)
        body = _body_schema(refs)
        if body is not None:
            op["requestBody"] = {"required": body[1],
                                 "content": {"application/json": {"schema": body[0]}}}
        reads_body = target.needs_body
        if not code:
            names = [c.name for c in target.calls]
            data = {"type": "object", "required": names,
                    "properties": {n: {} for n in names}}
        op["summary"] = ", ".join(f"{c.name} ({'optional' if c.optional else 'required'})"
                                  for c in target.calls)
    else:
        op["summary"] = f"code-defined endpoint ({target.func.__name__})"
    params += [{"$ref": "#/components/parameters/Strategy"},
               {"$ref": "#/components/parameters/RequestId"}]
    op["parameters"] = params
    op["responses"] = _responses(data, reads_body=reads_body, code=code,
                                 breaker=_guarded(config, target))
    openapi_access.apply(op, config, target, _error)  # security, 401/403/429
    return op


def _options_operation(route: str) -> dict[str, Any]:
    """OPTIONS on a path: 204 with `Allow`. (TRACE and any method not listed: 405 with it.)"""
    allow = {"Allow": {"schema": {"type": "string"},
                       "description": "the methods this path serves, e.g. GET, HEAD, OPTIONS"}}
    return {"operationId": _operation_id("options", route), "tags": ["methods"],
            "summary": "the methods this path serves, in Allow",
            "parameters": [{"name": name, "in": "path", "required": True, "schema": schema}
                           for name, schema in route_schemas(route).items()],
            "responses": {
                "204": {"description": "the methods this path serves", "headers": allow},
                "400": _error("the path holds CR, LF or NUL"),
                "404": _error("no endpoint at this path (a route parameter of the wrong type)"),
            }}


def _operation_id(method: str, route: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(route)).strip("_") or "root"
    return f"{method.lower()}_{slug}"


# A request placeholder: whether it lands in a URL (so must be a scalar), in a path, and
# whether a request without it is a 400 (no default, no `?`, not an optional call's).
Use = tuple[Ref, bool, bool, bool]


def _request_refs(plan: Plan) -> list[Use]:
    return [(c.ref, c.in_url, c.in_path, c.required) for c in plan.checks]


def _placeholder_params(refs: list[Use]) -> list[dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ref, in_url, in_path, required in refs:
        if ref.source not in ("query", "header"):
            continue
        if ref.source == "header" and ref.name in _RESERVED_HEADERS:
            continue  # OpenAPI ignores these as parameters; a missing one is still a 400
        param = out.setdefault((ref.source, ref.name), {
            "name": ref.name, "in": ref.source, "required": False,
            "schema": {"type": "string"}, "description": f"fills {ref.text}"})
        param["required"] = param["required"] or required
        schema = param["schema"]
        if in_path:
            schema["pattern"] = _HEADER_IN_PATH if ref.source == "header" else _TEXT_IN_PATH
        elif in_url and schema.get("pattern") is None:
            schema["pattern"] = _TEXT_IN_URL
    return list(out.values())


def _body_schema(refs: list[Use]) -> tuple[dict[str, Any], bool] | None:
    """An object schema requiring every `{body....}` field a request must have, scalars
    where used in a URL; and whether the body itself is required. `{body}` is any JSON."""
    root: dict[str, Any] = {}
    found = required_body = False
    for ref, in_url, in_path, required in refs:
        if ref.source != "body":
            continue
        found = True
        required_body = required_body or required
        if required and ref.name:
            leaf: dict[str, Any] = _NOT_NULL
            if in_url:
                leaf = {**_SCALAR, "pattern": _TEXT_IN_PATH if in_path else _TEXT_IN_URL}
            _require(root, (ref.name, *ref.path), leaf)
    if not found:
        return None
    return ({"type": "object", **root} if root else {}), required_body


def _stricter(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Of two leaf schemas for one field, the one that refuses more (path > URL > any)."""
    def rank(leaf: dict[str, Any] | None) -> int:
        if leaf is None or "type" not in leaf:
            return 0
        return 2 if leaf.get("pattern") == _TEXT_IN_PATH else 1
    return dict(a if a is not None and rank(a) >= rank(b) else b)


def _require(node: dict[str, Any], path: tuple[str, ...], leaf: dict[str, Any]) -> None:
    key, rest = path[0], path[1:]
    if key.isdigit():
        return  # an index into a list or a digit key: beyond what we describe
    node.setdefault("required", [])
    if key not in node["required"]:
        node["required"].append(key)
    props = node.setdefault("properties", {})
    if not rest:
        props[key] = _stricter(props.get(key), leaf)
        return
    child = props.setdefault(key, {})
    if rest[0].isdigit():
        props[key] = {**_NOT_NULL}  # object or array: not described further
        return
    child.setdefault("type", "object")
    _require(child, rest, leaf)


def _guarded(config: Config, target: Target) -> bool:
    """Whether a breaker can make this endpoint answer 503."""
    if isinstance(target, CodeView):
        return any(u.breaker is not None for u in config.upstreams.values())
    return any(_breaker(config, c) for c in target.calls)


def _breaker(config: Config, call: CallPlan) -> bool:
    upstream = config.upstreams.get(call.upstream)
    return upstream is not None and upstream.breaker is not None


def _responses(data: dict[str, Any], *, reads_body: bool, code: bool,
               breaker: bool) -> dict[str, Any]:
    ok_schema = {"allOf": [{"$ref": "#/components/schemas/Envelope"},
                           {"properties": {"data": data}}]} if data else {
        "$ref": "#/components/schemas/Envelope"}
    out: dict[str, Any] = {
        "200": {"description": "every required call succeeded (optional failures set "
                               "meta.complete to false)",
                "headers": _timing_headers(),
                "content": {"application/json": {"schema": ok_schema}}},
        "400": _error("bad input: a missing or unusable parameter, header or body field"),
        "404": _error("no such endpoint, or a required call's upstream answered 404"),
        "4XX": _error("a required call's upstream answered this 4xx; passed through"),
        "502": _error("a required call failed: connection error, 5xx, non-JSON or oversize "
                      "reply"),
        "504": _error("a required call timed out, or the request's deadline passed"),
    }
    if reads_body:
        out["413"] = _error("the request body is larger than max_request_bytes")
    if breaker:
        out["503"] = _error("a required call's circuit breaker is open",
                            {"Retry-After": {"schema": {"type": "string"},
                                             "description": "seconds until a retry may pass"}})
    if code:
        out["500"] = _error("the endpoint's Python code failed (logged; no detail is sent)")
    return out


def _error(description: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "headers": {**_timing_headers(), **(extra or {})},
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def _timing_headers() -> dict[str, Any]:
    return {
        "Server-Timing": {"schema": {"type": "string"},
                          "description": "one entry per call, then total"},
        "X-Processing-Time-Ms": {"schema": {"type": "string"}},
        "X-Request-ID": {"schema": {"type": "string"}},
    }


def _components() -> dict[str, Any]:
    ran = {
        "type": "object",
        "required": ["status", "ok", "elapsed_ms", "attempts", "cached"],
        "properties": {
            "status": {"type": ["integer", "null"]},
            "ok": {"type": "boolean"},
            "elapsed_ms": {"type": "number"},
            "attempts": {"type": "integer", "minimum": 0},
            "cached": {"type": "boolean"},
            "start_ms": {"type": "number"},
            "error": {"type": "string"},
            "batch": {"type": "integer"},
            "queued_ms": {"type": "number"},
        },
    }
    skipped = {  # an optional call without a request value it needs, or a view's unrun call
        "type": "object",
        "required": ["skipped", "ok"],
        "properties": {"skipped": {"const": True}, "ok": {"const": True}},
        "additionalProperties": False,
    }
    call_meta = {"anyOf": [ran, skipped]}
    meta = {
        "type": "object",
        "required": ["processing_time_ms", "strategy", "complete", "calls"],
        "properties": {
            "processing_time_ms": {"type": "number"},
            "strategy": {"enum": list(STRATEGIES)},
            "complete": {"type": "boolean"},
            "calls": {"type": "object",
                      "additionalProperties": {"$ref": "#/components/schemas/CallMeta"}},
        },
    }
    return {
        "schemas": {
            "CallMeta": call_meta,
            "Meta": meta,
            "Envelope": {
                "type": "object",
                "required": ["data", "meta"],
                "properties": {"data": {}, "meta": {"$ref": "#/components/schemas/Meta"}},
            },
            "ErrorEnvelope": {
                "type": "object",
                "required": ["data", "meta", "error"],
                "properties": {"data": {"type": "null"},
                               "meta": {"$ref": "#/components/schemas/Meta"},
                               "error": {"type": "string", "pattern": "^[^\\n]*$"}},
            },
        },
        "parameters": {
            "Strategy": {"name": "X-Gateway-Strategy", "in": "header", "required": False,
                         "schema": {"enum": list(STRATEGIES)},
                         "description": "run the calls in parallel or one after another"},
            "RequestId": {"name": "X-Request-ID", "in": "header", "required": False,
                          "schema": {"type": "string"},
                          "description": (
                              f"echoed back and forwarded to every upstream call if it "
                              f"matches {REQUEST_ID_PATTERN}; any other value is not refused "
                              f"but replaced by a fresh id (32 hex digits)")},
        },
    }
