"""Hypothesis over the pure core: placeholder substitution end to end, and config validation.

test_template.py / test_plan.py / test_config.py hold the per-function properties (one
segment stays one segment, a query value round-trips, `parse_config` raises only
`ConfigError`). These are the whole-pipeline ones: any value in every placeholder at once,
down to the URL the transport sends; any body value through the JSON the upstream gets;
any template text; and generated configs that either name their problems by key path or
build a gateway whose OpenAPI document is valid.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway import Gateway
from gateway.config import Config, parse_config, route_params
from gateway.envelope import dumps
from gateway.errors import CallInputError, ConfigError, RequestError
from gateway.openapi import document, openapi_path
from gateway.plan import Plan, compile_plans
from gateway.template import Inputs, Ref, _TemplateSyntaxError, parse_refs

BASE = "http://up.internal:8080/api"

scalars = (st.text() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.booleans())
json_values = st.recursive(
    st.none() | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
# Mostly the values that do get through, so the success branch is well exercised; and the
# slash-and-dot shapes that random text rarely hits.
dotted = st.lists(st.sampled_from(["", ".", "..", "...", "a", "%2e"]), min_size=1,
                  max_size=4).map("/".join)
anything = st.one_of(scalars, scalars, json_values, dotted)


def _attempt(func: Any, *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """(result, None), or (None, the exception): any exception type is the test's to judge."""
    try:
        return func(*args, **kwargs), None
    except Exception as exc:
        return None, exc


def _plan(**call: Any) -> Plan:
    config = parse_config({
        "upstreams": {"up": {"url": BASE}},
        "endpoints": [{"route": "/r/<id>", "method": "POST",
                       "calls": [{"name": "c0", "upstream": "up", "path": "/c0"},
                                 {"name": "c1", "upstream": "up", **call}]}],
    }, env={})
    return compile_plans(config)[0]


URL_PLAN = _plan(path="/base-lit/{id}/x{query.q}y/{header.h}/{body.b}/{c0.f}",
                 query={"k1": "{query.q}", "k 2": "lit{body.b}"})
BODY_PLAN = _plan(path="/c1", body={"whole": "{body.v}", "text": "<{body.v}>",
                                    "nested": ["{c0.f}", {"k": "{query.q}", "n": 7}]})


def _text(value: Any) -> str | None:
    """What a URL placeholder makes of a value, or None if it must be refused."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        return None
    return None if any(ch in text for ch in "\r\n\0") else text


@settings(max_examples=400, deadline=None)
@given(pid=anything, q=anything, h=anything, b=anything, f=anything)
def test_any_values_in_every_placeholder_never_leave_the_upstream(
    pid: Any, q: Any, h: Any, b: Any, f: Any
) -> None:
    inputs = Inputs({"id": pid}, {"q": q}, {"h": h}, {"b": b}, {"c0": {"f": f}})
    (call,) = [c for c in URL_PLAN.calls if c.name == "c1"]
    texts = [_text(v) for v in (pid, q, h, b, f)]
    # Every one of them lands in the path, where "" and a "." or ".." between slashes are
    # refused as values (even inside a longer segment: the check is per placeholder, on the
    # safe side).
    refusable = None in texts or any(
        t == "" or any(seg in (".", "..") for seg in t.split("/")) for t in texts if t is not None)
    url, error = _attempt(call.render_url, inputs)
    if error is not None:
        assert isinstance(error, RequestError | CallInputError), error
        assert refusable, error
        assert "\n" not in str(error)
        return
    assert not refusable
    pid_t, q_t, h_t, b_t, f_t = (t or "" for t in texts)
    full = BASE + url
    parts = urlsplit(full)
    assert (parts.scheme, parts.hostname, parts.port) == ("http", "up.internal", 8080)
    assert not parts.fragment
    segments = parts.path.split("/")
    assert segments[:3] == ["", "api", "base-lit"]
    assert [unquote(s) for s in segments[3:]] == [pid_t, f"x{q_t}y", h_t, b_t, f_t]
    assert parse_qsl(parts.query, keep_blank_values=True) == [("k1", q_t),
                                                              ("k 2", f"lit{b_t}")]
    # ... and exactly that reaches the wire through httpx and aiohttp's yarl.
    request = httpx.Request("GET", full)
    assert request.url.host == "up.internal"
    assert request.url.raw_path.decode("ascii") == "/api" + url
    wire = URL(str(request.url), encoded=True)
    assert (wire.host, wire.port, wire.raw_path) == ("up.internal", 8080, parts.path)


def _embedded(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


@settings(max_examples=300, deadline=None)
@given(v=json_values, f=json_values, q=anything)
def test_body_templates_keep_json_types_and_always_encode(v: Any, f: Any, q: Any) -> None:
    inputs = Inputs({"id": "1"}, {"q": q}, {}, {"v": v}, {"c0": {"f": f}})
    (call,) = [c for c in BODY_PLAN.calls if c.name == "c1"]
    assert call.body is not None
    rendered, error = _attempt(call.body.render, inputs, call.name)
    if error is not None:
        assert isinstance(error, RequestError | CallInputError), error
        assert v is None or f is None or q is None
        return
    assert rendered["whole"] is v  # a lone placeholder keeps the value itself
    assert rendered["text"] == f"<{_embedded(v)}>"
    assert rendered["nested"][0] is f
    assert rendered["nested"][1] == {"k": q, "n": 7}
    assert orjson.loads(dumps(rendered)) == orjson.loads(orjson.dumps(rendered))


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet="ab_.-/ {}{}" + "0", max_size=20)
       | st.lists(st.sampled_from(["{id}", "{c0.f.0}", "{query.q}", "{header.X-h}",
                                   "{body.a.b}", "{nope}", "{", "}", "/", "x", ".", "{}",
                                   "{query}", "{id.x}", "{c0}"]), max_size=6).map("".join))
def test_template_text_round_trips_or_is_refused_with_a_reason(text: str) -> None:
    parts, error = _attempt(parse_refs, text, ("id",), ("c0",))
    if error is not None:
        assert isinstance(error, _TemplateSyntaxError), error
        assert text in str(error) or "{" in str(error)
        return
    rebuilt = "".join(p.text if isinstance(p, Ref) else p for p in parts)
    assert rebuilt == text
    for p in parts:
        if isinstance(p, Ref):
            assert p.source in ("param", "query", "header", "body", "call")
        else:
            assert "{" not in p
            assert "}" not in p


# -- generated configs ------------------------------------------------------------------------

_UPSTREAM_NAMES = ["users", "orders", "bad name", "x-1"]
_TEMPLATE_BITS = ["/", "x", "{id}", "{name}", "{rest}", "{query.q}", "{header.h}", "{body.b.c}",
                  "{c0.f}", "{c1.id}", "{c2}", "{nope}", "{", "..", "{query}", "-"]
_templates = st.lists(st.sampled_from(_TEMPLATE_BITS), max_size=5).map(
    lambda bits: "/" + "".join(bits))
_upstream = st.fixed_dictionaries(
    {"url": st.sampled_from(["http://127.0.0.1:9001", "https://h.example/base", "ftp://x",
                             "http://", "http://u:p@h", "http://h?q=1", "http://h:99999"])},
    optional={"timeout": st.sampled_from([0.5, 0, -1, "1"]),
              "retries": st.sampled_from([0, 2, -1]),
              "forward_headers": st.sampled_from([["authorization"], ["connection"], [""]]),
              "breaker": st.sampled_from([{"failures": 3, "reset": 1.0}, {"failures": 0}]),
              "headers": st.sampled_from([{"x-k": "v"}, {"host": "h"}, {"x": "a\nb"}])},
)
_call = st.fixed_dictionaries(
    {"name": st.sampled_from(["c0", "c1", "c2", "query", "bad name"]),
     "upstream": st.sampled_from([*_UPSTREAM_NAMES, "missing"])},
    optional={"path": _templates,
              "method": st.sampled_from(["GET", "post", "BREW"]),
              "query": st.dictionaries(st.sampled_from(["a", "b c", "é"]), _templates,
                                       max_size=2),
              "body": st.sampled_from([{"x": "{body.b.c}"}, ["{c0.f}"], "{query.q}", 3]),
              "optional": st.booleans(),
              "default": st.sampled_from([[], {"a": 1}, None]),
              "select": st.sampled_from([["id"], "id"])},
)
_endpoint = st.fixed_dictionaries(
    {"route": st.sampled_from(["/a/<int:id>", "/b/<name>", "/c", "c", "/healthz",
                               "/d/<path:rest>", "/e/<bogus:x>", "/f/<uuid:u>/<any(x,y):k>",
                               "/g/<int(min=1):id>/<float:r>"]),
     "calls": st.lists(_call, max_size=4)},
    optional={"method": st.sampled_from(["GET", "POST", "TRACE"]),
              "strategy": st.sampled_from(["parallel", "sequential", "random"]),
              "deadline": st.sampled_from([1.0, 0])},
)
_configs = st.fixed_dictionaries(
    {"upstreams": st.dictionaries(st.sampled_from(_UPSTREAM_NAMES), _upstream, max_size=3),
     "endpoints": st.lists(_endpoint, max_size=3)},
    optional={"gateway": st.fixed_dictionaries(
        {}, optional={"timeout": st.sampled_from([1.0, -1.0]),
                      "strategy": st.sampled_from(["parallel", "fastest"]),
                      "dashboard": st.booleans()})},
)

_PATH_HEAD = re.compile(r"^(?:config|gateway|jobs|upstreams|endpoints)\b")
_INDEX = re.compile(r"^endpoints\[(\d+)\](?:\.calls\[(\d+)\])?")


def _problem_is_rooted_in(problem: str, raw: dict[str, Any]) -> None:
    path, sep, reason = problem.partition(": ")
    assert sep
    assert reason
    assert "\n" not in problem
    assert _PATH_HEAD.match(path), problem
    if (m := _INDEX.match(path)) is not None:
        i = int(m.group(1))
        assert i < len(raw["endpoints"]), problem
        if m.group(2) is not None:
            assert int(m.group(2)) < len(raw["endpoints"][i]["calls"]), problem
    if path.startswith("upstreams."):
        assert path.split(".")[1] in raw["upstreams"], problem


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_configs)
def test_generated_configs_name_every_problem_or_build_a_documented_gateway(
    raw: dict[str, Any]
) -> None:
    config, error = _attempt(parse_config, raw, env={})
    if error is not None:
        assert isinstance(error, ConfigError), error
        assert error.problems
        for problem in error.problems:
            _problem_is_rooted_in(problem, raw)
        return
    assert isinstance(config, Config)
    plans = compile_plans(config)
    for plan in plans:
        done: set[str] = set()
        for call in plan.order:
            assert set(call.deps) <= done  # every call after the calls it needs
            done.add(call.name)
    gw = Gateway(config)
    doc = document(gw.config, gw.router)
    for plan in plans:
        op = doc["paths"][openapi_path(plan.route)][plan.method.lower()]
        declared = {p["name"] for p in op["parameters"] if p.get("in") == "path"}
        assert declared == set(route_params(plan.route))
    schemathesis.openapi.from_dict(doc).validate()


@pytest.mark.parametrize("route", ["/a/<int:id>", "/f/<uuid:u>/<any(x,y):k>", "/c"])
def test_a_minimal_generated_shape_builds(route: str) -> None:
    """The success branch above is reachable: a config of the generated shape that is valid."""
    params = route_params(route)
    path = "/" + "/".join("{" + p + "}" for p in params) if params else "/x"
    config = parse_config({"upstreams": {"users": {"url": "http://127.0.0.1:9001"}},
                           "endpoints": [{"route": route, "calls": [
                               {"name": "c0", "upstream": "users", "path": path}]}]}, env={})
    assert document(config, Gateway(config).router)["paths"]
