"""/metrics: Prometheus text that prometheus-client's parser reads, with the series of SPEC 8."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from support import (
    GatewayClientFactory,
    HypercornFactory,
    UpstreamFactory,
    call,
    endpoint,
    make_config,
    reply,
)

from gateway.config import Config
from gateway.metrics import Metrics
from gateway.runtime import Runtime

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def scrape(client: Any) -> tuple[Samples, str]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = await response.get_data(as_text=True)
    return parse(text), text


async def test_metrics_hold_requests_upstream_calls_breakers_and_cache(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    good = await upstream(reply({"ok": True}))
    bad = await upstream(reply({"error": "x"}, status=503))
    client = await gateway_client(make_config(
        {"good": {"url": good, "cache_ttl": 30},
         "bad": {"url": bad, "breaker": {"failures": 1, "reset": 30}, "retries": 1}},
        endpoint("/ok/<int:n>", call("c", "good", "/x")),
        endpoint("/fail", call("c", "bad", "/x")),
    ))
    for n in (1, 2):
        assert (await client.get(f"/ok/{n}")).status_code == 200
    assert (await client.get("/fail")).status_code == 502
    assert (await client.get("/fail")).status_code == 503
    assert (await client.get("/nope")).status_code == 404
    samples, text = await scrape(client)

    ok = {"endpoint": "/ok/<int:n>", "method": "GET", "status": "200"}
    assert value(samples, "gateway_requests_total", **ok) == 2
    assert value(samples, "gateway_request_duration_seconds_count", **ok) == 2
    assert value(samples, "gateway_request_duration_seconds_bucket", le="+Inf", **ok) == 2
    assert value(samples, "gateway_requests_total", endpoint="/fail", method="GET",
                 status="503") == 1
    assert value(samples, "gateway_requests_total", endpoint="unmatched", method="GET",
                 status="404") == 1
    assert "/ok/1" not in text  # the route template, never the raw path

    assert value(samples, "gateway_upstream_calls_total", upstream="good", outcome="ok") == 1
    assert value(samples, "gateway_upstream_calls_total", upstream="good",
                 outcome="cached") == 1
    assert value(samples, "gateway_upstream_calls_total", upstream="bad",
                 outcome="error") == 1
    assert value(samples, "gateway_upstream_calls_total", upstream="bad",
                 outcome="circuit_open") == 1
    assert value(samples, "gateway_upstream_call_duration_seconds_count", upstream="good",
                 outcome="ok") == 1
    assert value(samples, "gateway_upstream_retries_total", upstream="bad") == 1
    assert value(samples, "gateway_breaker_state", upstream="bad") == 2
    assert value(samples, "gateway_breaker_state", upstream="good") == 0
    assert value(samples, "gateway_breaker_opened_total", upstream="bad") == 1
    assert value(samples, "gateway_cache_hits_total", upstream="good") == 1
    assert value(samples, "gateway_cache_misses_total", upstream="good") == 1
    assert ("gateway_config_reloads_total", frozenset({("result", "ok")})) in samples


async def test_series_exist_before_any_traffic(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    up = await upstream(reply({}))
    client = await gateway_client(make_config({"up": up}))
    samples, _ = await scrape(client)
    for outcome in ("ok", "cached", "client_error", "error", "timeout", "circuit_open"):
        assert value(samples, "gateway_upstream_calls_total", upstream="up",
                     outcome=outcome) == 0
    assert value(samples, "gateway_upstream_retries_refused_total", upstream="up") == 0


async def test_jobs_are_counted_by_state() -> None:
    metrics = Metrics()
    metrics.job("queued")
    metrics.job("queued")
    metrics.job("succeeded")
    samples = parse(metrics.exposition().decode())
    assert value(samples, "gateway_jobs_total", state="queued") == 2
    assert value(samples, "gateway_jobs_total", state="succeeded") == 1


def test_each_runtime_has_its_own_registry() -> None:
    one, two = Runtime(Config()), Runtime(Config())
    one.metrics.request("/a", "GET", 200, 0.01)
    samples = parse(two.metrics.exposition().decode())
    assert not any(name == "gateway_requests_total" for name, _ in samples)
    assert one.metrics.registry is not two.metrics.registry


async def test_several_workers_add_up_in_every_scrape(
    upstream: UpstreamFactory, hypercorn_server: HypercornFactory
) -> None:
    up = await upstream(reply({"ok": True}))
    command = [sys.executable, "-m", "gateway", "serve", "--config", "{config}",
               "--bind", "127.0.0.1:{port}", "--workers", "2"]
    server = await hypercorn_server(make_config({"up": up}, endpoint("/r", call("c", "up", "/"))),
                                    command=command)

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:  # new connection
            return await client.get(server.url + path)

    responses = await asyncio.gather(*(get("/r") for _ in range(12)))
    assert [r.status_code for r in responses] == [200] * 12
    labels = {"endpoint": "/r", "method": "GET", "status": "200"}
    for _ in range(4):  # whichever worker answers the scrape, it counts both workers' requests
        samples = parse((await get("/metrics")).text)
        assert value(samples, "gateway_requests_total", **labels) == 12
        assert not any(name.startswith("process_") for name, _ in samples)  # multiprocess
