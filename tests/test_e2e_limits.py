"""Per-client limits at the ingress (SPEC 9): 429s with RateLimit fields, nothing forwarded."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from jwt_support import SECRET, claims, hs256
from redis_support import running_redis
from support import (
    GatewayClientFactory,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    free_port,
    make_config,
    reply,
)

from gateway import Gateway
from gateway.limits import Concurrency
from gateway.limits.shared import RedisConcurrency


def limited(users: Any, **limits: Any) -> dict[str, Any]:
    config = make_config(
        {"users": users},
        endpoint("/x", call("x", "users", "/x", query={"who": "{client}"})),
        endpoint("/own", call("o", "users", "/own"), rate="1/minute"),
        endpoint("/slow", call("s", "users", "/slow")),
    )
    config["limits"] = limits
    return config


def peer(address: str) -> dict[str, Any]:
    return {"scope_base": {"client": (address, 40000)}}


async def test_over_the_rate_is_a_429_with_retry_after_and_ratelimit_fields(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(limited(users, rate="3/minute"))
    statuses, fields = [], []
    for _ in range(3):
        response = await client.get("/x", **peer("10.0.0.1"))
        statuses.append(response.status_code)
        fields.append(response.headers["RateLimit"])
        assert response.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert statuses == [200, 200, 200]
    assert fields[0].startswith('"default";r=2;t=')
    assert fields[2].startswith('"default";r=0;')
    refused = await client.get("/x", **peer("10.0.0.1"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert refused.headers["RateLimit"].startswith('"default";r=0;t=')
    body = await refused.get_json()
    assert body["data"] is None
    assert body["error"] == (
        "rate limit exceeded for this client (3 per minute)")
    assert len(users.seen) == 3  # the excess reached no upstream
    assert users.last.query == {"who": "10.0.0.1"}  # {client} is the key the limits use
    other = await client.get("/x", **peer("10.0.0.2"))
    assert other.status_code == 200  # another client has its own bucket
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_rate_limited_total{endpoint="/x"} 1.0' in text


async def test_an_endpoint_rate_is_its_own_bucket(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(limited(users, rate="100/minute"))
    first = await client.get("/own", **peer("10.0.0.1"))
    assert first.status_code == 200
    assert first.headers["RateLimit-Policy"] == '"endpoint";q=1;w=60'
    assert (await client.get("/own", **peer("10.0.0.1"))).status_code == 429
    assert (await client.get("/x", **peer("10.0.0.1"))).status_code == 200


async def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_client_key(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    client = await gateway_client(limited(users, rate="1/minute"))
    forged = {"X-Forwarded-For": "203.0.113.50"}
    assert (await client.get("/x", headers=forged, **peer("192.0.2.7"))).status_code == 200
    assert users.last.query == {"who": "192.0.2.7"}
    other = {"X-Forwarded-For": "203.0.113.51"}
    assert (await client.get("/x", headers=other, **peer("192.0.2.7"))).status_code == 429


async def test_limits_by_token_subject_count_each_user_apart(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    config = limited(users, rate="1/minute", key="jwt.sub")
    config["auth"] = {"secret": SECRET, "required": True}
    client = await gateway_client(config)

    def as_user(sub: str) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Bearer {hs256(claims(sub=sub))}"},
                **peer("10.0.0.1")}

    assert (await client.get("/x", **as_user("alice"))).status_code == 200
    assert users.last.query == {"who": "alice"}
    assert (await client.get("/x", **as_user("alice"))).status_code == 429
    assert (await client.get("/x", **as_user("bob"))).status_code == 200


async def test_concurrency_slot_is_held_while_in_flight_and_released_after(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: Any) -> Any:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return await reply({"ok": True})(request)

    users = await upstream(handler)
    gw = Gateway(limited(users, concurrency=1))
    client = await gateway_client(gw)
    slow = asyncio.create_task(client.get("/slow", **peer("10.0.0.1")))
    await asyncio.wait_for(started.wait(), 5)
    busy = await client.get("/x", **peer("10.0.0.1"))
    assert busy.status_code == 429
    assert busy.headers["Retry-After"] == "1"
    assert '"concurrency";q=1;w=1' in busy.headers["RateLimit-Policy"]
    assert (await busy.get_json())["error"] == (
        "too many requests in flight for this client (max 1)")
    assert (await client.get("/x", **peer("10.0.0.2"))).status_code == 200
    release.set()
    assert (await slow).status_code == 200
    assert (await client.get("/x", **peer("10.0.0.1"))).status_code == 200
    concurrency = gw.current_runtime().concurrency
    assert isinstance(concurrency, Concurrency)
    assert concurrency.tracked == 0


async def test_concurrency_slot_is_released_when_the_request_fails(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream(reply({"boom": True}, status=500))
    gw = Gateway(limited(users, concurrency=1))
    client = await gateway_client(gw)
    concurrency = gw.current_runtime().concurrency
    assert isinstance(concurrency, Concurrency)
    for _ in range(2):
        failed = await client.get("/x", **peer("10.0.0.1"))
        assert failed.status_code == 502  # the upstream's 500: a failed call, slot released
    assert concurrency.tracked == 0


async def test_concurrency_slot_is_released_when_the_client_goes_away(
        upstream: UpstreamFactory, hypercorn_server: HypercornFactory,
        http: httpx.AsyncClient) -> None:
    started = asyncio.Event()

    async def handler(request: Any) -> Any:
        if request.path == "/slow":
            started.set()
            await asyncio.sleep(30)
        return await reply({"ok": True})(request)

    users = await upstream(handler)
    config = limited({"url": users.url, "timeout": 25.0}, concurrency=1)
    config["gateway"] = {"deadline": 25.0}
    server = await hypercorn_server(config)
    with pytest.raises(httpx.ReadTimeout):
        await http.get(server.url + "/slow", timeout=httpx.Timeout(10.0, read=0.5))
    assert started.is_set()
    give_up = time.monotonic() + 5.0  # far below the 25 s the call would take
    statuses = []
    while time.monotonic() < give_up:
        statuses.append((await http.get(server.url + "/x")).status_code)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 200, statuses  # the cancelled request gave its slot back


async def test_a_redis_store_that_is_down_lets_requests_through_counted_and_logged_once(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    users = await upstream()
    client = await gateway_client(limited(users, rate="1/minute",
                                          store=f"redis://127.0.0.1:{free_port()}/0"))
    with caplog.at_level(logging.WARNING, logger="gateway.limits"):
        statuses = [(await client.get("/x")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]  # fail open
    lines = [r for r in caplog.records if "rate-limit store unavailable" in r.getMessage()]
    assert len(lines) == 1
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert "gateway_limits_store_errors_total 3.0" in text


async def test_a_redis_store_shares_the_count_between_gateways(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        tmp_path: Path) -> None:
    users = await upstream()
    async with running_redis(tmp_path) as redis:
        config = limited(users, rate="2/minute", store=redis.url)
        first, second = await gateway_client(config), await gateway_client(config)
        assert (await first.get("/x", **peer("10.0.0.1"))).status_code == 200
        assert (await second.get("/x", **peer("10.0.0.1"))).status_code == 200
        refused = await first.get("/x", **peer("10.0.0.1"))
        assert refused.status_code == 429
        assert (await second.get("/x", **peer("10.0.0.1"))).status_code == 429
        assert len(users.seen) == 2


async def test_an_endpoints_own_rate_holds_without_any_limits_section(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    users = await upstream()
    config = limited(users)
    del config["limits"]  # no limits.rate, no concurrency: only /own's `rate`
    client = await gateway_client(config)
    own = [(await client.get("/own", **peer("10.0.0.1"))).status_code for _ in range(2)]
    other = [(await client.get("/x", **peer("10.0.0.1"))).status_code for _ in range(3)]
    assert own == [200, 429]
    assert other == [200, 200, 200]
    assert [r.path for r in users.seen].count("/own") == 1


async def test_a_redis_store_shares_concurrency_between_gateways_and_releases_it(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
        tmp_path: Path) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: Any) -> Any:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return await reply({"ok": True})(request)

    users = await upstream(handler)
    async with running_redis(tmp_path) as redis:
        config = limited(users, concurrency=1, store=redis.url)
        first_gw = Gateway(config)
        first, second = await gateway_client(first_gw), await gateway_client(config)
        slow = asyncio.create_task(first.get("/slow", **peer("10.0.0.1")))
        await asyncio.wait_for(started.wait(), 5)
        busy = await second.get("/x", **peer("10.0.0.1"))  # the other process sees the lease
        assert busy.status_code == 429
        assert (await busy.get_json())["error"] == (
            "too many requests in flight for this client (max 1)")
        assert (await second.get("/x", **peer("10.0.0.2"))).status_code == 200
        release.set()
        assert (await slow).status_code == 200
        assert (await second.get("/x", **peer("10.0.0.1"))).status_code == 200
        concurrency = first_gw.current_runtime().concurrency
        assert isinstance(concurrency, RedisConcurrency)
        await concurrency.settle()  # the releases run in the limiter's own tasks
        assert await concurrency.in_flight("ip:10.0.0.1") == 0  # every lease given back
        await redis.stop()
        opened = await second.get("/x", **peer("10.0.0.1"))
        assert opened.status_code == 200  # Redis down: fail open
        text = await (await second.get("/metrics")).get_data(as_text=True)
        assert "gateway_limits_store_errors_total 1.0" in text


async def test_concurrency_slot_is_released_when_the_client_goes_away_while_draining(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    """A GET with a body it does not need: the client leaves while the rest is drained."""
    users = await upstream()
    gw = Gateway(limited(users, concurrency=1))
    client = await gateway_client(gw)  # started: the runtime exists
    concurrency = gw.current_runtime().concurrency
    assert isinstance(concurrency, Concurrency)
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "http.request", "body": b"x" * 10, "more_body": True})
    sent: list[dict[str, Any]] = []
    waiting = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages.empty():
            waiting.set()  # the rest of the body is awaited
        return await messages.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/x", "raw_path": b"/x",
             "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-length", b"1000")],
             "client": ("10.0.0.1", 40000), "server": ("127.0.0.1", 80), "extensions": {}}
    served = asyncio.create_task(gw.app(scope, receive, send))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting.wait(), 5)
    for _ in range(500):  # the handler reaches the drain (bounded: 5 s)
        if concurrency.tracked:
            break
        await asyncio.sleep(0.01)
    assert concurrency.tracked == 1  # admitted, draining the body it does not need
    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(served, 5)
    assert concurrency.tracked == 0  # the slot came back with the disconnect
    assert (await client.get("/x", **peer("10.0.0.1"))).status_code == 200
    assert users.seen == [users.last]  # only the next request reached the upstream


async def test_a_redis_store_on_a_unix_socket_counts_and_holds_concurrency(
        upstream: UpstreamFactory, gateway_client: GatewayClientFactory) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # a socket path is short
    users = await upstream()
    try:
        async with running_redis(workdir, unix=True) as redis:
            gw = Gateway(limited(users, rate="2/minute", concurrency=4,
                                 store=redis.unix_url))
            client = await gateway_client(gw)
            assert isinstance(gw.current_runtime().concurrency, RedisConcurrency)
            statuses = [(await client.get("/x", **peer("10.0.0.1"))).status_code
                        for _ in range(3)]
            assert statuses == [200, 200, 429]
            assert len(users.seen) == 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_short_redis_lease_does_not_cut_a_longer_ones_ttl(tmp_path: Path) -> None:
    async with running_redis(tmp_path) as redis:
        concurrency = RedisConcurrency(redis.url, 4)
        try:
            long = await concurrency.acquire("ip:10.0.0.1", 100.0)
            short = await concurrency.acquire("ip:10.0.0.1", 1.0)
            assert isinstance(long, str)
            assert isinstance(short, str)
            reader = aioredis.Redis.from_url(redis.url)
            try:
                ttl = await reader.pttl("gw-concurrency:ip:10.0.0.1")
            finally:
                await reader.aclose()
            assert ttl > 60_000  # the 100 s lease's (plus slack), not the 1 s one's
        finally:
            await concurrency.close()
