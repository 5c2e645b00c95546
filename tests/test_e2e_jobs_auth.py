"""Jobs and who submitted them (SPEC 9): checked at submission, replayed as that identity,
readable only by the same caller. Both job stores, a real redis-server for the shared one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jwt_support import SECRET, claims, hs256
from quart.typing import TestClientProtocol as Client
from redis_support import running_redis
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config, reply

ASYNC = {"Prefer": "respond-async"}
API_KEY = "partner-a-key-0123456789"


def as_user(sub: str, **extra: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {hs256(claims(sub=sub))}", **ASYNC, **extra}


@pytest.fixture(params=["memory", "redis"])
async def store(  # listed first by tests: Redis outlives the gateway using it
        request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "memory":
        yield "memory"
        return
    async with running_redis(tmp_path) as redis:
        yield redis.url


def jobs_auth_config(users: Any, store: str, **limits: Any) -> dict[str, Any]:
    config = make_config({"users": users}, endpoint(
        "/me/orders", call("orders", "users", "/users/{jwt.sub}/orders",
                           query={"client": "{client}"})))
    config["auth"] = {"secret": SECRET, "required": True, "api_keys": {"partner-a": API_KEY}}
    config["limits"] = {"key": "jwt.sub", **limits}
    config["jobs"] = {"store": store, "ttl": 60}
    return config


async def finished(client: Client, url: str, headers: dict[str, str]) -> Any:
    for _ in range(200):
        response = await client.get(url, headers=headers)
        assert response.status_code in (200, 202), await response.get_data()
        if response.status_code == 200:
            return await response.get_json()
        await asyncio.sleep(0.02)
    raise AssertionError("the job did not finish")


async def test_a_job_runs_as_the_identity_it_was_submitted_with(
        store: str, upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(jobs_auth_config(users, store))
    accepted = await client.get("/me/orders", headers=as_user("alice"))
    assert accepted.status_code == 202
    url = accepted.headers["Location"]
    job = await finished(client, url, {"Authorization": as_user("alice")["Authorization"]})
    assert job["status"] == "succeeded"
    assert users.last.path == "/users/alice/orders"  # {jwt.sub} as submitted
    assert users.last.query == {"client": "alice"}  # {client} as submitted
    assert "authorization" not in users.last.headers  # not forwarded, not kept


async def test_only_the_submitter_may_poll_or_cancel_a_job(
        store: str, upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream(reply({"ok": True}, delay=0.5))
    client = await gateway_client(jobs_auth_config(users, store))
    accepted = await client.get("/me/orders", headers=as_user("alice"))
    url = accepted.headers["Location"]
    alice = {"Authorization": as_user("alice")["Authorization"]}
    bob = {"Authorization": as_user("bob")["Authorization"]}
    unknown = await client.get("/jobs/" + "x" * 24, headers=alice)
    for headers in (bob, {}, {"X-API-Key": API_KEY}):
        other = await client.get(url, headers=headers)
        assert other.status_code == 404
        assert await other.get_json() == await unknown.get_json()  # no hint it exists
        assert (await client.delete(url, headers=headers)).status_code == 404
    refused = await client.get(url, headers={"Authorization": "Bearer a.b.c"})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    mine = await client.get(url, headers=alice)
    assert mine.status_code in (200, 202)
    assert (await mine.get_json())["status"] != "canceled"  # the others' DELETEs did nothing
    cancelled = await client.delete(url, headers=alice)
    assert cancelled.status_code in (202, 409)


async def test_a_job_is_checked_when_submitted_and_nothing_is_queued_if_refused(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(jobs_auth_config(users, "memory", rate="1/minute"))
    unauthenticated = await client.get("/me/orders", headers=ASYNC)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"] == "Bearer"
    first = await client.get("/me/orders", headers=as_user("carol"))
    assert first.status_code == 202
    assert first.headers["RateLimit"].startswith('"default";r=0;')  # a 2xx carries it
    over = await client.get("/me/orders", headers=as_user("carol"))
    assert over.status_code == 429
    assert "Retry-After" in over.headers
    await finished(client, first.headers["Location"],
                   {"Authorization": as_user("carol")["Authorization"]})
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_jobs_total{state="queued"} 1.0' in text  # the refused ones never queued
    assert len(users.seen) == 1
