"""`/_gateway/openapi.json`: what the document says, and schemathesis holding the app to it.

The schemathesis run is in-process (ASGI, schemathesis' own event-loop thread) with real
upstreams on loopback behind the gateway, served from a second thread's event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import (
    GatewayClientFactory,
    RecordingServer,
    UpstreamFactory,
    call,
    echo,
    endpoint,
    make_config,
    reply,
)

from gateway import Fan, Gateway
from gateway.openapi import PATH, document, openapi_path, route_schemas
from gateway.template import path_value_problem

T = TypeVar("T")


def _config(up: str, flaky: str, **gateway: Any) -> dict[str, Any]:
    return make_config(
        {"up": {"url": up, "timeout": 2.0}, "flaky": {"url": flaky, "timeout": 2.0,
                                                     "breaker": {"failures": 3, "reset": 60}}},
        endpoint("/users/<int:user_id>",
                 call("user", "up", "/users/{user_id}", query={"verbose": "{query.verbose}"}),
                 call("orders", "flaky", "/orders", query={"user": "{user_id}"},
                      optional=True, default=[])),
        endpoint("/items/<name>/<uuid:token>",
                 call("item", "up", "/items/{name}/{token}/{header.x-tenant}")),
        endpoint("/orders", call("order", "up", "/orders/{body.id}", method="POST",
                                 body={"note": "{body.note}", "who": "{body.user.name}",
                                       "all": "{body.meta}"}),
                 method="POST"),
        endpoint("/files/<path:rest>", call("file", "up", "/files/{rest}")),
        endpoint("/kinds/<any(a, b):kind>/<float:ratio>/<int(min=1, max=99):n>",
                 call("kinds", "up", "/k/{kind}/{ratio}/{n}")),
        endpoint("/broken", call("broken", "flaky", "/broken")),
        **gateway,
    )


# -- the document --------------------------------------------------------------------------


def _doc(**gateway: Any) -> dict[str, Any]:
    gw = Gateway(_config("http://127.0.0.1:9", "http://127.0.0.1:9", **gateway))
    return document(gw.config, gw.router)


def test_document_is_valid_openapi_3_1() -> None:
    doc = _doc()
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # the OAS 3.1 meta-schema
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_route_parameters_carry_their_converter_types() -> None:
    params = {p["name"]: p for p in
              _doc()["paths"]["/kinds/{kind}/{ratio}/{n}"]["get"]["parameters"]
              if "name" in p}
    assert params["kind"]["schema"] == {"type": "string", "enum": ["a", "b"]}
    assert params["ratio"]["schema"]["format"] == "decimal"
    assert params["n"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 99}
    assert all(p["in"] == "path" and p["required"] for p in params.values())


@pytest.mark.parametrize(
    ("route", "path", "schemas"),
    [
        ("/a/<int:x>", "/a/{x}", {"x": {"type": "integer", "minimum": 0}}),
        ("/a/<int(signed=True):x>", "/a/{x}", {"x": {"type": "integer"}}),
        ("/a/<uuid:x>", "/a/{x}", {"x": {"type": "string", "format": "uuid"}}),
        ("/a/<x>/<string(length=2):y>", "/a/{x}/{y}",
         {"x": {"type": "string", "pattern": "^(?![\\s\\S]*[\\r\\n\\x00])(?:[^/]{1,})$"},
          "y": {"type": "string", "pattern": "^(?![\\s\\S]*[\\r\\n\\x00])(?:[^/]{2})$"}}),
        ("/p/<path:rest>", "/p/{rest}",
         {"rest": {"type": "string", "pattern": "^(?![\\s\\S]*[\\r\\n\\x00])(?:[^/].*?)$"}}),
    ],
)
def test_converters_map_to_schemas(route: str, path: str,
                                   schemas: dict[str, dict[str, Any]]) -> None:
    assert openapi_path(route) == path
    assert route_schemas(route) == schemas


def test_placeholders_become_parameters_and_a_body_schema() -> None:
    paths = _doc()["paths"]
    users = {p.get("name"): p for p in paths["/users/{user_id}"]["get"]["parameters"]}
    assert users["verbose"] == {"name": "verbose", "in": "query", "required": True,
                                "schema": {"type": "string",
                                           "pattern": "^(?![\\s\\S]*[\\r\\n\\x00])"},
                                "description": "fills {query.verbose}"}
    items = {p.get("name"): p for p in paths["/items/{name}/{token}"]["get"]["parameters"]}
    assert items["x-tenant"]["in"] == "header"
    assert items["x-tenant"]["required"] is True
    body = paths["/orders"]["post"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["type"] == "object"
    assert set(schema["required"]) == {"id", "note", "user", "meta"}
    assert schema["properties"]["id"]["type"] == ["string", "number", "boolean"]  # in a URL
    assert schema["properties"]["meta"] == {"not": {"type": "null"}}  # any JSON but null
    assert schema["properties"]["user"]["required"] == ["name"]


_DOTTED = st.lists(st.sampled_from(["", ".", "..", "...", "a", " ", "\t", "\n"]), min_size=1,
                   max_size=4).map("/".join)


def _patterns() -> dict[str, str]:
    paths = _doc()["paths"]

    def param(path: str, name: str) -> str:
        (found,) = [p for p in paths[path]["get"]["parameters"] if p.get("name") == name]
        pattern: str = found["schema"]["pattern"]
        return pattern

    body = paths["/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {"route": param("/items/{name}/{token}", "name"),
            "path": param("/files/{rest}", "rest"),
            "header": param("/items/{name}/{token}", "x-tenant"),
            "query": param("/users/{user_id}", "verbose"),
            "body": body["properties"]["id"]["pattern"]}


PATTERNS = _patterns()


@settings(max_examples=400, deadline=None)
@given(text=st.text() | _DOTTED)
def test_value_patterns_accept_exactly_what_the_gateway_serves(text: str) -> None:
    """The document's patterns against the gateway's own rules, on any text."""
    clean = not any(ch in text for ch in "\r\n\0")
    in_path = clean and path_value_problem(text) is None
    assert bool(re.search(PATTERNS["query"], text)) == clean
    assert bool(re.search(PATTERNS["body"], text)) == in_path
    assert bool(re.search(PATTERNS["route"], text)) == (in_path and "/" not in text)
    assert bool(re.search(PATTERNS["path"], text)) == (in_path and not text.startswith("/"))
    header_ok = clean and path_value_problem(text.strip(" \t")) is None
    assert bool(re.search(PATTERNS["header"], text)) == header_ok


def test_request_id_is_documented_as_replaced_not_refused() -> None:
    doc = _doc()
    request_id = doc["components"]["parameters"]["RequestId"]
    assert "pattern" not in request_id["schema"]
    assert "replaced by a fresh id" in request_id["description"]


def test_every_path_documents_options_with_allow_and_no_trace() -> None:
    doc = _doc()
    for path, item in doc["paths"].items():
        assert item["options"]["responses"]["204"]["headers"]["Allow"], path
        assert "trace" not in item  # never served: a 405, like any method not listed
    assert "405 with `Allow`" in doc["info"]["description"]


def test_error_statuses_are_the_ones_each_endpoint_can_answer() -> None:
    paths = _doc()["paths"]
    users = paths["/users/{user_id}"]["get"]["responses"]
    assert {"200", "400", "404", "4XX", "502", "503", "504"} <= set(users)
    assert "413" not in users  # reads no body
    assert "500" not in users  # no Python code runs for it
    orders = paths["/orders"]["post"]["responses"]
    assert "413" in orders
    assert "503" not in orders  # no breaker on its upstream
    assert paths["/broken"]["get"]["responses"]["503"]["headers"]["Retry-After"]
    envelope = users["200"]["content"]["application/json"]["schema"]
    assert envelope["allOf"][1]["properties"]["data"]["required"] == ["user", "orders"]


async def test_document_is_served_and_follows_code_views(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    gw = Gateway(_config(up.url, up.url))

    @gw.aggregate("/code/<int:n>", methods=("GET", "POST"))
    async def code(fan: Fan, n: int) -> Any:
        return await fan.get("up", f"/c/{n}")

    client = await gateway_client(gw)
    response = await client.get(PATH)
    assert response.status_code == 200
    assert response.content_type == "application/json"
    doc = await response.get_json()
    item = doc["paths"]["/code/{n}"]
    assert set(item) == {"get", "post", "options"}
    assert "500" in item["get"]["responses"]  # Python code runs
    assert (await client.get(PATH)).headers["content-length"] == (
        response.headers["content-length"])


async def test_document_is_off_with_the_dashboard(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(_config(up.url, up.url, dashboard=False))
    assert (await client.get(PATH)).status_code == 404


# -- schemathesis against the in-process app -------------------------------------------------


class LoopThread:
    """An event loop in a thread, for upstreams that must outlive one `asyncio.run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def threaded_upstreams() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    thread = LoopThread()
    up, flaky = RecordingServer(echo), RecordingServer(reply({"e": 1}, status=500))
    thread.run(up.start())
    thread.run(flaky.start())
    yield up, flaky
    thread.run(up.close())
    thread.run(flaky.close())
    thread.close()


# Not schemathesis' `not_a_server_error`: 502/503/504 are the gateway's documented answers
# for a failing upstream (the "flaky" one here). A 500 is the bug this hunts for.
CHECKS = [status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    threaded_upstreams: tuple[RecordingServer, RecordingServer], mode: GenerationMode
) -> None:
    up, flaky = threaded_upstreams
    app = Gateway(_config(up.url, flaky.url)).app
    try:
        schema = schemathesis.openapi.from_asgi(PATH, app)

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code != 500, response.text
            case.validate_response(response, checks=CHECKS)

        check()
    finally:
        asgi.shutdown_lifespans()
    if mode == GenerationMode.POSITIVE:
        assert up.requests > 0  # the cases that passed the door were served
    # Negative cases now all stop at the door: the document no longer forbids what the
    # gateway accepts (an X-Request-ID outside its pattern used to be such a case).

