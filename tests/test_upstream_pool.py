"""max_connections: the pool size is also a concurrency cap, and waiting for it shows."""

from __future__ import annotations

import asyncio

from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config
from webserver import Request, Response, json_response


async def test_calls_beyond_max_connections_wait_and_report_queued_ms(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    in_flight = peak = 0

    async def slow(request: Request) -> Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.1)
        in_flight -= 1
        return json_response({})

    server = await upstream(slow)
    client = await gateway_client(make_config(
        {"up": {"url": server, "max_connections": 2}},
        endpoint("/r", call("c", "up", "/")),
    ))
    responses = await asyncio.gather(*(client.get("/r") for _ in range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    assert peak == 2
    queued = [(await r.get_json())["meta"]["calls"]["c"].get("queued_ms") for r in responses]
    waited = sorted(q for q in queued if q is not None)
    assert len(waited) >= 4  # two went at once, the others queued
    assert waited[-1] >= 150  # the last pair waited for two rounds of ~100 ms
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'gateway_upstream_queue_wait_seconds_count{upstream="up"} 4.0' in metrics


async def test_the_wait_counts_against_the_call_timeout(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.3)
        return json_response({})

    server = await upstream(slow)
    client = await gateway_client(make_config(
        {"up": {"url": server, "max_connections": 1, "timeout": 0.4}},
        endpoint("/r", call("c", "up", "/")),
    ))
    first, second = await asyncio.gather(client.get("/r"), client.get("/r"))
    assert sorted([first.status_code, second.status_code]) == [200, 504]
