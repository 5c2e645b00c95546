"""One operation per endpoint and method, and the `OPTIONS` every path answers."""

from __future__ import annotations

import re
from typing import Any

from ..config import Config
from ..plan import CallPlan, Plan
from ..routing import CodeView, Target
from . import access
from .params import body_schema, openapi_path, placeholder_params, request_refs, route_schemas
from .responses import error, responses


def route_of(target: Target) -> tuple[str, tuple[str, ...]]:
    """The target's route template and the methods it serves."""
    if isinstance(target, Plan):
        return target.route, (target.method,)
    return target.route, target.methods


def operation(config: Config, target: Target, route: str, method: str) -> dict[str, Any]:
    """The operation for one method of one endpoint: its inputs and every status it answers."""
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
        refs = request_refs(target)
        params += placeholder_params(refs)
        body = body_schema(refs)
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
    op["responses"] = responses(data, reads_body=reads_body, code=code,
                                breaker=_guarded(config, target))
    access.apply(op, config, target, error)  # security, 401/403/429
    return op


def options_operation(route: str) -> dict[str, Any]:
    """OPTIONS on a path: 204 with `Allow`. (TRACE and any method not listed: 405 with it.)"""
    allow = {"Allow": {"schema": {"type": "string"},
                       "description": "the methods this path serves, e.g. GET, HEAD, OPTIONS"}}
    return {"operationId": _operation_id("options", route), "tags": ["methods"],
            "summary": "the methods this path serves, in Allow",
            "parameters": [{"name": name, "in": "path", "required": True, "schema": schema}
                           for name, schema in route_schemas(route).items()],
            "responses": {
                "204": {"description": "the methods this path serves", "headers": allow},
                "400": error("the path holds CR, LF or NUL"),
                "404": error("no endpoint at this path (a route parameter of the wrong type)"),
            }}


def _operation_id(method: str, route: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(route)).strip("_") or "root"
    return f"{method.lower()}_{slug}"


def _guarded(config: Config, target: Target) -> bool:
    """Whether a breaker can make this endpoint answer 503."""
    if isinstance(target, CodeView):
        return any(u.breaker is not None for u in config.upstreams.values())
    return any(_breaker(config, c) for c in target.calls)


def _breaker(config: Config, call: CallPlan) -> bool:
    upstream = config.upstreams.get(call.upstream)
    return upstream is not None and upstream.breaker is not None
