"""The GET reply cache (TTL, LRU bound) and the singleflight in front of an upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config, reply
from webserver import Request, Response, json_response

from gateway import Gateway
from gateway.cache import ReplyCache, SingleFlight, vary_key
from gateway.errors import UpstreamStatus
from gateway.fan import Fan

# -- ReplyCache (pure) ------------------------------------------------------------------------


def test_entries_expire_after_the_ttl() -> None:
    cache = ReplyCache(ttl=5.0)
    cache.put("k", 200, b"{}", now=100.0)
    hit = cache.get("k", now=104.9)
    assert hit is not None
    assert (hit.status, hit.raw) == (200, b"{}")
    assert cache.get("k", now=105.0) is None
    assert len(cache) == 0
    assert cache.size_bytes == 0


def test_least_recently_used_entry_goes_first_when_full() -> None:
    cache = ReplyCache(ttl=60.0, max_entries=2)
    cache.put("a", 200, b"1", now=0.0)
    cache.put("b", 200, b"2", now=0.0)
    assert cache.get("a", now=1.0) is not None  # "a" is now the most recent
    cache.put("c", 200, b"3", now=1.0)
    assert cache.get("b", now=1.0) is None
    assert cache.get("a", now=1.0) is not None
    assert cache.get("c", now=1.0) is not None


def test_total_bytes_are_bounded_too() -> None:
    cache = ReplyCache(ttl=60.0, max_entries=100, max_bytes=400)
    for i in range(10):
        cache.put(i, 200, b"x" * 90, now=0.0)
    assert cache.size_bytes <= 400
    assert len(cache) == 4
    assert cache.get(9, now=0.0) is not None
    cache.put("huge", 200, b"x" * 101, now=0.0)  # over a quarter of the bound: not kept
    assert cache.get("huge", now=0.0) is None


def test_request_id_and_trace_headers_do_not_vary_the_key() -> None:
    a = [("accept", "application/json"), ("authorization", "A"), ("x-request-id", "1"),
         ("traceparent", "t1")]
    b = [("accept", "application/json"), ("authorization", "A"), ("x-request-id", "2")]
    c = [("accept", "application/json"), ("authorization", "B"), ("x-request-id", "1")]
    assert vary_key(a) == vary_key(b)
    assert vary_key(a) != vary_key(c)


# -- SingleFlight (pure asyncio) --------------------------------------------------------------


async def test_concurrent_identical_calls_share_one_lead() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def lead() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return 42

    results = await asyncio.gather(*(flights.run("k", lead) for _ in range(10)))
    assert calls == 1
    assert [r for r, _ in results] == [42] * 10
    assert sum(shared for _, shared in results) == 9
    assert len(flights) == 0


async def test_a_failure_reaches_every_waiter() -> None:
    flights: SingleFlight[int] = SingleFlight()

    async def lead() -> int:
        await asyncio.sleep(0.01)
        raise UpstreamStatus("down", 503)

    results = await asyncio.gather(*(flights.run("k", lead) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, UpstreamStatus) for r in results)


async def test_a_canceled_leader_hands_over_to_a_waiter() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def lead() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    leader = asyncio.create_task(flights.run("k", lead))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(flights.run("k", lead))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await waiter == (2, False)  # led a new call, was not canceled itself
    with pytest.raises(asyncio.CancelledError):
        await leader


# -- end to end -------------------------------------------------------------------------------


def cached(server: Any, ttl: float = 0.3, **extra: Any) -> dict[str, Any]:
    return make_config({"up": {"url": server, "cache_ttl": ttl, **extra}},
                       endpoint("/r/<key>", call("c", "up", "/items/{key}")))


def counting(delay: float = 0.0) -> Any:
    hits = 0

    async def handle(request: Request) -> Response:
        nonlocal hits
        hits += 1
        if delay:
            await asyncio.sleep(delay)
        return json_response({"path": request.path, "hit": hits})

    return handle


async def test_cache_hit_then_expiry(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(counting())
    client = await gateway_client(cached(server, ttl=0.3))
    first = await (await client.get("/r/a")).get_json()
    second = await (await client.get("/r/a")).get_json()
    assert first["meta"]["calls"]["c"]["cached"] is False
    assert second["meta"]["calls"]["c"]["cached"] is True
    assert second["meta"]["calls"]["c"]["attempts"] == 0
    assert second["data"] == first["data"]
    assert server.requests == 1
    await client.get("/r/b")  # another URL is another entry
    assert server.requests == 2
    await asyncio.sleep(0.35)
    third = await (await client.get("/r/a")).get_json()
    assert third["meta"]["calls"]["c"]["cached"] is False
    assert third["data"]["c"]["hit"] == 3
    assert server.requests == 3


async def test_forwarded_headers_are_part_of_the_key(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(counting())
    client = await gateway_client(cached(server, ttl=30, forward_headers=["authorization"]))
    await client.get("/r/a", headers={"authorization": "Bearer alice"})
    await client.get("/r/a", headers={"authorization": "Bearer bob"})
    await client.get("/r/a", headers={"authorization": "Bearer alice", "x-request-id": "z1"})
    assert server.requests == 2


async def test_ten_identical_concurrent_gets_reach_the_upstream_once(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(counting(delay=0.1))
    client = await gateway_client(cached(server, ttl=30))
    responses = await asyncio.gather(*(client.get("/r/same") for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    bodies = [await r.get_json() for r in responses]
    assert server.requests == 1
    assert {b["data"]["c"]["hit"] for b in bodies} == {1}
    assert sum(b["meta"]["calls"]["c"]["cached"] for b in bodies) == 9


async def test_failures_are_not_cached(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply({"error": "down"}, status=503))
    client = await gateway_client(cached(server, ttl=30))
    assert (await client.get("/r/a")).status_code == 502
    assert (await client.get("/r/a")).status_code == 502
    assert server.requests == 2


async def test_only_get_is_cached(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(counting())
    client = await gateway_client(make_config(
        {"up": {"url": server, "cache_ttl": 30}},
        endpoint("/w", call("c", "up", "/items", method="POST"), method="POST")))
    await client.post("/w")
    await client.post("/w")
    assert server.requests == 2


async def test_a_view_mutating_its_data_cannot_change_the_cached_reply(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(reply({"items": [1, 2]}))
    gw = Gateway(make_config({"up": {"url": server, "cache_ttl": 30}}))

    @gw.aggregate("/v")
    async def view(fan: Fan) -> Any:
        data = await fan.get("up", "/items")
        data["items"].append("mutated")
        return data

    client = await gateway_client(gw)
    for _ in range(3):
        body = await (await client.get("/v")).get_json()
        assert body["data"] == {"items": [1, 2, "mutated"]}
    assert server.requests == 1
