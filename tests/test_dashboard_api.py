"""`/_gateway/`: the page's assets and the JSON API it reads; `dashboard = false` turns all off."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
from quart.typing import TestClientProtocol as Client
from support import (
    GatewayClientFactory,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)

from gateway import Gateway
from gateway.fan import Fan


async def json_of(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await client.get(path, **kwargs)
    return response.status_code, await response.get_json()


async def run(client: Client, message: Any) -> tuple[int, Any]:
    response = await client.post("/_gateway/api/run", json=message)
    return response.status_code, await response.get_json()


async def dashboard_gateway(upstream: UpstreamFactory, **gateway: Any) -> Gateway:
    users = await upstream(reply({"id": 7, "account_id": 70}, delay=0.03))
    orders = await upstream(reply([{"total": 3}], delay=0.03))
    billing = await upstream(reply({"balance": 1}, delay=0.02))
    gw = Gateway(make_config(
        {"users": users, "orders": orders,
         "billing": {"url": billing, "breaker": {"failures": 3, "reset": 10.0}}},
        endpoint("/dash/<int:uid>",
                 call("user", "users", "/users/{uid}"),
                 call("orders", "orders", "/orders", query={"user": "{uid}"}, optional=True),
                 call("account", "billing", "/accounts/{user.account_id}")),
        **gateway,
    ))

    @gw.aggregate("/code/<int:uid>")
    async def code(fan: Fan, uid: int) -> dict[str, Any]:
        user, orders = await fan.gather(fan.get("users", f"/users/{uid}", name="user"),
                                        fan.get("orders", "/orders"))
        return {"user": user, "orders": orders}

    return gw


async def test_page_and_assets_are_served_with_a_strict_policy(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    page = await client.get("/_gateway/")
    assert page.status_code == 200
    assert page.content_type.startswith("text/html")
    html = await page.get_data(as_text=True)
    assert '<script src="dashboard.js"' in html
    assert "http://" not in html  # nothing is loaded from elsewhere
    assert "https://" not in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    for name, kind in (("dashboard.js", "text/javascript"), ("style.css", "text/css")):
        asset = await client.get(f"/_gateway/{name}")
        assert asset.status_code == 200
        assert asset.content_type.startswith(kind)
        assert b"//cdn" not in await asset.get_data()
    bare = await client.get("/_gateway")
    assert bare.status_code == 308
    assert bare.headers["Location"].endswith("/_gateway/")


async def test_overview_lists_endpoints_with_calls_and_upstreams_with_state(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    status, overview = await json_of(client, "/_gateway/api/overview")
    assert status == 200
    assert overview["gateway"]["strategy"] == "parallel"
    dash, code = overview["endpoints"]
    assert dash["route"] == "/dash/<int:uid>"
    assert dash["params"] == ["uid"]
    assert dash["kind"] == "config"
    assert [c["name"] for c in dash["calls"]] == ["user", "orders", "account"]
    account = dash["calls"][2]
    assert account["deps"] == ["user"]
    assert account["path"] == "/accounts/{user.account_id}"
    assert dash["calls"][1]["path"] == "/orders?user={uid}"
    assert dash["calls"][1]["optional"] is True
    assert (code["kind"], code["route"], code["calls"]) == ("code", "/code/<int:uid>", [])
    upstreams = {u["name"]: u for u in overview["upstreams"]}
    assert set(upstreams) == {"users", "orders", "billing"}
    assert all(u["state"] == "closed" for u in upstreams.values())
    assert upstreams["billing"]["breaker"] == {"failures": 3, "reset": 10.0}
    assert upstreams["users"]["breaker"] is None
    status, only = await json_of(client, "/_gateway/api/upstreams")
    assert status == 200
    assert [u["name"] for u in only["upstreams"]] == ["users", "orders", "billing"]


async def test_recent_lists_requests_as_they_are_served_newer_than_after(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    assert (await client.get("/dash/7")).status_code == 200
    status, first = await json_of(client, "/_gateway/api/recent")
    assert status == 200
    assert first["process"] == os.getpid()  # each worker has its own ring
    (entry,) = first["entries"]
    assert (entry["path"], entry["route"], entry["status"]) == ("/dash/7", "/dash/<int:uid>",
                                                               200)
    calls = {c["name"]: c for c in entry["calls"]}
    assert set(calls) == {"user", "orders", "account"}
    assert calls["account"]["critical"]
    assert calls["user"]["critical"]
    assert not calls["orders"]["critical"]
    assert calls["account"]["start_ms"] >= calls["user"]["start_ms"] + calls["user"][
        "elapsed_ms"] - 0.05
    assert (await client.get("/code/7", headers={"X-Gateway-Strategy": "sequential"})
            ).status_code == 200
    _, newer = await json_of(client, f"/_gateway/api/recent?after={first['last']}")
    (code,) = newer["entries"]
    assert (code["kind"], code["strategy"]) == ("code", "sequential")
    assert all(c["critical"] for c in code["calls"])  # one after the other
    _, none = await json_of(client, f"/_gateway/api/recent?after={newer['last']}")
    assert none["entries"] == []
    _, limited = await json_of(client, "/_gateway/api/recent?limit=1&after=junk")
    assert [e["path"] for e in limited["entries"]] == ["/code/7"]


async def test_run_endpoint_runs_both_strategies_and_returns_the_waterfall(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    status, parallel = await run(client, {"path": "/dash/7", "strategy": "parallel"})
    assert status == 200
    _, sequential = await run(client, {"path": "/dash/7", "strategy": "sequential"})
    assert parallel["status"] == sequential["status"] == 200
    assert parallel["entry"]["strategy"] == "parallel"
    assert sequential["entry"]["strategy"] == "sequential"
    assert parallel["body"]["data"]["user"] == {"id": 7, "account_id": 70}
    assert len(parallel["entry"]["calls"]) == 3
    # user -> account chained, orders alongside: parallel saves about one orders call.
    assert parallel["entry"]["total_ms"] < sequential["entry"]["total_ms"]
    _, recent = await json_of(client, "/_gateway/api/recent")
    assert [e["strategy"] for e in recent["entries"]] == ["parallel", "sequential"]
    _, configured = await run(client, {"path": "/code/3"})
    assert configured["entry"]["strategy"] == "parallel"
    assert configured["entry"]["kind"] == "code"


async def test_run_endpoint_with_cache_false_reaches_the_upstreams_and_stores_nothing(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "account_id": 70}))
    billing = await upstream(reply({"balance": 1}))
    gw = Gateway(make_config(
        {"users": {"url": users, "cache_ttl": 60}, "billing": {"url": billing, "cache_ttl": 60}},
        endpoint("/dash/<int:uid>", call("user", "users", "/users/{uid}"),
                 call("account", "billing", "/accounts/{user.account_id}"))))

    @gw.aggregate("/code/<int:uid>")
    async def code(fan: Fan, uid: int) -> Any:
        return await fan.get("users", f"/users/{uid}", name="user")

    client = await gateway_client(gw)

    def cached(answer: dict[str, Any]) -> list[bool]:
        return [c["cached"] for c in answer["entry"]["calls"]]

    assert (await client.get("/dash/7")).status_code == 200  # fills the cache
    assert users.requests == billing.requests == 1
    _, warm = await run(client, {"path": "/dash/7"})
    assert (cached(warm), warm["cache"]) == ([True, True], True)
    assert users.requests == billing.requests == 1
    # Compare's two runs: both reach the upstreams, so neither is helped by the other.
    for strategy in ("parallel", "sequential"):
        status, answer = await run(client, {"path": "/dash/7", "strategy": strategy,
                                            "cache": False})
        assert status == 200
        assert (cached(answer), answer["cache"]) == ([False, False], False)
        assert answer["body"]["meta"]["calls"]["user"]["attempts"] == 1
    assert users.requests == billing.requests == 3
    _, code_run = await run(client, {"path": "/code/8", "cache": False})
    assert cached(code_run) == [False]
    assert users.requests == 4
    # Nothing was stored by the bypassing runs: /users/8 is still a miss.
    _, code_again = await run(client, {"path": "/code/8"})
    assert cached(code_again) == [False]
    assert users.requests == 5


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"path": "/nowhere"}, "no endpoint"),
        ({"path": "dash/7"}, "'path'"),
        ({"path": "/dash/7", "strategy": "fast"}, "'strategy'"),
        ({"path": "/dash/7", "cache": "no"}, "'cache'"),
        ([1], "JSON object"),
    ],
)
async def test_run_endpoint_refuses_bad_input_with_a_message(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, message: Any,
    fragment: str,
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    status, answer = await run(client, message)
    assert status == 400
    assert fragment in answer["error"]


async def test_run_endpoint_wants_json_so_a_cross_site_form_cannot_post(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream))
    response = await client.post("/_gateway/api/run", form={"path": "/dash/7"})
    assert response.status_code == 415


@pytest.mark.parametrize(
    "path",
    ["/_gateway/", "/_gateway/dashboard.js", "/_gateway/api/overview", "/_gateway/api/recent"])
async def test_dashboard_false_turns_page_and_api_off(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, path: str
) -> None:
    client = await gateway_client(await dashboard_gateway(upstream, dashboard=False))
    assert (await client.get(path)).status_code == 404
    assert (await client.post("/_gateway/api/run", json={"path": "/dash/7"})).status_code in (
        404, 405)
    assert (await client.get("/dash/7")).status_code == 200  # the gateway itself still serves


async def test_upstream_state_follows_its_circuit_breaker(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    broken = await upstream(reply({"e": 1}, status=500))
    fine = await upstream(reply({"ok": 1}))
    client = await gateway_client(make_config(
        {"broken": {"url": broken, "breaker": {"failures": 1, "reset": 30.0}}, "fine": fine},
        endpoint("/x", call("b", "broken")),
    ))
    _, before = await json_of(client, "/_gateway/api/upstreams")
    assert [u["state"] for u in before["upstreams"]] == ["closed", "closed"]
    assert (await client.get("/x")).status_code == 502
    _, after = await json_of(client, "/_gateway/api/upstreams")
    assert [u["state"] for u in after["upstreams"]] == ["open", "closed"]
    assert (await client.get("/x")).status_code == 503  # what the page shows is what serves


async def test_demo_prints_the_dashboard_url_and_serves_it(
    hypercorn_server: HypercornFactory, http: httpx.AsyncClient
) -> None:
    server = await hypercorn_server({}, command=[sys.executable, "-m", "gateway", "demo",
                                                 "--bind", "127.0.0.1:{port}"])
    page_url = f"{server.url}/_gateway/"
    for _ in range(100):  # the banner is read from the process's pipe as it arrives
        if page_url in server.output():
            break
        await asyncio.sleep(0.02)
    assert page_url in server.output()
    page = await http.get(page_url)
    assert page.status_code == 200
    assert "Aggregation gateway" in page.text
