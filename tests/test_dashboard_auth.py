"""`gateway.dashboard_auth`: the dashboard's API behind [auth] or its own key, and the run
API through the same checks as any request (SPEC 9)."""

from __future__ import annotations

from typing import Any

import pytest
from jwt_support import SECRET, claims, hs256
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config

from gateway.config import parse_config
from gateway.errors import ConfigError

DASHBOARD_KEY = "dashboard-key-0123456789"
API_KEY = "partner-a-key-0123456789"
API = ("/_gateway/api/overview", "/_gateway/api/upstreams", "/_gateway/api/recent")


def dashboard_config(users: Any, **gateway: Any) -> dict[str, Any]:
    config = make_config({"users": users},
                         endpoint("/me", call("me", "users", "/users/{jwt.sub}")),
                         endpoint("/open", call("o", "users", "/open"), auth=False),
                         **gateway)
    config["auth"] = {"secret": SECRET, "required": True, "api_keys": {"partner-a": API_KEY}}
    config["limits"] = {"rate": "2/minute", "key": "jwt.sub"}
    return config


def run(path: str) -> dict[str, Any]:
    return {"json": {"path": path}}


@pytest.mark.parametrize(("gateway", "expected"), [
    ({"dashboard_auth": "yes"}, "gateway.dashboard_auth: must be one of"),
    ({"dashboard_auth": "key"}, 'gateway.dashboard_key: needed by dashboard_auth = "key"'),
    ({"dashboard_auth": "key", "dashboard_key": "short"},
     "gateway.dashboard_key: must be at least 16 characters"),
    ({"dashboard_key": DASHBOARD_KEY}, 'gateway.dashboard_key: only used with dashboard_auth'),
    ({"dashboard_auth": "key", "dashboard_key": "${NOPE}"},
     "gateway.dashboard_key: environment variable NOPE is not set"),
    ({"dashboard_auth": "auth"}, 'gateway.dashboard_auth: "auth" needs [auth]'),
])
def test_bad_dashboard_auth_keys_are_refused_with_their_path(
        gateway: dict[str, Any], expected: str) -> None:
    raw = {"gateway": gateway, "upstreams": {}, "endpoints": []}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env={})
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_dashboard_key_reads_the_environment() -> None:
    raw = {"gateway": {"dashboard_auth": "key", "dashboard_key": "${DASH_KEY}"}}
    settings = parse_config(raw, env={"DASH_KEY": DASHBOARD_KEY}).gateway
    assert (settings.dashboard_auth, settings.dashboard_key) == ("key", DASHBOARD_KEY)
    assert DASHBOARD_KEY not in repr(settings)


async def test_off_by_default_but_a_run_still_meets_the_endpoint_checks(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(dashboard_config(users))
    assert (await client.get("/_gateway/api/overview")).status_code == 200
    refused = await client.post("/_gateway/api/run", **run("/me"))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert (await refused.get_json())["status"] == 401
    token = {"Authorization": f"Bearer {hs256(claims(sub='ann'))}"}
    ok = await client.post("/_gateway/api/run", headers=token, **run("/me"))
    assert ok.status_code == 200
    assert (await ok.get_json())["status"] == 200
    assert ok.headers["RateLimit"].startswith('"default";r=1;t=')  # every 2xx (SPEC 9)
    assert users.last.path == "/users/ann"  # the page's caller's claim
    await client.post("/_gateway/api/run", headers=token, **run("/me"))
    limited = await client.post("/_gateway/api/run", headers=token, **run("/me"))
    assert limited.status_code == 429  # the run API counts against the caller's rate
    assert "Retry-After" in limited.headers
    assert len(users.seen) == 2


async def test_dashboard_auth_key_guards_every_api_path_with_its_own_key(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(dashboard_config(
        users, dashboard_auth="key", dashboard_key=DASHBOARD_KEY))
    page = await client.get("/_gateway/")
    assert page.status_code == 200  # the page's files hold no data; it asks for the key
    key = {"X-Dashboard-Key": DASHBOARD_KEY}
    for path in API:
        refused = await client.get(path)
        assert refused.status_code == 401
        assert await refused.get_json() == {
            "error": "the dashboard API needs its key in X-Dashboard-Key", "dashboard_auth": "key"}
        wrong = await client.get(path, headers={"X-Dashboard-Key": DASHBOARD_KEY + "x"})
        assert wrong.status_code == 401
        assert (await client.get(path, headers=key)).status_code == 200
    assert (await client.post("/_gateway/api/run", **run("/open"))).status_code == 401
    ran = await client.post("/_gateway/api/run", headers=key, **run("/open"))
    assert ran.status_code == 200
    assert "x-dashboard-key" not in users.last.headers
    assert users.last.path == "/open"
    assert len(users.seen) == 1


async def test_dashboard_auth_auth_takes_a_token_or_an_api_key(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(dashboard_config(users, dashboard_auth="auth"))
    missing = await client.get("/_gateway/api/recent")
    assert missing.status_code == 401
    assert (await missing.get_json())["dashboard_auth"] == "auth"
    expired = hs256(claims(exp=1))
    bad = await client.get("/_gateway/api/recent", headers={"Authorization": f"Bearer {expired}"})
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="token expired"')
    token = {"Authorization": f"Bearer {hs256(claims())}"}
    assert (await client.get("/_gateway/api/recent", headers=token)).status_code == 200
    by_key = await client.get("/_gateway/api/overview", headers={"X-API-Key": API_KEY})
    assert by_key.status_code == 200
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_auth_failures_total{reason="missing"} 1.0' in text
    assert 'gateway_auth_failures_total{reason="expired"} 1.0' in text
