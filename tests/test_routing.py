"""routing.py: (path, method) -> plan or code view, with 404/405 as RequestErrors."""

from __future__ import annotations

import uuid
from typing import Any, cast

import pytest

from gateway.config import RESERVED_PREFIXES, parse_config
from gateway.errors import RequestError
from gateway.fan import Fan
from gateway.plan import Plan, compile_plans
from gateway.routing import CodeView, Router, check_route


def plans(*routes: str | tuple[str, str]) -> tuple[Plan, ...]:
    endpoints = []
    for route in routes:
        path, method = (route, "GET") if isinstance(route, str) else route
        endpoints.append({"route": path, "method": method,
                          "calls": [{"name": "a", "upstream": "u", "path": "/a"}]})
    raw = {"upstreams": {"u": {"url": "http://h"}}, "endpoints": endpoints}
    return compile_plans(parse_config(raw, env={}))


async def _view(fan: Fan, **params: Any) -> Any:
    return {"params": params}


def view(route: str, methods: tuple[str, ...] = ("GET",)) -> CodeView:
    return CodeView(route, methods, _view)


def error_of(router: Router, path: str, method: str = "GET") -> RequestError:
    with pytest.raises(RequestError) as info:
        router.match(path, method)
    return info.value


def test_match_returns_the_plan_and_converted_params() -> None:
    router = Router(plans("/dashboard/<int:user_id>", "/posts/<slug>"))
    target, params = router.match("/dashboard/7", "GET")
    assert isinstance(target, Plan)
    assert target.route == "/dashboard/<int:user_id>"
    assert params == {"user_id": 7}
    assert isinstance(params["user_id"], int)
    assert router.match("/posts/hello-world", "GET")[1] == {"slug": "hello-world"}


def test_unknown_path_is_a_404() -> None:
    error = error_of(Router(plans("/dashboard/<int:user_id>")), "/nope")
    assert (error.status, str(error)) == (404, "no endpoint for GET /nope")


def test_wrong_method_is_a_405_naming_the_allowed_ones() -> None:
    router = Router(plans("/orders", ("/orders", "POST")))
    error = error_of(router, "/orders", "DELETE")
    assert (error.status, str(error)) == (
        405, "DELETE is not allowed on /orders (allowed: GET, HEAD, POST)")


def test_same_route_different_methods_reach_different_plans() -> None:
    router = Router(plans("/orders", ("/orders", "POST")))
    assert cast(Plan, router.match("/orders", "GET")[0]).method == "GET"
    assert cast(Plan, router.match("/orders", "POST")[0]).method == "POST"


def test_head_is_served_by_a_get_endpoint() -> None:
    assert cast(Plan, Router(plans("/orders")).match("/orders", "HEAD")[0]).method == "GET"


@pytest.mark.parametrize("path", ["/dashboard/abc", "/dashboard/-1", "/dashboard/1.5",
                                  "/dashboard/", "/dashboard/7/extra"])
def test_int_converter_refuses_what_is_not_a_non_negative_integer(path: str) -> None:
    assert error_of(Router(plans("/dashboard/<int:user_id>")), path).status == 404


def test_converters_give_typed_params() -> None:
    router = Router(plans("/f/<float:x>", "/u/<uuid:id>", "/p/<path:rest>",
                          "/s/<int(signed=True):n>"))
    assert router.match("/f/1.5", "GET")[1] == {"x": 1.5}
    some = uuid.uuid4()
    assert router.match(f"/u/{some}", "GET")[1] == {"id": some}
    assert router.match("/p/a/b/c.txt", "GET")[1] == {"rest": "a/b/c.txt"}
    assert router.match("/s/-3", "GET")[1] == {"n": -3}


def test_default_converter_stops_at_a_slash() -> None:
    assert error_of(Router(plans("/posts/<slug>")), "/posts/a/b").status == 404


def test_trailing_slash_is_tolerated_and_not_redirected() -> None:
    router = Router(plans("/orders", "/dir/"))
    assert router.match("/orders/", "GET")[1] == {}
    assert router.match("/dir", "GET")[1] == {}


def test_empty_segments_are_not_merged() -> None:
    assert error_of(Router(plans("/a/<int:x>")), "/a//7").status == 404


# -- code views -------------------------------------------------------------------------------


async def test_code_view_is_matched_and_called_with_params_as_keywords() -> None:
    router = Router(plans("/dashboard/<int:user_id>"), [view("/overview/<int:user_id>")])
    target, params = router.match("/overview/9", "GET")
    assert isinstance(target, CodeView)
    assert await target(cast(Fan, None), params) == {"params": {"user_id": 9}}
    assert router.views == (target,)


def test_with_view_returns_a_new_router_and_leaves_the_old_one_alone() -> None:
    old = Router(plans("/a"))
    new = old.with_view(view("/b", ("GET", "POST")))
    assert error_of(old, "/b").status == 404
    assert isinstance(new.match("/b", "POST")[0], CodeView)
    assert isinstance(new.match("/a", "GET")[0], Plan)
    assert len(new.targets) == 2
    assert len(old.targets) == 1


@pytest.mark.parametrize(
    "route",
    ["/healthz", "/readyz", "/metrics", "/jobs", "/jobs/<id>", "/ws", "/_gateway",
     "/_gateway/api/recent"],
)
def test_reserved_routes_are_refused_for_code_views(route: str) -> None:
    with pytest.raises(ValueError, match="is reserved for the gateway"):
        Router(plans("/a"), [view(route)])
    with pytest.raises(ValueError, match="is reserved for the gateway"):
        Router(plans("/a")).with_view(view(route))


def test_check_route_covers_every_reserved_prefix_and_nothing_more() -> None:
    for prefix in RESERVED_PREFIXES:
        with pytest.raises(ValueError, match=f"route '{prefix}/x' is reserved"):
            check_route(prefix + "/x")
    for fine in ("/jobsearch", "/wsx", "/metrics2", "/api/healthz", "/"):
        check_route(fine)


def test_a_code_view_on_a_plan_route_with_another_method_coexists() -> None:
    router = Router(plans("/orders"), [view("/orders", ("POST",))])
    assert isinstance(router.match("/orders", "GET")[0], Plan)
    assert isinstance(router.match("/orders", "POST")[0], CodeView)


def test_allowed_names_every_method_a_path_is_served_with_and_a_target() -> None:
    router = Router(plans("/orders", ("/orders", "POST"), "/users/<int:id>"))
    methods, target = router.allowed("/orders")
    assert methods == {"GET", "HEAD", "POST"}
    assert target is not None
    assert target.route == "/orders"
    assert router.allowed("/users/7")[0] == {"GET", "HEAD"}
    assert router.allowed("/users/x") == (frozenset(), None)  # the converter refuses it
    bounded = Router(plans("/n/<int(min=1, max=99):n>"))
    assert bounded.allowed("/n/99")[0] == {"GET", "HEAD"}
    assert bounded.allowed("/n/100") == (frozenset(), None)  # werkzeug alone says GET, HEAD
    assert router.allowed("/nope") == (frozenset(), None)


@pytest.mark.parametrize("path", ["/posts/a\r\nb", "/posts/a\nb", "/posts/a\x00", "/files/x/\n"])
def test_a_path_holding_cr_lf_or_nul_is_a_400_not_a_404(path: str) -> None:
    router = Router(plans("/posts/<slug>", "/files/<path:rest>"))
    error = error_of(router, path)
    assert (error.status, str(error)) == (
        400, "request path holds CR, LF or NUL (percent-decoded)")
