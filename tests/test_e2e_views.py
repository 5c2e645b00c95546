"""Code-defined endpoints (`@gw.aggregate` views and their `Fan`) against real upstreams."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import (
    REPO,
    GatewayClientFactory,
    RecordingServer,
    UpstreamFactory,
    echo,
    make_config,
    reply,
)

from gateway import Fan, Gateway
from gateway.demo import DemoUpstreams, demo_config, register_demo_views, start_demo_upstreams


def _gateway(servers: dict[str, RecordingServer | dict[str, Any]], **settings: Any) -> Gateway:
    return Gateway(make_config(servers, **settings))


async def _pair(upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> Any:
    fast = await upstream(reply({"id": 7, "name": "Ada"}, delay=0.1))
    slow = await upstream(reply([{"total": 2.5}, {"total": 4.0}], delay=0.2))
    gw = _gateway({"users": fast, "orders": slow})

    @gw.aggregate("/dash/<int:user_id>")
    async def dash(fan: Fan, user_id: int) -> dict[str, Any]:
        user, orders = await fan.gather(
            fan.get("users", f"/users/{user_id}", name="user"),
            fan.get("orders", "/orders", params={"user": user_id}, optional=True, default=[]),
        )
        return {"name": user["name"], "spent": sum(o["total"] for o in orders)}

    return await gateway_client(gw), fast, slow


async def test_view_gathers_in_parallel_and_fills_meta(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client, users, orders = await _pair(upstream, gateway_client)
    started = time.perf_counter()
    response = await client.get("/dash/7", headers={"X-Request-ID": "view-1"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"name": "Ada", "spent": 6.5}
    meta = body["meta"]
    assert meta["strategy"] == "parallel"
    assert meta["complete"] is True
    assert set(meta["calls"]) == {"user", "orders"}
    for record in meta["calls"].values():
        assert record["ok"] is True
        assert record["status"] == 200
        assert record["attempts"] == 1
        assert record["elapsed_ms"] >= 90
    calls = meta["calls"]
    assert calls["orders"]["start_ms"] < calls["user"]["start_ms"] + 50  # they overlap
    assert elapsed < 0.4  # ~200 ms, where one after the other takes ~300 ms
    assert response.headers["X-Request-ID"] == "view-1"
    timing = response.headers["Server-Timing"]
    assert timing.startswith("user;dur=")
    assert "orders;dur=" in timing
    assert "total;dur=" in timing
    assert users.last.path == "/users/7"
    assert users.last.headers["x-request-id"] == "view-1"
    assert orders.last.raw_query == "user=7"


async def test_view_gathers_one_after_another_when_sequential(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client, _, _ = await _pair(upstream, gateway_client)
    started = time.perf_counter()
    response = await client.get("/dash/7", headers={"X-Gateway-Strategy": "sequential"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    body = await response.get_json()
    assert body["meta"]["strategy"] == "sequential"
    calls = body["meta"]["calls"]
    assert calls["orders"]["start_ms"] >= calls["user"]["start_ms"] + 90
    assert elapsed >= 0.3


async def test_view_optional_failure_uses_default_and_marks_incomplete(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    users = await upstream(reply({"id": 7, "name": "Ada"}))
    orders = await upstream(reply({"error": "down"}, status=500))
    gw = _gateway({"users": users, "orders": orders})

    @gw.aggregate("/dash/<int:user_id>")
    async def dash(fan: Fan, user_id: int) -> dict[str, Any]:
        user, orders = await fan.gather(
            fan.get("users", f"/users/{user_id}", name="user"),
            fan.get("orders", "/orders", optional=True, default=[]),
        )
        return {"name": user["name"], "orders": orders}

    response = await (await gateway_client(gw)).get("/dash/7")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"name": "Ada", "orders": []}
    assert body["meta"]["complete"] is False
    assert body["meta"]["calls"]["orders"]["status"] == 500
    assert "500" in body["meta"]["calls"]["orders"]["error"]


@pytest.mark.parametrize(("upstream_status", "expected"), [(404, 404), (409, 409), (500, 502)])
async def test_view_required_failure_sets_the_status(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, upstream_status: int,
    expected: int
) -> None:
    users = await upstream(reply({"error": "x"}, status=upstream_status))
    sibling = await upstream(reply(delay=2.0))
    gw = _gateway({"users": users, "slow": sibling})

    @gw.aggregate("/u/<int:user_id>")
    async def view(fan: Fan, user_id: int) -> Any:
        return await fan.gather(fan.get("users", f"/users/{user_id}"), fan.get("slow", "/"))

    started = time.perf_counter()
    response = await (await gateway_client(gw)).get("/u/1")
    assert time.perf_counter() - started < 0.8  # the 2 s sibling was cancelled
    assert response.status_code == expected
    body = await response.get_json()
    assert body["data"] is None
    assert "users" in body["error"]
    assert body["meta"]["calls"]["users"]["status"] == upstream_status
    assert body["meta"]["calls"]["slow"]["ok"] is False
    for _ in range(100):
        if sibling.cancelled:
            break
        await asyncio.sleep(0.01)
    assert sibling.cancelled == 1


async def test_a_failed_views_unawaited_calls_say_why_they_did_not_run(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    """A call a view described but never awaited is `not run: <why>` in meta when the view
    failed (as in a plan's meta), and skipped only when the view answered."""
    users = await upstream(reply({"error": "x"}, status=500))
    never = await upstream(reply({"n": 1}))
    gw = _gateway({"users": users, "never": never})

    @gw.aggregate("/failed")
    async def failed(fan: Fan) -> Any:
        later = fan.get("never", "/", name="later")
        await fan.get("users", "/users/1")
        return await later

    @gw.aggregate("/raised")
    async def raised(fan: Fan) -> Any:
        fan.get("never", "/", name="later")
        raise RuntimeError("bug")

    @gw.aggregate("/answered")
    async def answered(fan: Fan) -> Any:
        fan.get("never", "/", name="later")
        return {"fine": True}

    client = await gateway_client(gw)
    response = await client.get("/failed")
    assert response.status_code == 502
    calls = (await response.get_json())["meta"]["calls"]
    assert calls["later"]["ok"] is False
    assert calls["later"]["error"] == "not run: a required call failed"
    response = await client.get("/raised")
    assert response.status_code == 500
    later = (await response.get_json())["meta"]["calls"]["later"]
    assert (later["ok"], later["error"]) == (False, "not run: the view failed")
    response = await client.get("/answered")
    assert response.status_code == 200
    assert (await response.get_json())["meta"]["calls"]["later"] == {"skipped": True,
                                                                      "ok": True}
    assert never.requests == 0


async def test_view_call_timeout_is_504(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    slow = await upstream(reply(delay=3.0))
    gw = _gateway({"slow": {"url": slow, "timeout": 0.2}})

    @gw.aggregate("/slow")
    async def view(fan: Fan) -> Any:
        return await fan.get("slow", "/")

    started = time.perf_counter()
    response = await (await gateway_client(gw)).get("/slow")
    assert response.status_code == 504
    assert time.perf_counter() - started < 1.0


async def test_view_segment_refuses_dot_segments(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    gw = _gateway({"up": up})

    @gw.aggregate("/items/<name>")
    async def view(fan: Fan, name: str) -> Any:
        return await fan.get("up", f"/items/{fan.segment(name)}")

    client = await gateway_client(gw)
    ok = await client.get("/items/a%3Fb%40c")
    assert ok.status_code == 200
    assert up.last.path == "/items/a%3Fb%40c"
    bad = await client.get("/items/%2e%2e")
    assert bad.status_code == 400
    assert up.requests == 1


async def test_view_that_raises_is_500_with_traceback_only_in_log(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    caplog: pytest.LogCaptureFixture
) -> None:
    up = await upstream(reply({"n": 1}))
    gw = _gateway({"up": up})

    @gw.aggregate("/boom")
    async def boom(fan: Fan) -> Any:
        await fan.get("up", "/")
        raise KeyError("secret-internal-key")

    with caplog.at_level(logging.ERROR):
        response = await (await gateway_client(gw)).get("/boom",
                                                         headers={"X-Request-ID": "b-1"})
    assert response.status_code == 500
    text = await response.get_data(as_text=True)
    assert "secret-internal-key" not in text
    assert "Traceback" not in text
    assert (await response.get_json())["meta"]["calls"]["up"]["ok"] is True
    assert any("b-1" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.fixture
async def demo() -> AsyncIterator[DemoUpstreams]:
    upstreams = await start_demo_upstreams(scale=0.01)
    yield upstreams
    await upstreams.close()


async def test_code_view_example_works_against_the_demo_upstreams(
    demo: DemoUpstreams, gateway_client: GatewayClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    example = importlib.import_module("examples.code_view")
    client = await gateway_client(example.build(demo_config(demo.urls)))
    for strategy in ("parallel", "sequential"):
        response = await client.get("/overview/7", headers={"X-Gateway-Strategy": strategy})
        assert response.status_code == 200, await response.get_data(as_text=True)
        body = await response.get_json()
        assert body["meta"]["strategy"] == strategy
        assert set(body["meta"]["calls"]) == {"user", "orders", "recommendations", "account"}
        assert body["meta"]["complete"] is True
        data = body["data"]
        assert set(data) == {"name", "spent", "top_pick", "balance"}
        assert isinstance(data["name"], str)
        assert isinstance(data["balance"], float)
    missing = await client.get("/overview/0")
    assert missing.status_code == 404


async def test_demo_summary_view(
    demo: DemoUpstreams, gateway_client: GatewayClientFactory
) -> None:
    gw = Gateway(demo_config(demo.urls))
    register_demo_views(gw)
    response = await (await gateway_client(gw)).get("/summary/7")
    assert response.status_code == 200
    body = await response.get_json()
    assert set(body["data"]) == {"name", "orders", "spent"}
    assert set(body["meta"]["calls"]) == {"user", "orders"}


async def test_view_bad_path_inside_gather_is_400_not_500(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(echo)
    gw = _gateway({"up": up})

    @gw.aggregate("/items/<name>")
    async def view(fan: Fan, name: str) -> Any:
        return await fan.gather(fan.get("up", "/fixed"), fan.get("up", f"/items/{name}"))

    client = await gateway_client(gw)
    response = await client.get("/items/%2e%2e")
    assert response.status_code == 400, await response.get_data(as_text=True)
    assert (await response.get_json())["data"] is None
