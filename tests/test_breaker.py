"""The circuit breaker: closed -> open -> half-open -> closed, and what callers see meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import GatewayClientFactory, UpstreamFactory, call, endpoint, make_config

from gateway import Gateway
from gateway._httpserver import Request, Response, json_response
from gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, counts_as_failure
from gateway.config import Breaker
from gateway.envelope import failure_status
from gateway.errors import CircuitOpen, UpstreamStatus, UpstreamTimeout
from gateway.fan import Fan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, reset: float = 10.0) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock, changes = Clock(), list[str]()
    cb = CircuitBreaker("up", Breaker(failures, reset), clock=clock, on_change=changes.append)
    return cb, clock, changes


class Switch:
    """An upstream handler that fails with 503 until `healthy` is set."""

    def __init__(self) -> None:
        self.healthy = False

    async def __call__(self, request: Request) -> Response:
        if self.healthy:
            return json_response({"ok": True})
        return json_response({"error": "down"}, 503)


# -- the state machine (pure, with a fake clock) ----------------------------------------------


def test_consecutive_failures_open_it_and_a_success_resets_the_count() -> None:
    cb, _, changes = breaker(failures=3)
    for _ in range(2):
        cb.failure(cb.admit())
    cb.success(cb.admit())
    for _ in range(2):
        cb.failure(cb.admit())
    assert cb.state == CLOSED
    cb.failure(cb.admit())
    assert cb.state == OPEN
    assert changes == [OPEN]


def test_open_fails_fast_with_the_seconds_until_half_open() -> None:
    cb, clock, _ = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 4.0
    with pytest.raises(CircuitOpen) as caught:
        cb.admit()
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.attempts == 0
    assert cb.retry_after() == pytest.approx(6.0)


def test_half_open_admits_one_trial_whose_success_closes_it() -> None:
    cb, clock, changes = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 10.0
    assert cb.state == HALF_OPEN
    trial = cb.admit()
    assert trial is True
    with pytest.raises(CircuitOpen) as caught:
        cb.admit()  # only one trial at a time
    assert failure_status(caught.value) == (503, {"Retry-After": "1"})
    cb.success(trial)
    assert cb.state == CLOSED
    assert cb.admit() is False
    assert changes == [OPEN, HALF_OPEN, CLOSED]


def test_a_failed_trial_opens_it_again_for_another_reset() -> None:
    cb, clock, changes = breaker(failures=1, reset=10.0)
    cb.failure(cb.admit())
    clock.now += 10.0
    cb.failure(cb.admit())
    assert cb.state == OPEN
    assert cb.retry_after() == pytest.approx(10.0)
    assert changes == [OPEN, HALF_OPEN, OPEN]


def test_a_canceled_trial_frees_the_slot_without_a_verdict() -> None:
    cb, clock, _ = breaker(failures=1, reset=1.0)
    cb.failure(cb.admit())
    clock.now += 1.0
    cb.cancel(cb.admit())
    assert cb.state == HALF_OPEN
    assert cb.admit() is True


def test_upstream_4xx_is_not_a_failure() -> None:
    assert not counts_as_failure(UpstreamStatus("x", 404))
    assert counts_as_failure(UpstreamStatus("x", 500))
    assert counts_as_failure(UpstreamTimeout("x"))


# -- end to end -------------------------------------------------------------------------------


def config(server: Any, *, optional: bool = False, reset: float = 0.3) -> dict[str, Any]:
    flaky_call = call("c", "flaky", "/x", optional=optional, **({"default": {"d": 1}}
                                                                  if optional else {}))
    return make_config({"flaky": {"url": server, "breaker": {"failures": 2, "reset": reset}}},
                       endpoint("/r", flaky_call))


async def test_closed_open_half_open_closed_through_the_gateway(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    switch = Switch()
    server = await upstream(switch)
    client = await gateway_client(config(server))
    for _ in range(2):
        assert (await client.get("/r")).status_code == 502
    assert server.requests == 2

    response = await client.get("/r")  # open: fails fast, the upstream is not touched
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 1
    body = await response.get_json()
    assert "circuit breaker" in body["error"]
    assert body["meta"]["calls"]["c"]["attempts"] == 0
    assert server.requests == 2

    await asyncio.sleep(0.35)  # half-open: the next call is the trial
    switch.healthy = True
    assert (await client.get("/r")).status_code == 200
    assert server.requests == 3
    assert (await client.get("/r")).status_code == 200  # closed again
    assert server.requests == 4


async def test_a_failed_trial_reopens_it(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    client = await gateway_client(config(server, reset=0.2))
    for _ in range(2):
        await client.get("/r")
    await asyncio.sleep(0.25)
    assert (await client.get("/r")).status_code == 502  # the trial, failed
    assert server.requests == 3
    assert (await client.get("/r")).status_code == 503  # open again
    assert server.requests == 3


async def test_optional_call_gets_its_default_without_touching_an_open_upstream(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    client = await gateway_client(config(server, optional=True, reset=30.0))
    for _ in range(2):
        assert (await client.get("/r")).status_code == 200
    response = await client.get("/r")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["data"] == {"c": {"d": 1}}
    assert body["meta"]["complete"] is False
    record = body["meta"]["calls"]["c"]
    assert (record["ok"], record["attempts"]) == (False, 0)
    assert "circuit breaker" in record["error"]
    assert server.requests == 2


async def test_code_views_share_the_breaker(
    upstream: UpstreamFactory, gateway_client: GatewayClientFactory
) -> None:
    server = await upstream(Switch())
    gw = Gateway(make_config(
        {"flaky": {"url": server, "breaker": {"failures": 1, "reset": 30.0}}}))

    @gw.aggregate("/view")
    async def view(fan: Fan) -> Any:
        return await fan.get("flaky", "/x")

    client = await gateway_client(gw)
    assert (await client.get("/view")).status_code == 502
    response = await client.get("/view")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 29
    assert server.requests == 1
