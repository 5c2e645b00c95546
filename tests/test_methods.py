"""methods.py: the `Allow` header's value, and the methods the gateway's own routes serve."""

from __future__ import annotations

import pytest
from quart import Quart

from gateway.methods import allow_header, builtin_methods


@pytest.mark.parametrize(
    ("methods", "header"),
    [
        ({"GET", "HEAD"}, "GET, HEAD, OPTIONS"),
        ({"POST"}, "POST, OPTIONS"),
        ({"DELETE", "GET", "PATCH", "PUT", "HEAD", "POST"},
         "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        ({"OPTIONS", "GET"}, "GET, OPTIONS"),
        ({"BREW", "GET"}, "GET, OPTIONS, BREW"),
        (set(), "OPTIONS"),
    ],
)
def test_allow_header_lists_methods_in_a_fixed_order_with_options(
    methods: set[str], header: str
) -> None:
    assert allow_header(methods) == header


async def _view() -> str:
    return ""


def _app() -> Quart:
    app = Quart(__name__)
    app.add_url_rule("/healthz", "healthz", _view, methods=["GET"])
    app.add_url_rule("/jobs/<job_id>", "job", _view, methods=["GET", "DELETE"])
    app.add_url_rule("/ws", "ws", _view, websocket=True)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app.add_url_rule("/", "aggregate_root", _view, methods=methods)
    app.add_url_rule("/<path:_path>", "aggregate", _view, methods=methods)
    return app


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/healthz", {"GET", "HEAD"}),
        ("/jobs/abc", {"GET", "HEAD", "DELETE"}),
        ("/ws", set()),  # a WebSocket route serves no HTTP method
        ("/items/a", set()),  # only the catch-all: the router's to answer
        ("/", set()),
    ],
)
def test_builtin_methods_ignore_the_catch_all(path: str, methods: set[str]) -> None:
    assert builtin_methods(_app().url_map, path) == methods
