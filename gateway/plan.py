"""Endpoint config -> compiled plan: a DAG of call templates (pure, built once at load).

Everything a request needs that does not depend on the request is worked
out here: parsed templates, each call's dependencies, the sequential order,
the request values to check before anything is sent, the imported
`combine` hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .config import Config, EndpointConfig, route_params
from .config.auth import EndpointAccess
from .errors import CallInputError, ConfigError, RequestError
from .hooks import Combine, hook_folder, import_hook
from .template import (
    MISSING,
    BodyTemplate,
    Inputs,
    Ref,
    UrlTemplate,
    find,
    missing,
    path_value_problem,
    scalar_text,
)


@dataclass(frozen=True, slots=True)
class CallPlan:
    name: str
    upstream: str
    method: str
    path: UrlTemplate | None
    batch_key: UrlTemplate | None
    query: tuple[tuple[str, UrlTemplate], ...]  # keys already percent-encoded
    body: BodyTemplate | None
    optional: bool
    default: Any
    select: tuple[str, ...] | None
    rename: Mapping[str, str]
    deps: tuple[str, ...]
    # An optional call is skipped when one of these request values is missing (not a 400).
    skip_unless: tuple[Ref, ...] = ()
    label: str = ""  # who makes the call, for the breaker's message: "call 'user' of GET /x"

    def skipped(self, inputs: Inputs) -> bool:
        """Whether this (optional) call lacks a request value it needs, so must not run."""
        return any(find(ref, inputs) is MISSING for ref in self.skip_unless)

    def render_url(self, inputs: Inputs) -> str:
        """Path and query string, every substituted value percent-encoded."""
        assert self.path is not None
        url = self.path.render(inputs, self.name)
        if "/." in url and any(seg in (".", "..") for seg in url.split("/")):
            # Only reachable through templates like `{a}{b}` whose parts are each harmless.
            raise CallInputError(f"call '{self.name}': its path would hold a '.' or '..' segment")
        if self.query:
            pairs = [f"{key}={value.render(inputs, self.name)}"
                     for key, value in self.query if not value.omitted(inputs)]
            if pairs:
                url += "?" + "&".join(pairs)
        return url

    def shape(self, data: Any) -> Any:
        """Apply `select` then `rename` to an object, or to each object of a list."""
        if self.select is None and not self.rename:
            return data
        if isinstance(data, list):
            return [self._shape_one(item) for item in data]
        return self._shape_one(data)

    def _shape_one(self, item: Any) -> Any:
        if not isinstance(item, dict):
            return item
        if self.select is not None:
            item = {k: item[k] for k in self.select if k in item}
        if self.rename:
            item = {self.rename.get(k, k): v for k, v in item.items()}
        return item


@dataclass(frozen=True, slots=True)
class RequestCheck:
    """A request value some call needs, checked before any call is sent."""

    ref: Ref
    call: str
    in_path: bool
    in_url: bool
    optional: bool = False  # the call is optional: a missing value skips it instead

    @property
    def required(self) -> bool:
        """Whether a request without this value is a 400."""
        return self.ref.required and not self.optional


@dataclass(frozen=True, slots=True)
class Plan:
    route: str
    method: str
    strategy: str | None
    deadline: float | None
    calls: tuple[CallPlan, ...]  # config order
    order: tuple[CallPlan, ...]  # config order, each call after the calls it needs
    checks: tuple[RequestCheck, ...]
    needs_body: bool
    combine: Combine | None
    combine_is_async: bool
    access: EndpointAccess = field(default_factory=EndpointAccess)  # auth/check.py

    def check_request(self, inputs: Inputs) -> None:
        """Raise `RequestError` (400) for a missing or unusable request value.

        A value with a default or a `?`, or one an optional call needs, may be missing
        (defaults were checked at load); one that is there must be usable all the same.
        """
        for check in self.checks:
            value = find(check.ref, inputs)
            if value is MISSING:
                if check.required:
                    raise missing(check.ref, check.call)
                continue
            if check.in_url:
                text = scalar_text(value, check.ref, check.call)
                if check.in_path and (problem := path_value_problem(text)) is not None:
                    raise RequestError(f"value of {check.ref.text} {problem}")


def compile_plans(config: Config) -> tuple[Plan, ...]:
    """One plan per endpoint; raises `ConfigError` if a `combine` hook cannot be imported.

    A config loaded from a file had its hooks checked already (with its other problems);
    this is the check for a `Config` built in code.
    """
    problems: list[str] = []
    plans = []
    folder = hook_folder(config.source)
    for i, endpoint in enumerate(config.endpoints):
        combine = None
        if endpoint.combine:
            try:
                combine = import_hook(endpoint.combine, folder)
            except (ImportError, AttributeError, TypeError) as exc:
                problems.append(f"endpoints[{i}].combine: {exc}")
        plans.append(compile_plan(endpoint, combine))
    if problems:
        raise ConfigError(problems)
    return tuple(plans)


def compile_plan(endpoint: EndpointConfig, combine: Combine | None = None) -> Plan:
    """Compile one already-validated endpoint."""
    params = route_params(endpoint.route)
    names = tuple(c.name for c in endpoint.calls)
    calls = []
    checks: list[RequestCheck] = []
    needs_body = False
    for call in endpoint.calls:
        path = UrlTemplate.parse(call.path, params, names, True) if call.path else None
        batch_key = (
            UrlTemplate.parse(call.batch_key, params, names, False) if call.batch_key else None
        )
        query = tuple(
            (quote(k, safe=""), UrlTemplate.parse(v, params, names, False)) for k, v in call.query
        )
        body = BodyTemplate.parse(call.body, params, names) if call.has_body else None
        url_templates = [t for t in (path, batch_key) if t] + [t for _, t in query]
        refs: list[Ref] = []
        for t in url_templates:
            refs += t.refs
            checks += [RequestCheck(r, call.name, t.in_path, True, call.optional)
                       for r in t.refs if r.from_request]
        if body is not None:
            refs += body.refs
            checks += [RequestCheck(r, call.name, False, False, call.optional)
                       for r in body.refs if r.from_request]
        needs_body = needs_body or any(r.source == "body" for r in refs)
        deps = tuple(dict.fromkeys(r.name for r in refs if r.source == "call"))
        calls.append(CallPlan(
            name=call.name, upstream=call.upstream, method=call.method, path=path,
            batch_key=batch_key, query=query, body=body, optional=call.optional,
            default=call.default, select=call.select, rename=dict(call.rename), deps=deps,
            skip_unless=tuple(dict.fromkeys(
                r for r in refs if r.from_request and r.required)) if call.optional else (),
            label=f"{'optional ' if call.optional else ''}call '{call.name}' of "
                  f"{endpoint.method} {endpoint.route}",
        ))
    return Plan(
        route=endpoint.route,
        method=endpoint.method,
        strategy=endpoint.strategy,
        deadline=endpoint.deadline,
        calls=tuple(calls),
        order=topological(tuple(calls)),
        checks=tuple(checks),
        needs_body=needs_body,
        combine=combine,
        combine_is_async=combine is not None and inspect.iscoroutinefunction(combine),
        access=endpoint.access,
    )


def topological(calls: tuple[CallPlan, ...]) -> tuple[CallPlan, ...]:
    """Config order, except that a call always comes after the calls it needs."""
    done: set[str] = set()
    out: list[CallPlan] = []
    pending = list(calls)
    while pending:
        for i, call in enumerate(pending):
            if all(d in done for d in call.deps):
                out.append(pending.pop(i))
                done.add(call.name)
                break
        else:  # unreachable for a validated config (cycles are refused at load)
            raise ValueError("dependency cycle")
    return tuple(out)

