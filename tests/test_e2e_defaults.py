"""Placeholder defaults, omitted query parameters, `{body}`/`{CALL}` whole, and optional
calls skipped for a missing request value, end to end against real upstreams on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, echo, endpoint, make_config, reply
from webserver import Request, Response, json_response

from gateway import Fan, Gateway


async def json_of(response: Any) -> dict[str, Any]:
    data = await response.get_json()
    assert isinstance(data, dict)
    return data


def timing_names(response: Any) -> list[str]:
    return [p.split(";")[0].strip() for p in response.headers["Server-Timing"].split(",")]


async def test_defaults_fill_in_and_question_mark_leaves_the_parameter_out(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    search = await upstream(echo)
    client = await gateway_client(make_config(
        {"search": search},
        endpoint("/find", call("hits", "search", "/v/{header.x-api-version:-1}/search",
                               query={"q": "{query.q?}", "sort": "{query.sort:-relevance}",
                                      "page": "{query.page:-1}"}))))

    response = await client.get("/find")
    assert response.status_code == 200
    assert search.last.path == "/v/1/search"
    assert search.last.raw_query == "sort=relevance&page=1"  # no q at all, not "q="

    response = await client.get("/find?q=red%20shoes&sort=price&page=3",
                                headers={"X-Api-Version": "2"})
    assert response.status_code == 200
    assert search.last.path == "/v/2/search"
    assert search.last.raw_query == "q=red%20shoes&sort=price&page=3"

    response = await client.get("/find?q=")  # present but empty: sent as it came
    assert search.last.raw_query == "q=&sort=relevance&page=1"


async def test_optional_call_without_its_request_value_is_skipped_not_a_400(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7}))
    search = await upstream(reply({"items": ["x"]}))
    client = await gateway_client(make_config(
        {"users": users, "search": search},
        endpoint("/page/<int:user_id>",
                 call("user", "users", "/users/{user_id}"),
                 call("search", "search", "/search", query={"q": "{query.q}"},
                      optional=True, default={"items": []}))))

    for strategy in ("parallel", "sequential"):
        response = await client.get("/page/7", headers={"X-Gateway-Strategy": strategy})
        assert response.status_code == 200
        body = await json_of(response)
        assert body["data"] == {"user": {"id": 7}, "search": {"items": []}}
        assert body["meta"]["calls"]["search"] == {"skipped": True, "ok": True}
        assert body["meta"]["complete"] is True  # a skipped call counts as ok
        assert body["meta"]["strategy"] == strategy
        assert timing_names(response) == ["user", "total"]
    assert search.requests == 0  # never sent
    assert users.requests == 2

    response = await client.get("/page/7?q=boots")
    body = await json_of(response)
    assert body["data"]["search"] == {"items": ["x"]}
    assert body["meta"]["calls"]["search"]["ok"] is True
    assert search.requests == 1
    assert search.last.raw_query == "q=boots"


async def test_a_required_call_still_needs_its_value_even_beside_a_skipped_one(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": up},
        endpoint("/p", call("needs", "up", "/a", query={"t": "{header.x-tenant}"}),
                 call("extra", "up", "/b", query={"q": "{query.q}"}, optional=True))))
    response = await client.get("/p")
    assert response.status_code == 400
    assert (await json_of(response))["error"] == \
        "missing header 'x-tenant' (needed by call 'needs')"
    await asyncio.sleep(0.05)
    assert up.requests == 0


async def test_an_optional_call_with_a_bad_value_is_still_a_400(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": up}, endpoint("/p", call("a", "up", "/a"),
                             call("extra", "up", "/items/{query.id}", optional=True))))
    response = await client.get("/p?id=..")
    assert response.status_code == 400
    assert "path segment" in (await json_of(response))["error"]
    assert up.requests == 0


async def test_dependents_of_a_skipped_call_read_its_default(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": up},
        endpoint("/p",
                 call("prefs", "up", "/prefs", query={"u": "{header.x-user}"}, optional=True,
                      default={"lang": "en"}),
                 call("texts", "up", "/texts/{prefs.lang}"))))
    response = await client.get("/p")
    assert response.status_code == 200
    body = await json_of(response)
    assert body["meta"]["calls"]["prefs"] == {"skipped": True, "ok": True}
    assert body["data"]["texts"]["path"] == "/texts/en"
    assert up.requests == 1


async def test_whole_body_and_whole_reply_go_into_a_body_template(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "tier": "pro", "tags": ["a", "b"]}))
    orders = await upstream(echo)
    client = await gateway_client(make_config(
        {"users": users, "orders": orders},
        endpoint("/order", call("user", "users", "/me"),
                 call("placed", "orders", "/orders", method="POST",
                      body={"order": "{body}", "customer": "{user}",
                            "note": "{body.note:-none}"}),
                 method="POST")))
    sent = {"items": [{"sku": "A1", "qty": 2}], "gift": True}
    response = await client.post("/order", json=sent)
    assert response.status_code == 200
    got = (await json_of(response))["data"]["placed"]["body"]
    assert got == {"order": sent, "customer": {"id": 7, "tier": "pro", "tags": ["a", "b"]},
                   "note": "none"}


async def test_an_optional_call_needing_the_body_is_skipped_without_one(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    audit = await upstream(echo)
    main = await upstream(reply({"ok": 1}))
    client = await gateway_client(make_config(
        {"audit": audit, "main": main},
        endpoint("/act", call("main", "main", "/go"),
                 call("audit", "audit", "/log", method="POST", body={"event": "{body}"},
                      optional=True),
                 method="POST")))
    response = await client.post("/act")
    assert response.status_code == 200
    body = await json_of(response)
    assert body["meta"]["calls"]["audit"] == {"skipped": True, "ok": True}
    assert body["data"]["audit"] is None
    assert audit.requests == 0


async def test_a_view_call_described_but_never_run_shows_as_skipped(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "tier": "free"}))
    extras = await upstream(reply({"perks": ["x"]}))
    gw = Gateway(make_config({"users": users, "extras": extras}))

    @gw.aggregate("/v/<int:user_id>")
    async def view(fan: Fan, user_id: int) -> dict[str, Any]:
        perks = fan.get("extras", "/perks", optional=True, default=[], name="perks")
        user = await fan.get("users", f"/users/{user_id}", name="user")
        if user["tier"] == "pro":
            return {"user": user, "perks": await perks}
        return {"user": user}

    client = await gateway_client(gw)
    response = await client.get("/v/7")
    assert response.status_code == 200
    body = await json_of(response)
    assert body["meta"]["calls"]["perks"] == {"skipped": True, "ok": True}
    assert body["meta"]["complete"] is True
    assert timing_names(response) == ["user", "total"]
    assert extras.requests == 0


async def test_openapi_marks_defaulted_and_skippable_values_not_required(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    client = await gateway_client(make_config(
        {"up": up},
        endpoint("/p", call("a", "up", "/a", query={"need": "{query.need}",
                                                   "d": "{query.d:-x}", "o": "{query.o?}"}),
                 call("b", "up", "/b", query={"s": "{query.s}", "need": "{query.need}"},
                      optional=True))))
    doc = await json_of(await client.get("/_gateway/openapi.json"))
    params = {p["name"]: p["required"] for p in doc["paths"]["/p"]["get"]["parameters"]
              if "name" in p}
    assert params == {"need": True, "d": False, "o": False, "s": False}


@pytest.mark.parametrize("strategy", ["parallel", "sequential"])
async def test_a_skipped_call_that_depends_on_another_is_never_sent(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, strategy: str
) -> None:
    calls: list[str] = []

    async def slow(request: Request) -> Response:
        calls.append(request.path)
        await asyncio.sleep(0.2)
        return json_response({"id": 1})

    up = await upstream(slow)
    client = await gateway_client(make_config(
        {"up": up},
        endpoint("/p", call("first", "up", "/first"),
                 call("then", "up", "/then/{first.id}", query={"q": "{query.q}"},
                      optional=True))))
    response = await client.get("/p", headers={"X-Gateway-Strategy": strategy})
    body = await json_of(response)
    assert body["meta"]["calls"]["then"] == {"skipped": True, "ok": True}
    assert calls == ["/first"]
