"""The demo upstreams: the data shapes the demo config and the README rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.demo import DemoUpstreams, combine_profile, demo_config, start_demo_upstreams


@pytest.fixture
async def demo() -> AsyncIterator[DemoUpstreams]:
    upstreams = await start_demo_upstreams(scale=0.01)
    yield upstreams
    await upstreams.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


async def test_four_upstreams_on_distinct_loopback_ports(demo: DemoUpstreams) -> None:
    urls = demo.urls
    assert set(urls) == {"users", "orders", "recommendations", "billing"}
    assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
    assert len(set(urls.values())) == 4


async def test_user_shape_and_determinism(demo: DemoUpstreams, client: httpx.AsyncClient) -> None:
    url = demo.urls["users"] + "/users/7"
    first, again = (await client.get(url)).json(), (await client.get(url)).json()
    assert set(first) == {"id", "name", "email", "account_id", "tier"}
    assert first["id"] == 7
    assert isinstance(first["account_id"], int)
    assert first == again
    other = (await client.get(demo.urls["users"] + "/users/8")).json()
    assert other["name"] != first["name"]


@pytest.mark.parametrize("user_id", ["0", "1001", "-3"])
async def test_unknown_user_is_404(
    demo: DemoUpstreams, client: httpx.AsyncClient, user_id: str
) -> None:
    response = await client.get(f"{demo.urls['users']}/users/{user_id}")
    assert response.status_code == 404
    assert response.json() == {"error": "no such user"}


@pytest.mark.parametrize(
    ("upstream", "path"),
    [
        ("users", "/users/abc"),
        ("users", "/users?ids=1,x"),
        ("orders", "/orders?user=abc"),
        ("recommendations", "/recommendations/abc"),
        ("billing", "/accounts/abc"),
    ],
)
async def test_non_integer_id_is_400(
    demo: DemoUpstreams, client: httpx.AsyncClient, upstream: str, path: str
) -> None:
    response = await client.get(demo.urls[upstream] + path)
    assert response.status_code == 400
    assert "error" in response.json()


async def test_batch_endpoint_matches_single_and_skips_unknown(
    demo: DemoUpstreams, client: httpx.AsyncClient
) -> None:
    base = demo.urls["users"]
    batch = (await client.get(base + "/users", params={"ids": "3,1,3,5000,2"})).json()
    assert [user["id"] for user in batch] == [3, 1, 2]
    assert batch[1] == (await client.get(base + "/users/1")).json()


async def test_orders_are_deterministic_per_user(
    demo: DemoUpstreams, client: httpx.AsyncClient
) -> None:
    url = demo.urls["orders"] + "/orders"
    seen = [(await client.get(url, params={"user": str(n)})).json() for n in range(1, 6)]
    assert seen[0] == (await client.get(url, params={"user": "1"})).json()
    orders = [order for per_user in seen for order in per_user]
    assert orders, "five users should have at least one order between them"
    for order in orders:
        assert set(order) == {"id", "user", "total", "items"}
        assert order["total"] == round(sum(i["qty"] * i["price"] for i in order["items"]), 2)
    assert {order["user"] for order in seen[2]} <= {3}


async def test_recommendations_shape(demo: DemoUpstreams, client: httpx.AsyncClient) -> None:
    data = (await client.get(demo.urls["recommendations"] + "/recommendations/7")).json()
    assert data["user"] == 7
    scores = [item["score"] for item in data["items"]]
    assert scores
    assert scores == sorted(scores, reverse=True)


async def test_account_of_a_user_exists(demo: DemoUpstreams, client: httpx.AsyncClient) -> None:
    user = (await client.get(demo.urls["users"] + "/users/42")).json()
    account = (await client.get(f"{demo.urls['billing']}/accounts/{user['account_id']}")).json()
    assert set(account) == {"account_id", "balance", "currency", "plan"}
    assert account["account_id"] == user["account_id"]
    missing = await client.get(demo.urls["billing"] + "/accounts/1")
    assert missing.status_code == 404


async def test_each_upstream_has_its_own_latency() -> None:
    paths = {
        "users": ("/users/1", 0.08),
        "orders": ("/orders?user=1", 0.12),
        "recommendations": ("/recommendations/1", 0.15),
        "billing": ("/accounts/10001", 0.06),
    }
    demo = await start_demo_upstreams(scale=1.0)
    try:
        async with httpx.AsyncClient() as c, asyncio.TaskGroup() as tg:
            calls = {n: tg.create_task(c.get(demo.urls[n] + p)) for n, (p, _) in paths.items()}
    finally:
        await demo.close()
    for name, (_, delay) in paths.items():
        response = calls[name].result()
        assert response.status_code == 200
        assert response.elapsed.total_seconds() >= delay * 0.95  # lower bounds only: CI is slow


async def test_post_is_405(demo: DemoUpstreams, client: httpx.AsyncClient) -> None:
    response = await client.post(demo.urls["users"] + "/users/1")
    assert response.status_code == 405


def test_demo_config_shape() -> None:
    urls = {
        name: f"http://127.0.0.1:{9000 + i}"
        for i, name in enumerate(["users", "orders", "recommendations", "billing"])
    }
    config = demo_config(urls)
    assert config["gateway"] == {"strategy": "parallel", "timeout": 2.0, "deadline": 5.0}
    assert {name: up["url"] for name, up in config["upstreams"].items()} == urls
    assert config["upstreams"]["users"]["batch"]["param"] == "ids"
    dashboard, profile, team = config["endpoints"]
    assert [call["batch_key"] for call in team["calls"]] == ["{a}", "{b}", "{c}"]
    assert dashboard["route"] == "/dashboard/<int:user_id>"
    calls = {call["name"]: call for call in dashboard["calls"]}
    assert list(calls) == ["user", "orders", "recommendations", "account"]
    assert calls["account"]["path"] == "/accounts/{user.account_id}"
    assert calls["orders"]["optional"] is True
    assert calls["orders"]["default"] == []
    assert "account_id" in calls["user"]["select"]  # the chained call needs it
    assert profile["combine"] == "gateway.demo:combine_profile"
    assert [call["name"] for call in profile["calls"]] == ["user", "account"]


def test_combine_profile_merges_user_and_account() -> None:
    results = {
        "user": {"id": 7, "name": "Ada Lovelace", "account_id": 10007, "tier": "pro"},
        "account": {"account_id": 10007, "balance": 12.5, "currency": "EUR", "plan": "pro"},
    }
    merged = combine_profile(results, None)
    assert merged["name"] == "Ada Lovelace"
    assert (merged["balance"], merged["currency"]) == (12.5, "EUR")


async def test_demo_team_route_batches_three_keys_into_one_upstream_call() -> None:
    from gateway.app import Gateway

    demo = await start_demo_upstreams(scale=0.01)
    try:
        gw = Gateway(demo_config(demo.urls))
        async with gw.app.test_app() as app:
            before = demo.servers["users"].requests
            response = await app.test_client().get("/team/1/2/3")
            body = await response.get_json()
        assert response.status_code == 200
        assert [body["data"][f"member_{k}"]["id"] for k in "abc"] == [1, 2, 3]
        assert {c["batch"] for c in body["meta"]["calls"].values()} == {3}
        assert demo.servers["users"].requests - before == 1
    finally:
        await demo.close()


async def test_demo_profile_runs_its_sync_combine_hook_off_the_loop() -> None:
    from gateway.app import Gateway

    demo = await start_demo_upstreams(scale=0.01)
    try:
        gw = await asyncio.to_thread(Gateway, demo_config(demo.urls))
        async with gw.app.test_app() as app:
            response = await app.test_client().get("/profile/7")
            body = await response.get_json()
        assert response.status_code == 200
        data = body["data"]  # the hook's merge, not the raw calls
        assert set(data) == {"id", "name", "balance", "currency", "plan"}
        assert data["id"] == 7
        assert isinstance(data["balance"], float)
        assert data["currency"] in ("EUR", "USD", "GBP")
        assert set(body["meta"]["calls"]) == {"user", "account"}
        assert body["meta"]["calls"]["account"]["start_ms"] >= (
            body["meta"]["calls"]["user"]["elapsed_ms"])  # chained on {user.account_id}
    finally:
        await demo.close()
