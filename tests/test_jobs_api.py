"""The job API in-process: `Prefer: respond-async`, `/jobs/{id}`, limits, Redis down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client
from redis_support import RedisServer, eventually, redis_binary
from support import GatewayClientFactory, UpstreamFactory, call, echo, endpoint, make_config, reply

from gateway import Fan, Gateway
from gateway.jobs import JobRequest, JobView
from gateway.jobs.memory import MemoryStore

ASYNC = {"Prefer": "respond-async"}


def jobs_config(upstreams: dict[str, Any], *endpoints: dict[str, Any],
                **jobs: Any) -> dict[str, Any]:
    config = make_config(upstreams, *endpoints)
    config["jobs"] = {"store": "memory", "ttl": 30, "heartbeat": 0.2, "grace": 0.5, **jobs}
    return config


async def poll(client: Client, url: str, *, until: int = 200,
               within: float = 5.0) -> Any:
    give_up = time.monotonic() + within
    while True:
        response = await client.get(url)
        if response.status_code == until:
            return response
        assert time.monotonic() < give_up, f"{url} stayed {response.status_code}"
        await asyncio.sleep(0.02)


async def test_respond_async_is_accepted_with_location(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream(reply({"id": 7}))
    client = await gateway_client(jobs_config(
        {"users": users}, endpoint("/u/<int:uid>", call("user", "users", "/users/{uid}"))))
    response = await client.get("/u/7", headers={**ASYNC, "X-Request-ID": "req-42"})
    assert response.status_code == 202
    body = await response.get_json()
    assert set(body) == {"id", "status", "status_url", "created_at"}
    assert body["status"] == "queued"
    assert body["status_url"] == f"/jobs/{body['id']}"
    assert response.headers["Location"] == body["status_url"]
    assert response.headers["Preference-Applied"] == "respond-async"
    assert response.headers["X-Request-ID"] == "req-42"
    assert response.headers["Cache-Control"] == "no-store"
    assert len(body["id"]) >= 22
    done = await poll(client, body["status_url"])
    assert (await done.get_json())["result"]["data"] == {"user": {"id": 7}}
    assert users.last.headers["x-request-id"] == "req-42"  # the job kept the request id


async def test_lifecycle_queued_running_finished_expired(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    slow = await upstream(reply({"v": 1}, delay=0.4))
    client = await gateway_client(jobs_config(
        {"slow": slow}, endpoint("/slow", call("s", "slow", "/")), ttl=1))
    url = (await (await client.get("/slow", headers=ASYNC)).get_json())["status_url"]
    running = await client.get(url)
    assert running.status_code == 202
    assert running.headers["Retry-After"] == "1"
    state = await running.get_json()
    assert state["status"] in ("queued", "running")
    assert {"id", "status", "created_at"} <= set(state)
    assert "result" not in state
    finished = await poll(client, url)
    job = await finished.get_json()
    assert job["status"] == "succeeded"
    assert job["http_status"] == 200
    assert set(job) >= {"id", "created_at", "started_at", "finished_at", "http_status", "result"}
    assert job["result"]["data"] == {"s": {"v": 1}}
    assert job["result"]["meta"]["calls"]["s"]["ok"] is True
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    await asyncio.sleep(1.1)
    gone = await client.get(url)
    assert gone.status_code == 404
    assert "error" in await gone.get_json()


async def test_a_failed_aggregate_is_a_failed_job(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    broken = await upstream(reply({"e": 1}, status=500))
    client = await gateway_client(jobs_config(
        {"b": broken}, endpoint("/b", call("b", "b", "/"))))
    url = (await (await client.get("/b", headers=ASYNC)).get_json())["status_url"]
    job = await (await poll(client, url)).get_json()
    assert job["status"] == "failed"
    assert job["http_status"] == 502
    assert job["result"]["data"] is None
    assert job["error"] == job["result"]["error"]


async def test_bad_requests_are_answered_in_line(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(jobs_config(
        {"users": users},
        endpoint("/u", call("u", "users", "/", query={"t": "{header.x-tenant}"}))))
    missing = await client.get("/u", headers=ASYNC)
    assert missing.status_code == 400
    assert "x-tenant" in (await missing.get_json())["error"]
    assert (await client.get("/nope", headers=ASYNC)).status_code == 404
    assert (await client.post("/u", headers=ASYNC)).status_code == 405
    assert users.requests == 0


@pytest.mark.parametrize(("prefer", "status"), [
    ("return=minimal", 200), ("respond-async", 202), ("wait=5, respond-async", 202),
    ("Respond-Async; foo=bar", 202), ("respond-asyncx", 200)])
async def test_prefer_header_parsing(upstream: UpstreamFactory,
                                     gateway_client: GatewayClientFactory,
                                     prefer: str, status: int) -> None:
    users = await upstream(reply({"id": 1}))
    client = await gateway_client(jobs_config(
        {"users": users}, endpoint("/u", call("u", "users", "/"))))
    assert (await client.get("/u", headers={"Prefer": prefer})).status_code == status


async def test_beyond_limits_503_with_retry_after_and_nothing_queued(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    slow = await upstream(reply(delay=0.5))
    client = await gateway_client(jobs_config(
        {"slow": slow}, endpoint("/slow", call("s", "slow", "/")), max_running=1,
        max_queued=1))
    first = await client.get("/slow", headers=ASYNC)
    second = await client.get("/slow", headers=ASYNC)
    assert (first.status_code, second.status_code) == (202, 202)
    busy = await client.get("/slow", headers=ASYNC)
    assert busy.status_code == 503
    assert int(busy.headers["Retry-After"]) >= 1
    body = await busy.get_json()
    assert (body["data"] is None and "limits" in body["error"]) or "running" in body["error"]
    assert (await client.get("/slow")).status_code == 200  # plain aggregation is not limited
    for accepted in (first, second):
        await poll(client, (await accepted.get_json())["status_url"])
    assert slow.requests == 3  # two jobs and the plain request; the refused one never ran


async def test_delete_cancels_then_conflicts_once_finished(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    slow = await upstream(reply(delay=5))
    fast = await upstream(reply({"ok": 1}))
    client = await gateway_client(jobs_config(
        {"slow": slow, "fast": fast}, endpoint("/slow", call("s", "slow", "/")),
        endpoint("/fast", call("f", "fast", "/"))))
    url = (await (await client.get("/slow", headers=ASYNC)).get_json())["status_url"]
    await eventually(lambda: slow.requests > 0)
    canceled = await client.delete(url)
    assert canceled.status_code == 202
    assert (await canceled.get_json())["status"] == "canceled"
    job = await (await client.get(url)).get_json()
    assert job["status"] == "canceled"
    assert job["http_status"] is None
    assert job["result"] is None
    await eventually(lambda: slow.cancelled > 0)  # the upstream sees the gateway hang up
    assert slow.cancelled == 1
    assert (await client.delete(url)).status_code == 202  # canceling again is harmless
    done_url = (await (await client.get("/fast", headers=ASYNC)).get_json())["status_url"]
    await poll(client, done_url)
    conflict = await client.delete(done_url)
    assert conflict.status_code == 409
    assert (await conflict.get_json())["status"] == "succeeded"


@pytest.mark.parametrize("job_id", ["x" * 24, "short", "../../etc", "a" * 200])
async def test_unknown_or_malformed_ids_are_404(gateway_client: GatewayClientFactory,
                                                job_id: str) -> None:
    client = await gateway_client(jobs_config({}))
    assert (await client.get(f"/jobs/{job_id}")).status_code == 404
    assert (await client.delete(f"/jobs/{job_id}")).status_code == 404


async def test_job_replays_method_query_body_and_allowlisted_headers(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = await upstream(echo)
    config = jobs_config(
        {"api": {"url": api, "forward_headers": ["authorization"]}},
        endpoint("/orders/<int:oid>",
                 call("o", "api", "/o/{oid}", method="POST", query={"q": "{query.q}"},
                      body={"note": "{body.note}"}), method="POST"))
    gw = Gateway(config)
    client = await gateway_client(gw)
    assert gw.runtime is not None
    assert isinstance(gw.runtime.jobs, MemoryStore)
    submitted = []  # what the store is given to keep (a finished job no longer holds it)
    submit = gw.runtime.jobs.submit

    async def keep(request: JobRequest) -> JobView:
        submitted.append(request)
        return await submit(request)

    monkeypatch.setattr(gw.runtime.jobs, "submit", keep)
    response = await client.post(
        "/orders/5?q=a%20b", json={"note": "hi"},
        headers={**ASYNC, "Authorization": "Bearer t", "Cookie": "session=secret",
                 "X-Gateway-Strategy": "sequential"})
    body = await response.get_json()
    job = await (await poll(client, body["status_url"])).get_json()
    seen = job["result"]["data"]["o"]
    assert seen["method"] == "POST"
    assert seen["path"] == "/o/5"
    assert seen["query"] == {"q": "a b"}
    assert seen["body"] == {"note": "hi"}
    assert seen["headers"]["authorization"] == "Bearer t"
    assert "cookie" not in seen["headers"]
    assert job["result"]["meta"]["strategy"] == "sequential"
    assert gw.runtime is not None
    assert isinstance(gw.runtime.jobs, MemoryStore)
    stored = submitted[0]  # what the store keeps
    assert {name for name, _ in stored.headers} == {"authorization", "x-gateway-strategy",
                                                    "content-type"}


async def test_code_defined_endpoint_runs_as_a_job(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream(reply({"name": "Ada"}))
    gw = Gateway(jobs_config({"users": users}))

    @gw.aggregate("/hello/<int:uid>")
    async def hello(fan: Fan, uid: int) -> dict[str, Any]:
        user = await fan.get("users", f"/users/{uid}")
        return {"greeting": f"hello {user['name']}"}

    client = await gateway_client(gw)
    url = (await (await client.get("/hello/3", headers=ASYNC)).get_json())["status_url"]
    job = await (await poll(client, url)).get_json()
    assert job["result"]["data"] == {"greeting": "hello Ada"}


async def test_result_over_the_size_cap_fails_the_job(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    big = await upstream(reply({"blob": "x" * 1500}))
    config = jobs_config({"big": big}, endpoint("/big", call("a", "big", "/"),
                                                call("b", "big", "/")), max_result_bytes=2000)
    config["gateway"] = {"max_upstream_bytes": 2000}
    client = await gateway_client(config)
    assert (await client.get("/big")).status_code == 200  # each call is under the cap
    url = (await (await client.get("/big", headers=ASYNC)).get_json())["status_url"]
    job = await (await poll(client, url)).get_json()
    assert job["status"] == "failed"
    assert job["result"] is None
    assert job["error"] == "result too large"


async def test_redis_down_job_requests_503_plain_aggregation_works_then_recovers(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        tmp_path: Path) -> None:
    redis = RedisServer(redis_binary(), tmp_path)  # not started yet: Redis is down
    users = await upstream(reply({"id": 1}))
    client = await gateway_client(jobs_config(
        {"users": users}, endpoint("/u", call("u", "users", "/")), store=redis.url))
    started = time.monotonic()
    refused = await client.get("/u", headers=ASYNC)
    assert refused.status_code == 503
    assert "Retry-After" in refused.headers
    assert "Redis" in (await refused.get_json())["error"]
    assert time.monotonic() - started < 3
    assert (await client.get("/jobs/" + "x" * 24)).status_code == 503
    assert (await client.get("/u")).status_code == 200
    await redis.start()
    try:
        accepted = await client.get("/u", headers=ASYNC)
        assert accepted.status_code == 202
        job = await (await poll(client, (await accepted.get_json())["status_url"])).get_json()
        assert job["status"] == "succeeded"
    finally:
        await redis.stop()


async def test_job_states_in_metrics(upstream: UpstreamFactory,
                                     gateway_client: GatewayClientFactory) -> None:
    users = await upstream(reply({"id": 1}))
    client = await gateway_client(jobs_config(
        {"users": users}, endpoint("/u", call("u", "users", "/"))))
    url = (await (await client.get("/u", headers=ASYNC)).get_json())["status_url"]
    await poll(client, url)
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_jobs_in_store{state="succeeded"} 1.0' in text
    assert 'gateway_jobs_in_store{state="running"} 0.0' in text
    assert 'gateway_jobs_total{state="queued"} 1.0' in text
    assert 'gateway_jobs_total{state="succeeded"} 1.0' in text
