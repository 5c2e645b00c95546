"""Network faults between the gateway and a real upstream, injected by `faultproxy`.

Each fault on a required call gives a well-formed 502/504 envelope within the call's
timeout; on an optional call it gives the call's default and `complete: false`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from faultproxy import Fault, FaultProxy
from support import (
    GatewayClientFactory,
    RecordingServer,
    UpstreamFactory,
    call,
    contention,
    endpoint,
    make_config,
    reply,
)

TIMEOUT = 0.5  # the faulty upstream's call timeout
SLACK = 0.75  # scheduling slack on a loaded 2-core machine running tests in parallel
BODY = {"blob": "x" * 64 * 1024}  # large enough that a fault can land mid-body

ProxyFactory = Callable[[RecordingServer], Awaitable[FaultProxy]]


@pytest.fixture
async def fault_proxy() -> AsyncIterator[ProxyFactory]:
    proxies: list[FaultProxy] = []

    async def start(server: RecordingServer) -> FaultProxy:
        proxy = FaultProxy(server.port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.close()


def _config(proxy: FaultProxy, good: RecordingServer, *, optional: bool = False,
            **upstream: Any) -> dict[str, Any]:
    flaky = call("flaky", "flaky", "/data")
    if optional:
        flaky |= {"optional": True, "default": {"fallback": True}}
    return make_config(
        {"flaky": {"url": proxy.url, "timeout": TIMEOUT, **upstream}, "good": good},
        endpoint("/agg", flaky, call("good", "good", "/ok")),
        deadline=5.0,
    )


FAULTS = [
    pytest.param(Fault(latency=3.0), 504, id="latency"),
    pytest.param(Fault(bandwidth=4096), 504, id="bandwidth-cap"),
    pytest.param(Fault(drip=0.05), 504, id="drip-feed"),
    pytest.param(Fault(reset_after=20_000), 502, id="reset-mid-body"),
    pytest.param(Fault(blackhole=True), 504, id="blackhole"),
    pytest.param(Fault(close_after_headers=True), 502, id="close-after-headers"),
    pytest.param(Fault(garbage=b"\x16\x03\x01\x02\x00garbage\r\n\r\n"), 502, id="garbage"),
    pytest.param(Fault(garbage=b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n{}"), 502,
                 id="garbage-head"),
]


def assert_envelope(body: dict[str, Any], status: int) -> None:
    assert body["data"] is None
    assert isinstance(body["error"], str)
    assert "\n" not in body["error"]
    meta = body["meta"]
    assert meta["complete"] is False
    flaky = meta["calls"]["flaky"]
    assert flaky["ok"] is False
    assert "error" in flaky
    if status == 504:
        assert "timed out" in body["error"]


@pytest.mark.parametrize(("fault", "status"), FAULTS)
async def test_fault_on_a_required_call_is_a_clean_502_or_504_within_the_timeout(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    fault_proxy: ProxyFactory, fault: Fault, status: int
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    proxy.fault = fault
    client = await gateway_client(_config(proxy, good))
    started = time.monotonic()
    response = await client.get("/agg")
    elapsed = time.monotonic() - started
    body = await response.get_json()
    assert response.status_code == status, body
    assert_envelope(body, status)
    assert elapsed < TIMEOUT + SLACK
    assert proxy.connections >= 1  # the fault, not something else, failed the call


@pytest.mark.parametrize(("fault", "status"), FAULTS)
async def test_fault_on_an_optional_call_degrades_to_its_default(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    fault_proxy: ProxyFactory, fault: Fault, status: int
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    proxy.fault = fault
    client = await gateway_client(_config(proxy, good, optional=True))
    started = time.monotonic()
    response = await client.get("/agg")
    elapsed = time.monotonic() - started
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["data"] == {"flaky": {"fallback": True}, "good": {"ok": True}}
    assert body["meta"]["complete"] is False
    assert body["meta"]["calls"]["flaky"]["ok"] is False
    assert body["meta"]["calls"]["good"]["ok"] is True
    assert elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize("fault", [Fault(latency=0.1), Fault(bandwidth=1024 * 1024)],
                         ids=["small-latency", "wide-bandwidth"])
async def test_faults_within_the_timeout_are_absorbed(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    fault_proxy: ProxyFactory, fault: Fault
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    proxy.fault = fault
    client = await gateway_client(_config(proxy, good))
    response = await client.get("/agg")
    assert response.status_code == 200
    assert (await response.get_json())["data"]["flaky"] == BODY


async def test_connection_refused_is_502_at_once(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    fault_proxy: ProxyFactory
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    await proxy.close()  # nothing listens on its port any more
    client = await gateway_client(_config(proxy, good))
    started, contended = time.monotonic(), contention()
    response = await client.get("/agg")
    assert response.status_code == 502
    assert_envelope(await response.get_json(), 502)
    assert time.monotonic() - started - (contention() - contended) < TIMEOUT  # less the load


async def test_reply_nested_too_deep_for_the_envelope_is_502(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    flaky = await upstream(reply(raw_body=b"[" * 300 + b"]" * 300))  # orjson parses 1024
    good = await upstream(reply({"ok": True}))
    client = await gateway_client(make_config(
        {"flaky": flaky, "good": good},
        endpoint("/agg", call("flaky", "flaky", "/data"), call("good", "good", "/ok"))))
    response = await client.get("/agg")
    body = await response.get_json()
    assert response.status_code == 502, body
    assert "nested deeper than" in body["error"]
    assert_envelope(body, 502)


# reset_after=1000: past the reply's head (aiohttp's, with Date and Server, is ~150 bytes), so
# the reset lands mid-body, where a call fails without a retry.
@pytest.mark.parametrize("fault", [Fault(blackhole=True), Fault(garbage=b"\x00\xff" * 8),
                                   Fault(reset_after=1000)],
                         ids=["blackhole", "garbage", "reset"])
async def test_breaker_sheds_a_storm_without_reaching_the_proxy(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory,
    fault_proxy: ProxyFactory, fault: Fault
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    proxy.fault = fault
    client = await gateway_client(_config(proxy, good, breaker={"failures": 3, "reset": 30}))
    for _ in range(3):  # the storm's first calls reach the fault and open the breaker
        response = await client.get("/agg")
        assert response.status_code in (502, 504)
    reached = (proxy.connections, proxy.bytes_in)
    started, contended = time.monotonic(), contention()
    shed = await asyncio.gather(*(client.get("/agg") for _ in range(50)))
    # Less the time this loop's thread waited for a CPU (the machine's load, not ours).
    elapsed = time.monotonic() - started - (contention() - contended)
    for response in shed:
        body = await response.get_json()
        assert response.status_code == 503, body
        assert int(response.headers["Retry-After"]) >= 1
        assert body["data"] is None
        assert body["meta"]["calls"]["flaky"]["attempts"] == 0
        assert "\n" not in body["error"]
    assert elapsed < TIMEOUT  # 50 requests failed fast, none waited for the fault
    assert (proxy.connections, proxy.bytes_in) == reached  # and none reached the proxy
    assert real.requests <= 3


async def test_garbage_reply_is_reported_as_malformed_not_unreachable(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory, fault_proxy: ProxyFactory
) -> None:
    real = await upstream(reply(BODY))
    good = await upstream(reply({"ok": True}))
    proxy = await fault_proxy(real)
    proxy.fault = Fault(garbage=b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    client = await gateway_client(_config(proxy, good))
    response = await client.get("/agg")
    body = await response.get_json()
    assert response.status_code == 502
    assert "malformed reply" in body["error"]
    assert "unreachable" not in body["error"]
