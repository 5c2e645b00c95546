"""/healthz and /readyz: per-upstream breaker state; not ready while a required one is open."""

from __future__ import annotations

import asyncio
from typing import Any

from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config, reply

from gateway.config import load_config
from gateway.health import readiness
from gateway.runtime import required_upstreams


async def readyz(client: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status_code, await response.get_json()


def test_required_means_some_endpoint_calls_it_without_optional() -> None:
    config = load_config(make_config(
        {"a": "http://127.0.0.1:1", "b": "http://127.0.0.1:2", "c": "http://127.0.0.1:3"},
        endpoint("/one", call("x", "a", "/"), call("y", "b", "/", optional=True)),
        endpoint("/two", call("x", "b", "/", optional=True)),
    ))
    assert required_upstreams(config) == {"a"}


def test_not_ready_before_serving() -> None:
    ready, body = readiness(None)
    assert ready is False
    assert body["ready"] is False


async def test_healthz_answers_while_serving(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    client = await gateway_client(make_config({"up": await upstream(reply({}))}))
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_readyz_flips_with_a_required_upstreams_breaker(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    healthy = True

    async def handle(request: Any) -> Any:
        return await reply({"ok": True} if healthy else {}, 200 if healthy else 503)(request)

    users = await upstream(handle)
    extras = await upstream(reply({}))
    client = await gateway_client(make_config(
        {"users": {"url": users, "breaker": {"failures": 2, "reset": 0.3}}, "extras": extras},
        endpoint("/r", call("u", "users", "/"), call("e", "extras", "/", optional=True)),
    ))
    status, body = await readyz(client)
    assert status == 200
    assert body == {"ready": True, "upstreams": {
        "users": {"required": True, "breaker": True, "state": "closed", "failures": 0},
        "extras": {"required": False, "breaker": False, "state": "closed"},
    }}

    healthy = False
    await client.get("/r")
    status, body = await readyz(client)
    assert (status, body["upstreams"]["users"]["failures"]) == (200, 1)
    await client.get("/r")
    status, body = await readyz(client)
    assert status == 503
    assert body["ready"] is False
    users_state = body["upstreams"]["users"]
    assert users_state["state"] == "open"
    assert 0 < users_state["retry_after"] <= 0.3

    await asyncio.sleep(0.35)
    status, body = await readyz(client)  # half-open: ready again, the trial decides
    assert (status, body["upstreams"]["users"]["state"]) == (200, "half_open")
    healthy = True
    assert (await client.get("/r")).status_code == 200
    status, body = await readyz(client)
    assert (status, body["upstreams"]["users"]["state"]) == (200, "closed")


async def test_an_open_breaker_on_an_optional_only_upstream_stays_ready(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    down = await upstream(reply({}, status=503))
    client = await gateway_client(make_config(
        {"down": {"url": down, "breaker": {"failures": 1, "reset": 30}}},
        endpoint("/r", call("d", "down", "/", optional=True)),
    ))
    assert (await client.get("/r")).status_code == 200
    status, body = await readyz(client)
    assert status == 200
    assert body["upstreams"]["down"]["state"] == "open"
