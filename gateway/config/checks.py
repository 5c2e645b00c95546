"""Checks that look past one value: reserved routes, the `combine` import, path and
route shape, and the placeholders of an endpoint's calls against its route and each
other (unknown names, a call naming itself, dependency cycles).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..hooks import hook_problem
from ..template import BodyTemplate, Ref, _TemplateSyntaxError, parse_refs, usage_problem
from .checker import Checker
from .model import RESERVED_PREFIXES, CallConfig

COMBINE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")
_PLACEHOLDER_TEXT = re.compile(r"\{[^{}]*\}")


def combine_problem(spec: str, hook_folder: str | None) -> str | None:
    """Why `combine = spec` cannot be used: its shape, or the import that failed."""
    if not COMBINE_RE.match(spec):
        return f"must be 'module:function', not '{spec}'"
    return hook_problem(spec, hook_folder)


def route_problem(route: str) -> str | None:
    if not route.startswith("/"):
        return f"'{route}' must start with '/'"
    for prefix in RESERVED_PREFIXES:
        if route == prefix or route.startswith(prefix + "/"):
            return f"'{route}' is reserved for the gateway ({prefix})"
    from werkzeug.routing import Map, Rule  # werkzeug comes with quart

    try:
        Map([Rule(route, endpoint="x")])
    except (ValueError, LookupError) as exc:
        return f"'{route}' is not a valid route: {exc}"
    return None


def path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"'{path}' must start with '/'"
    path = _PLACEHOLDER_TEXT.sub("_", path)  # a default may hold any text; checked apart
    if "?" in path or "#" in path:
        return "put query parameters in 'query', not in the path"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "'.' and '..' segments are not allowed"
    return None


def route_params(route: str) -> tuple[str, ...]:
    """Names of the `<converter:name>` parameters of a Flask-style route."""
    return tuple(m.group(1) for m in re.finditer(r"<(?:[^:<>]+:)?([A-Za-z_]\w*)>", route))


def _lenient_params(route: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.group(1) for m in
                               re.finditer(r"<(?:[^:<>]+:)?([A-Za-z_]\w*)", route)))


def call_templates(call: CallConfig) -> list[tuple[str, Any]]:
    """Each template of a call with its key: path, batch_key, query.NAME, body."""
    found: list[tuple[str, Any]] = []
    if call.path is not None:
        found.append(("path", call.path))
    if call.batch_key is not None:
        found.append(("batch_key", call.batch_key))
    found += [(f"query.{k}", v) for k, v in call.query]
    if call.has_body:
        found.append(("body", call.body))
    return found


def template_refs(key: str, raw: Any, params: tuple[str, ...],
                  names: tuple[str, ...]) -> list[Ref]:
    """The placeholders of one template; raises `_TemplateSyntaxError`, also for a
    placeholder form that does not work where it stands (`usage_problem`)."""
    where = key.partition(".")[0]
    if where == "body":
        refs = list(BodyTemplate.parse(raw, params, names).refs)
        whole = False
    else:
        parts = parse_refs(raw, params, names)
        refs = [r for r in parts if isinstance(r, Ref)]
        whole = len(parts) == 1
    for ref in refs:
        problem = usage_problem(ref, where, whole)
        if problem is not None:
            raise _TemplateSyntaxError(problem)
    return refs


def check_placeholders(c: Checker, p: str, route: str, calls: list[CallConfig],
                       lenient: bool = False) -> None:
    """Unknown placeholders and dependency cycles, found at load.

    `lenient`: the route is invalid, so its parameters are read from whatever `<...name`
    it holds, closed or not (no false "names neither a route parameter" for them).
    """
    params = _lenient_params(route) if lenient else route_params(route)
    names = tuple(call.name for call in calls)
    for name in params:
        if name in ("query", "header", "body", "jwt"):
            c.fail(f"{p}.route", f"route parameter '{name}' clashes with the {{{name}.NAME}} "
                                 "placeholders; rename it")
    deps: dict[str, set[str]] = {}
    for j, call in enumerate(calls):
        if call.name in params:
            c.fail(f"{p}.calls[{j}].name", f"'{call.name}' is also a route parameter; "
                                           "placeholders could not tell them apart")
        deps[call.name] = set()
        for key, raw in call_templates(call):
            try:
                refs = template_refs(key, raw, params, names)
            except _TemplateSyntaxError as exc:
                c.fail(f"{p}.calls[{j}].{key}", str(exc))
                continue
            for ref in refs:
                if ref.source != "call":
                    continue
                if ref.name == call.name:
                    c.fail(f"{p}.calls[{j}].{key}", f"'{ref.text}' refers to the call itself")
                else:
                    deps[call.name].add(ref.name)
    cycle = find_cycle(names, deps)
    if cycle:
        c.fail(f"{p}.calls", "dependency cycle: " + " -> ".join(cycle))


def find_cycle(order: tuple[str, ...], deps: Mapping[str, set[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(deps.get(n, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in order:
        if n not in state and (found := visit(n)):
            return found
    return None
