"""`[[endpoints]]` and their `[[endpoints.calls]]`: each table checked on its own, then
its placeholders against the route and the other calls (checks.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .auth import ENDPOINT_KEYS, AuthSettings, parse_access
from .checker import NAME_RE, Checker, one_of
from .checks import call_templates, check_placeholders, combine_problem, path_problem, route_problem
from .model import METHODS, STRATEGIES, CallConfig, EndpointConfig, UpstreamConfig


def parse_endpoint(c: Checker, p: str, raw: Any, upstreams: Mapping[str, UpstreamConfig],
                   declared: set[str], auth: AuthSettings) -> EndpointConfig | None:
    """`declared`: every upstream name in the file, also those refused, so that a call
    to a broken upstream is not reported as calling an unknown one too."""
    raw = c.table(raw, p)
    c.unknown(raw, p, {"route", "method", "calls", "combine", "strategy", "deadline",
                       *ENDPOINT_KEYS})
    if "route" not in raw:
        c.fail(f"{p}.route", "is required")
    route = c.string(raw, p, "route", "", route_problem)
    method = c.string(raw, p, "method", "GET", one_of(METHODS, upper=True)).upper()
    combine = c.string(raw, p, "combine", None, lambda v: combine_problem(v, c.hook_folder))
    strategy = c.string(raw, p, "strategy", None, one_of(STRATEGIES))
    deadline = c.number(raw, p, "deadline", -1.0)
    calls_raw = raw.get("calls", [])
    if not isinstance(calls_raw, list):
        c.fail(f"{p}.calls", "must be an array of tables ([[endpoints.calls]])")
        calls_raw = []
    if not calls_raw:
        c.fail(f"{p}.calls", "an endpoint needs at least one call")
    calls: list[CallConfig] = []
    names: set[str] = set()
    for j, call_raw in enumerate(calls_raw):
        call = parse_call(c, f"{p}.calls[{j}]", call_raw, upstreams, declared)
        if call is None:
            continue
        if call.name and call.name in names:
            c.fail(f"{p}.calls[{j}].name", f"'{call.name}' is used by another call")
        names.add(call.name)
        calls.append(call)
    # Checked under an invalid route too (its parameters read leniently): one broken line
    # must not hide the problems of every call below it.
    raw_route = raw.get("route")
    if isinstance(raw_route, str) and raw_route:
        check_placeholders(c, p, raw_route, calls, lenient=route != raw_route)
    access = parse_access(c.fail, p, raw, auth,
                          [t for call in calls for _, t in call_templates(call)])
    return EndpointConfig(route=route, method=method, calls=tuple(calls), combine=combine,
                          strategy=strategy, deadline=None if deadline < 0 else deadline,
                          access=access)


def parse_call(c: Checker, p: str, raw: Any, upstreams: Mapping[str, UpstreamConfig],
               declared: set[str]) -> CallConfig | None:
    raw = c.table(raw, p)
    c.unknown(raw, p, {"name", "upstream", "path", "batch_key", "method", "query", "body",
                       "optional", "default", "select", "rename"})
    for key in ("name", "upstream"):
        if key not in raw:
            c.fail(f"{p}.{key}", "is required")
    name = c.string(raw, p, "name", "",
                    lambda v: None if NAME_RE.match(v) and v not in ("query", "header", "body")
                    else f"'{v}' is not usable as a call name (letters, digits, '_', '-'; "
                         "not query/header/body)")
    upstream = c.string(raw, p, "upstream", "")
    if upstream and upstream not in declared:
        c.fail(f"{p}.upstream", f"unknown upstream '{upstream}'")
    path = c.string(raw, p, "path", None, path_problem)
    batch_key = c.string(raw, p, "batch_key", None)
    if "path" not in raw and "batch_key" not in raw:  # not when one is there but invalid
        c.fail(p, "needs 'path' (or 'batch_key' for a batching upstream)")
    if "path" in raw and "batch_key" in raw:
        c.fail(p, "has both 'path' and 'batch_key'; a call uses one")
    method = c.string(raw, p, "method", "GET", one_of(METHODS, upper=True)).upper()
    up = upstreams.get(upstream)
    if batch_key is not None:
        if up is not None and up.batch is None:
            c.fail(f"{p}.batch_key", f"upstream '{upstream}' has no [upstreams.{upstream}.batch]")
        if method != "GET":
            c.fail(f"{p}.method", "batched calls are GET")
    optional = c.boolean(raw, p, "optional", False)
    if "default" in raw and not optional:
        c.fail(f"{p}.default", "only optional calls have a default")
    rename = c.string_table(raw, p, "rename")
    select = c.strings(raw, p, "select")
    for old, _ in rename:
        if select is not None and old not in select:
            c.fail(f"{p}.rename.{old}", f"'{old}' is not in select, so there is nothing to "
                                        "rename; add it to select")
    return CallConfig(
        name=name,
        upstream=upstream,
        path=path,
        batch_key=batch_key,
        method=method,
        query=c.string_table(raw, p, "query", scalars=True),
        body=raw.get("body"),
        has_body="body" in raw,
        optional=optional,
        default=raw.get("default"),
        select=select,
        rename=rename,
    )
