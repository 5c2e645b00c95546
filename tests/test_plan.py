"""plan.py: an endpoint compiled into a DAG of call templates, with request checks and hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import ConfigError, RequestError
from gateway.hooks import import_hook
from gateway.plan import CallPlan, Plan, compile_plan, compile_plans, topological
from gateway.template import Inputs

ROOT = Path(__file__).resolve().parents[1]


def plan_of(*calls: dict[str, Any], route: str = "/r/<int:user_id>", **endpoint: Any) -> Plan:
    raw = {
        "upstreams": {"u": {"url": "http://127.0.0.1:9001"}},
        "endpoints": [{"route": route, "calls": list(calls), **endpoint}],
    }
    (plan,) = compile_plans(parse_config(raw, env={}))
    return plan


def call(name: str, path: str = "/x", **keys: Any) -> dict[str, Any]:
    return {"name": name, "upstream": "u", "path": path, **keys}


def inputs(params: dict[str, Any] | None = None, query: dict[str, str] | None = None,
           headers: dict[str, str] | None = None, body: Any = None,
           results: dict[str, Any] | None = None) -> Inputs:
    return Inputs(params or {}, query or {}, headers or {}, body, results or {})


def names(calls: tuple[CallPlan, ...]) -> list[str]:
    return [c.name for c in calls]


# -- dependencies and order ---------------------------------------------------------------------


def test_dependencies_are_found_in_path_query_body_and_batch_key() -> None:
    plan = plan_of(
        call("a"), call("b"), call("c"),
        call("d", path="/d/{a.id}", query={"x": "{b.id}", "y": "{a.id}"}, method="POST",
             body={"z": ["{c.id}"], "w": "{query.w}"}),
    )
    by_name = {c.name: c for c in plan.calls}
    assert by_name["d"].deps == ("a", "b", "c")
    assert by_name["a"].deps == ()


def test_order_puts_every_call_after_the_calls_it_needs() -> None:
    plan = plan_of(call("account", path="/a/{user.account_id}"), call("orders"),
                   call("user"), call("invoice", path="/i/{account.id}/{user.id}"))
    assert names(plan.calls) == ["account", "orders", "user", "invoice"]  # config order kept
    assert names(plan.order) == ["orders", "user", "account", "invoice"]
    seen: set[str] = set()
    for c in plan.order:
        assert set(c.deps) <= seen
        seen.add(c.name)


def test_independent_calls_keep_config_order() -> None:
    plan = plan_of(call("c"), call("a"), call("b"))
    assert names(plan.order) == ["c", "a", "b"]


_NAMES = [f"c{i}" for i in range(8)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sets(st.integers(0, 7), max_size=3), min_size=8, max_size=8))
def test_topological_order_respects_any_dag(edges: list[set[int]]) -> None:
    # Only depend on lower indexes (a DAG), then present the calls in reverse.
    calls = [call(_NAMES[i], path="/" + "/".join(f"{{{_NAMES[d]}.id}}" for d in sorted(deps)
                                                 if d < i) or "/x")
             for i, deps in enumerate(edges)]
    plan = plan_of(*reversed(calls))
    position = {c.name: i for i, c in enumerate(plan.order)}
    assert sorted(position) == sorted(_NAMES)
    for c in plan.order:
        assert all(position[d] < position[c.name] for d in c.deps)


def test_topological_refuses_a_cycle() -> None:
    a, b = plan_of(call("a"), call("b")).calls
    looped = (CallPlan(**{**_fields(a), "deps": ("b",)}),
              CallPlan(**{**_fields(b), "deps": ("a",)}))
    with pytest.raises(ValueError, match="dependency cycle"):
        topological(looped)


def _fields(c: CallPlan) -> dict[str, Any]:
    return {name: getattr(c, name) for name in CallPlan.__slots__}


# -- select / rename --------------------------------------------------------------------------


def test_select_then_rename_on_an_object() -> None:
    (c,) = plan_of(call("user", select=["id", "name", "missing"],
                        rename={"name": "full_name", "id": "user_id"})).calls
    got = c.shape({"id": 7, "name": "Ada", "password": "x"})
    assert got == {"user_id": 7, "full_name": "Ada"}


def test_select_and_rename_apply_to_each_object_of_a_list() -> None:
    (c,) = plan_of(call("orders", select=["id", "total"], rename={"total": "amount"})).calls
    got = c.shape([{"id": 1, "total": 9.5, "secret": 1}, {"id": 2}, "not-an-object", 3])
    assert got == [{"id": 1, "amount": 9.5}, {"id": 2}, "not-an-object", 3]


def test_rename_alone_keeps_every_field() -> None:
    (c,) = plan_of(call("user", rename={"name": "full_name"})).calls
    assert c.shape({"id": 1, "name": "Ada"}) == {"id": 1, "full_name": "Ada"}


def test_empty_select_keeps_nothing() -> None:
    (c,) = plan_of(call("user", select=[])).calls
    assert c.shape({"id": 1}) == {}


def test_without_select_or_rename_data_is_untouched() -> None:
    (c,) = plan_of(call("user")).calls
    data = {"id": 1}
    assert c.shape(data) is data
    assert c.shape("scalar") == "scalar"


# -- rendering --------------------------------------------------------------------------------


def test_render_url_encodes_path_and_query_values() -> None:
    (c,) = plan_of(call("user", path="/users/{user_id}/{query.tab}",
                        query={"q": "{query.q}", "a b": "x", "page": 2})).calls
    url = c.render_url(inputs(params={"user_id": 7}, query={"tab": "a/b", "q": "x&y=z#f"}))
    assert url == "/users/7/a%2Fb?q=x%26y%3Dz%23f&a%20b=x&page=2"


def test_render_url_without_query_has_no_question_mark() -> None:
    (c,) = plan_of(call("user", path="/users/{user_id}")).calls
    assert c.render_url(inputs(params={"user_id": 3})) == "/users/3"


_SEARCH = plan_of(call("s", path="/search", query={"q": "{query.q}", "n": "1"})).calls[0]


@settings(max_examples=200, deadline=None)
@given(st.text().filter(lambda s: not any(ch in s for ch in "\r\n\0")))
def test_any_query_value_round_trips_as_one_parameter(raw: str) -> None:
    url = _SEARCH.render_url(inputs(query={"q": raw}))
    parts = urlsplit("http://h" + url)
    assert parts.path == "/search"
    assert not parts.fragment
    assert parse_qsl(parts.query, keep_blank_values=True) == [("q", raw), ("n", "1")]


# -- request checks ---------------------------------------------------------------------------


def _checked_plan() -> Plan:
    return plan_of(
        call("user", path="/users/{user_id}/{query.tab}", query={"v": "{header.x-v}"}),
        call("orders", path="/orders/{user.id}", method="POST", body={"note": "{body.note}"}),
    )


def test_check_request_passes_when_every_request_value_is_there() -> None:
    _checked_plan().check_request(inputs(params={"user_id": 1}, query={"tab": "t"},
                                         headers={"x-v": "1"}, body={"note": {"any": "json"}}))


@pytest.mark.parametrize(
    ("query", "headers", "body", "message"),
    [
        ({}, {"x-v": "1"}, {"note": 1},
         "missing query parameter 'tab' (needed by call 'user')"),
        ({"tab": "t"}, {}, {"note": 1},
         "missing header 'x-v' (needed by call 'user')"),
        ({"tab": "t"}, {"x-v": "1"}, {},
         "missing body field 'body.note' (needed by call 'orders')"),
        ({"tab": "t"}, {"x-v": "1"}, None,
         "missing body field 'body.note' (needed by call 'orders')"),
        ({"tab": ".."}, {"x-v": "1"}, {"note": 1},
         "value of {query.tab} is a '.' or '..' path segment"),
        ({"tab": "t"}, {"x-v": "a\r\nb"}, {"note": 1},
         "value of {header.x-v} contains CR, LF or NUL"),
    ],
)
def test_check_request_refuses_bad_input_before_any_call(
    query: dict[str, str], headers: dict[str, str], body: Any, message: str
) -> None:
    with pytest.raises(RequestError) as info:
        _checked_plan().check_request(inputs(params={"user_id": 1}, query=query,
                                             headers=headers, body=body))
    assert (info.value.status, str(info.value)) == (400, message)


def test_dots_in_a_query_value_pass_the_check() -> None:
    plan_of(call("s", query={"q": "{query.q}"})).check_request(inputs(query={"q": ".."}))


def test_check_request_ignores_values_from_replies() -> None:
    plan_of(call("user"), call("b", path="/b/{user.missing}")).check_request(inputs())


def test_needs_body_only_when_a_body_field_is_used() -> None:
    assert not plan_of(call("a", query={"q": "{query.q}"})).needs_body
    assert plan_of(call("a", query={"q": "{body.q}"})).needs_body
    assert plan_of(call("a", method="POST", body={"q": "{body.q}"})).needs_body


def test_plan_carries_route_method_strategy_deadline_and_call_settings() -> None:
    plan = plan_of(call("a", optional=True, default={"x": 1}), call("b", method="put"),
                   method="post", strategy="sequential", deadline=2)
    assert (plan.route, plan.method, plan.strategy, plan.deadline) == (
        "/r/<int:user_id>", "POST", "sequential", 2.0)
    a, b = plan.calls
    assert (a.optional, a.default, a.method, a.upstream) == (True, {"x": 1}, "GET", "u")
    assert (b.optional, b.default, b.method) == (False, None, "PUT")


# -- combine hooks ----------------------------------------------------------------------------


def _hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_combine_hook_is_imported_and_its_kind_detected(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _hook_module(tmp_path, monkeypatch, "gw_test_hooks_ok",
                 "def sync(r, c):\n    return r\n\nasync def later(r, c):\n    return r\n")
    sync = plan_of(call("a"), combine="gw_test_hooks_ok:sync")
    later = plan_of(call("a"), combine="gw_test_hooks_ok:later")
    assert sync.combine is not None
    assert sync.combine({"a": 1}, None) == {"a": 1}
    assert (sync.combine_is_async, later.combine_is_async) == (False, True)
    assert plan_of(call("a")).combine is None


def test_combine_import_errors_become_config_errors_with_key_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # for examples.dashboard
    _hook_module(tmp_path, monkeypatch, "gw_test_hooks_attrs", "value = 1\n")
    _hook_module(tmp_path, monkeypatch, "gw_test_hooks_syntax", "def broken(:\n")
    _hook_module(tmp_path, monkeypatch, "gw_test_hooks_raises", "raise RuntimeError('boom')\n")
    raw = {
        "upstreams": {"u": {"url": "http://h"}},
        "endpoints": [
            {"route": f"/e{i}", "combine": hook, "calls": [call("a")]}
            for i, hook in enumerate([
                "examples.dashboard:combine",
                "gw_test_no_such_module:f",
                "gw_test_hooks_attrs:nope",
                "gw_test_hooks_attrs:value",
                "gw_test_hooks_syntax:f",
                "gw_test_hooks_raises:f",
            ])
        ],
    }
    with pytest.raises(ConfigError) as info:
        compile_plans(parse_config(raw, env={}))
    found = info.value.problems
    assert len(found) == 5
    assert found[0].startswith("endpoints[1].combine: cannot import module "
                               "'gw_test_no_such_module'")
    assert found[1] == "endpoints[2].combine: module 'gw_test_hooks_attrs' has no 'nope'"
    assert found[2] == "endpoints[3].combine: 'gw_test_hooks_attrs:value' is not callable"
    assert found[3].startswith("endpoints[4].combine: cannot import module "
                               "'gw_test_hooks_syntax': SyntaxError")
    assert found[4] == ("endpoints[5].combine: cannot import module 'gw_test_hooks_raises': "
                        "RuntimeError: boom")


def test_import_hook_returns_the_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from examples.dashboard import combine

    assert import_hook("examples.dashboard:combine") is combine


def test_compile_plan_takes_an_already_imported_hook() -> None:
    async def hook(results: dict[str, Any], ctx: Any) -> Any:
        return results

    endpoint = parse_config({"upstreams": {"u": {"url": "http://h"}},
                             "endpoints": [{"route": "/x", "calls": [call("a")]}]},
                            env={}).endpoints[0]
    plan = compile_plan(endpoint, hook)
    assert plan.combine is hook
    assert plan.combine_is_async
